"""Real servers for end-to-end tests, all on 127.0.0.1: an `mlflow server` with a SQLite
backend, moto's S3-compatible server, and a Ray head started with `ray start --head --block` (so stopping it stops only the
processes it started, never another Ray instance on the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float, proc: subprocess.Popen, log: Path, headers: dict | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode}); log:\n{log.read_text()[-3000:]}")
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s; log:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, served artifacts) on 127.0.0.1; yields its URI."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "mlflow-server.log"
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 120, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def ray_env() -> dict[str, str]:
    """Environment for `ray start` / `ray job submit`: the project venv first on PATH (jobs
    run `python ...`), token authentication (Ray 2.60's dashboard requires it)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def s3_server(root: Path) -> Iterator[dict[str, str]]:
    """moto's standalone S3-compatible server on 127.0.0.1 (the way s3fs tests against S3);
    yields the environment that points pyarrow, boto3 and Ray's processes at it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "moto-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/moto-api/", 60, proc, log)
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        stop(proc, timeout=10)


@contextlib.contextmanager
def ray_head(root: Path, num_cpus: int = 2, env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """`ray start --head --block` on 127.0.0.1; yields {"gcs": host:port, "dashboard": url}.
    `env` is added to the environment of the head and every Ray process it starts."""
    root.mkdir(parents=True, exist_ok=True)
    env = {**ray_env(), **(env or {})}
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True)
    gcs, dash = free_port(), free_port()
    log = root / "ray-head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--num-cpus", str(num_cpus), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--disable-usage-stats",
           "--ray-client-server-port", str(free_port()), "--min-worker-port", "21000",
           "--max-worker-port", "21999"]
    # Every port the head's processes listen on is chosen free, so the head starts even
    # beside another Ray instance on this machine (the defaults would collide).
    for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
                 "--runtime-env-agent-port", "--node-manager-port", "--object-manager-port"):
        cmd += [flag, str(free_port())]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        wait_for(f"http://127.0.0.1:{dash}/api/version", 180, proc, log,
                 headers={"Authorization": f"Bearer {token}"})
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "log": str(log)}
    finally:
        stop(proc, timeout=10)  # a head that ran jobs can take ~40 s to stop gracefully; its group is killed after 10
        forget_ray_head(gcs)


def forget_ray_head(gcs_port: int, temp_dir: Path = Path("/tmp/ray")) -> None:
    """Remove Ray's record of the last `ray start` (temp_dir/ray_current_cluster) when it names
    this head. A head killed before it could remove the record leaves it behind, and every later
    `ray.init()` without an address on this machine would try to join the dead head and hang."""
    record = temp_dir / "ray_current_cluster"
    with contextlib.suppress(FileNotFoundError):
        if record.read_text().strip().endswith(f":{gcs_port}"):
            record.unlink()
