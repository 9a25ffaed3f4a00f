"""Thread pools of the numerical engines: one thread each while an engine runs.

    with single_threaded():
        energy, forces = engine.forces(positions)     # tblite, RDKit, BLAS: one core

tblite (GFN2-xTB) parallelises with OpenMP. Next to torch's own threads, on a small busy
machine, that pool spins instead of working: a GFN2-xTB Hessian of paracetamol (20 atoms) took
52 s with the default two threads and 0.7 s with one, a BFGS refinement 14 s against 0.4 s
(2026-12-05, 2 cores). Every tblite call in atomray runs inside `single_threaded`; parallelism
comes from processes (Ray tasks, evaluation workers) instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for the engines' OpenMP / BLAS pools while inside, so one process uses
    one core (N workers then give ~N×). Uses threadpoolctl (pools that are already loaded)
    and the environment variables (pools loaded later); restores both on exit."""
    old = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
