"""Every Ray process the files in cluster/ start runs with Ray's token authentication, and no
dashboard listens beyond loopback without it (issue 14). The files are parsed, never run.

A process has token authentication when it runs with RAY_AUTH_MODE=token and its token comes
from a secret kept out of the repository: for the cluster launcher, the `~/.ray/auth_token` that
`file_mounts` copies from the user's machine to every node; for KubeRay, a Kubernetes Secret
(the one `spec.authOptions.mode: token` makes the operator create and inject, or an explicit
`secretKeyRef`). A token written into a file here counts as no authentication."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RAY_DEFAULT_DASHBOARD_HOST = "127.0.0.1"  # `ray start --dashboard-host` default
KUBERAY_DEFAULT_DASHBOARD_HOST = "0.0.0.0"  # the operator sets it when rayStartParams omit it
KUBERAY_CLUSTER_SPEC = {"RayCluster": (), "RayJob": ("rayClusterSpec",), "RayService": ("rayClusterConfig",)}


@dataclass(frozen=True)
class RayProcess:
    """One `ray start` a cluster file asks for: where it runs, whether it has token
    authentication, and the host its dashboard binds (None: it runs no dashboard)."""

    where: str
    token_auth: bool
    dashboard_host: str | None = None


def _env_before(argv: list[str], i: int) -> dict[str, str]:
    """The NAME=VALUE assignments written just before argv[i] (`A=1 B=2 ray start ...`)."""
    env = {}
    while i > 0 and "=" in argv[i - 1] and not argv[i - 1].startswith("-"):
        i -= 1
        name, value = argv[i].split("=", 1)
        env[name] = value
    return env


def _flag(argv: list[str], name: str, default: str) -> str:
    for j, word in enumerate(argv):
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
        if word == name and j + 1 < len(argv):
            return argv[j + 1]
    return default


def _mounted_from_outside_repo(doc: dict, remote: str) -> bool:
    """True when file_mounts copy `remote` onto every node from a path outside the repository
    (a relative source is read from where `ray up` runs: the repository itself)."""
    home = f"/home/{doc['auth']['ssh_user']}"

    def on_node(path: str) -> str:
        return home + path[1:] if path.startswith("~") else path

    source = {on_node(k): v for k, v in doc.get("file_mounts", {}).items()}.get(on_node(remote))
    if source is None:
        return False
    local = Path(source).expanduser()
    return local.is_absolute() and not local.resolve().is_relative_to(ROOT)


def _launcher_processes(doc: dict) -> list[RayProcess]:
    processes = []
    for key, where in (("head_start_ray_commands", "head"), ("worker_start_ray_commands", "worker")):
        for command in doc.get(key, []):
            argv = shlex.split(command)
            for i in range(len(argv) - 1):
                if argv[i:i + 2] != ["ray", "start"]:
                    continue
                env = _env_before(argv, i)
                token_path = env.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
                token_from_secret = "RAY_AUTH_TOKEN" not in env and _mounted_from_outside_repo(doc, token_path)
                host = _flag(argv, "--dashboard-host", RAY_DEFAULT_DASHBOARD_HOST) if "--head" in argv else None
                processes.append(RayProcess(f"{where}: {command}",
                                            env.get("RAY_AUTH_MODE") == "token" and token_from_secret, host))
    return processes


def _kuberay_processes(doc: dict, path: Path) -> list[RayProcess]:
    kind = doc.get("kind")
    if kind not in KUBERAY_CLUSTER_SPEC:
        raise ValueError(f"{path.name}: unknown KubeRay kind {kind!r}; expected one of {sorted(KUBERAY_CLUSTER_SPEC)}")
    spec = doc["spec"]
    for key in KUBERAY_CLUSTER_SPEC[kind]:
        spec = spec[key]
    operator_mode = (spec.get("authOptions") or {}).get("mode")
    groups = [("head", spec["headGroupSpec"])]
    groups += [(f"worker group {g['groupName']}", g) for g in spec.get("workerGroupSpecs", [])]
    processes = []
    for where, group in groups:
        # KubeRay injects RAY_AUTH_MODE / RAY_AUTH_TOKEN (from its Secret) into the Ray
        # container, the first one, but never over a variable the container already sets.
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0].get("env", [])}
        mode = env["RAY_AUTH_MODE"].get("value") if "RAY_AUTH_MODE" in env else operator_mode
        if "RAY_AUTH_TOKEN" in env:
            token_from_secret = "secretKeyRef" in (env["RAY_AUTH_TOKEN"].get("valueFrom") or {})
        else:
            token_from_secret = operator_mode == "token" and "RAY_AUTH_TOKEN_PATH" not in env
        host = None
        if where == "head":
            host = str(group.get("rayStartParams", {}).get("dashboard-host", KUBERAY_DEFAULT_DASHBOARD_HOST))
        processes.append(RayProcess(where, mode == "token" and token_from_secret, host))
    return processes


def ray_processes(path: Path) -> list[RayProcess]:
    """The Ray processes a cluster file starts: a launcher config's `ray start` commands, a
    KubeRay manifest's head and worker groups (every document of a multi-document file)."""
    processes = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        if "cluster_name" in doc:
            processes += _launcher_processes(doc)
        elif str(doc.get("apiVersion", "")).startswith("ray.io/"):
            processes += _kuberay_processes(doc, path)
    return processes


CLUSTER_FILES = [p for p in sorted(CLUSTER.glob("*.yaml")) if ray_processes(p)]


def test_every_cluster_file_is_checked():
    assert {p.name for p in CLUSTER_FILES} >= {"aws-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}
    for path in CLUSTER_FILES:
        where = [p.where.split(":")[0] for p in ray_processes(path)]
        assert "head" in where and any(w != "head" for w in where), f"{path.name}: found only {where}"


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=[p.name for p in CLUSTER_FILES])
def test_every_ray_process_runs_with_token_auth(path):
    without = [p.where for p in ray_processes(path) if not p.token_auth]
    assert not without, (f"{path.name}: Ray starts without token authentication (RAY_AUTH_MODE=token and "
                         f"a token from a secret outside the repository) on: {without}")


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=[p.name for p in CLUSTER_FILES])
def test_no_dashboard_beyond_loopback_without_token_auth(path):
    exposed = [f"{p.where} (dashboard on {p.dashboard_host})" for p in ray_processes(path)
               if p.dashboard_host is not None and p.dashboard_host not in LOOPBACK and not p.token_auth]
    assert not exposed, f"{path.name}: anyone who reaches the dashboard can run code: {exposed}"
