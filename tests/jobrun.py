"""Run a job script's `main(argv)` inside the test process: its exit status and what it
printed. For refusals that fail before any work starts, this spares the ~5 s start of a
fresh interpreter (torch, MLflow imports); end-to-end runs still start real processes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def job_module(script: str):
    """jobs/<script> imported as a module."""
    spec = importlib.util.spec_from_file_location(f"job_{Path(script).stem}", ROOT / "jobs" / script)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def job_main(capsys, script: str, *args, expect: int = 0):
    """Exit status of jobs/<script>'s main(args) must be `expect`; returns capsys' (out, err)."""
    job = job_module(script)
    capsys.readouterr()
    try:
        status = job.main([str(a) for a in args])
    except SystemExit as exit:  # argparse's parser.error exits with status 2
        status = exit.code
    out = capsys.readouterr()
    assert status == expect, out.out[-4000:] + "\n--- stderr ---\n" + out.err[-4000:]
    return out
