"""Fault injection for the recovery tests: a test-only hook, outside the user's config.

    ATOMRAY_FAULTS="fail_at_epoch=1,fail_after_report=2" python jobs/pretrain.py ...

`fail_at_epoch=E`: the last worker exits hard halfway through epoch E, once per run, after Ray
Train has committed epoch E − 1 (so whether the restart resumes does not depend on how soon the
controller polled the workers). `fail_after_report=E`: the last worker waits until Ray Train has
committed epoch E − 1, reports epoch E and exits hard right after, before Ray Train commits it
(rank 0 has uploaded its checkpoint by then: the directory a dead attempt leaves behind). Without
the wait, epochs shorter than the controller's poll interval let E − 1's report reach the
controller in the same poll as the death, and the restart resumed from E − 2. The driver reads the
variable once and hands the settings to the workers with the run's other settings
(`read_faults`); without it nothing here runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from atomray import storage

ENV = "ATOMRAY_FAULTS"
KINDS = ("fail_at_epoch", "fail_after_report")


def read_faults(text: str | None = None) -> dict[str, int]:
    """The faults `ATOMRAY_FAULTS` (or `text`) asks for: {kind: epoch}; a malformed value is an
    error naming it."""
    text = os.environ.get(ENV, "") if text is None else text
    out: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, value = item.partition("=")
        if kind not in KINDS or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"{ENV}: expected comma-separated kind=epoch with kind in {', '.join(KINDS)}, "
                             f"found {item!r}")
        out[kind] = int(value)
    return out


def inject_fault_once(config: dict, kind: str, epoch: int, rank: int) -> None:
    """Exit this process hard, once per run and kind (a marker beside the run remembers it)."""
    marker = storage.join(config["run_dir"], f".fault_{kind}")
    if storage.exists(marker):
        return
    storage.write_text(marker, f"{kind} epoch {epoch} rank {rank}\n")
    os._exit(1)


COMMIT_MARKER = ".committed_epoch"  # written by the controller while a fault is configured


def commit_marker_needed(faults: dict[str, int]) -> bool:
    """Whether a configured fault waits for a commit (one after epoch 0's)."""
    return any(faults.get(kind, -1) > 0 for kind in KINDS)


def maybe_inject_fault(config: dict, epoch: int, step: int, steps: int, rank: int, world: int) -> None:
    """`fail_at_epoch`: the last rank exits hard halfway through that epoch, once per run, and
    only once Ray Train has committed the epoch before it (the controller reports commits in
    run_dir/.committed_epoch while a fault is configured)."""
    if config.get("faults", {}).get("fail_at_epoch", -1) != epoch or rank != world - 1 or step != steps // 2:
        return
    if epoch > 0:
        wait_for_commit(config["run_dir"], epoch - 1)
    inject_fault_once(config, "mid_epoch", epoch, rank)


def wait_for_commit(run_dir: str, epoch: int, timeout_s: float = 300.0) -> None:
    """Block until the controller has recorded `epoch` as committed in run_dir."""
    marker = storage.join(run_dir, COMMIT_MARKER)
    deadline = time.monotonic() + timeout_s
    while not (storage.exists(marker) and int(storage.read_text(marker) or -1) >= epoch):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker}: epoch {epoch} was not committed within {timeout_s:.0f} s")
        time.sleep(0.2)


@contextmanager
def exit_after_report(config: dict, epoch: int, rank: int, world: int) -> Iterator[None]:
    """Around the report of `epoch`: with `fail_after_report` at that epoch, the last rank first
    waits until Ray Train has committed the epoch before it, then reports and exits hard right
    after, before Ray Train can commit this one; once per run."""
    armed = config.get("faults", {}).get("fail_after_report", -1) == epoch and rank == world - 1 and world > 1
    if armed and epoch > 0:
        wait_for_commit(config["run_dir"], epoch - 1)
    yield
    if armed:
        inject_fault_once(config, "after_report", epoch, rank)
