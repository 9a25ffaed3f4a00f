"""Everything in `atomray.tg80` that talks to Ray: `run_ray` runs `simulate_molecule` (from
`atomray.tg80.simulate`) as one task per molecule, and `select_library_ray` is the Ray Data
scan of a large compound library. `atomray.tg80.build` chooses these or the in-process
versions. Ray is imported inside the functions, so importing this module starts nothing;
call `ray.init()` (or run under `ray job submit`) first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from atomray.tg80.library import csv_columns, hashed_id, library_files, library_kind, parse_smi_line
from atomray.tg80.plan import BuildConfig, BuildError, MoleculeSpec
from atomray.tg80.seeds import Seed
from atomray.tg80.selection import CRITERIA, Candidate, ScreenResult, SelectionConfig, SelectionResult, diversify, screen
from atomray.threads import SINGLE_THREAD_ENV, single_threaded
from atomray.tg80.simulate import Progress, simulate_molecule, simulated_fs_on_disk


def _simulate_task(spec: MoleculeSpec, out: str, cfg: BuildConfig) -> dict:
    with single_threaded():
        return simulate_molecule(spec, out, cfg)


def run_ray(
    specs: Sequence[MoleculeSpec],
    out: Path,
    cfg: BuildConfig,
    progress: Callable[[Progress], None],
    poll_s: float = 10.0,
    already_done: int = 0,
    total: int | None = None,
) -> list[dict]:
    """Run `simulate_molecule` as one Ray task per molecule (num_cpus=1, one thread each).

    A task whose worker process dies is retried (up to 3 times); the retry resumes from the
    molecule's last checkpoint, so it repeats at most one segment.
    Every `poll_s` seconds and whenever a molecule finishes, `progress` gets molecules done,
    fs on disk and this run's fs/s. A failed molecule does not stop the others; after all
    have ended, BuildError lists the failures (finished segments stay on disk for a rerun).
    """
    import ray

    if not ray.is_initialized():
        raise BuildError("executor 'ray' needs a Ray runtime: call ray.init() first (jobs/build_tg80.py does)")
    total = total if total is not None else len(specs)
    task = ray.remote(num_cpus=1, max_retries=3)(_simulate_task).options(
        runtime_env={"env_vars": dict(SINGLE_THREAD_ENV)}
    )
    pending = {task.remote(spec, str(out), cfg): spec for spec in specs}
    t0, start_fs = time.perf_counter(), simulated_fs_on_disk(out, specs, cfg)
    results, failures, done = [], [], already_done
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
        for ref in ready:
            spec = pending.pop(ref)
            try:
                results.append(ray.get(ref))
                done += 1
            except Exception as err:  # noqa: BLE001 - report every failed molecule at the end
                failures.append(f"{spec.molecule_id}: {err}")
        elapsed = time.perf_counter() - t0
        on_disk = simulated_fs_on_disk(out, specs, cfg)
        progress(Progress(done, total, on_disk + (total - len(specs)) * cfg.md.production_fs,
                          total * cfg.md.production_fs, (on_disk - start_fs) / max(elapsed, 1e-9), elapsed))
    if failures:
        raise BuildError(f"{len(failures)} molecule(s) failed; rerun the same command to resume:\n" + "\n".join(failures))
    return results


# ---------------------------------------------------------------------------------------------
# library selection at 10^8 compounds: criteria 1–7 as Ray Data tasks, criterion 8 here


def _screen_rows(ids: list[str], smiles: list[str], seeds: list[Seed], cfg: SelectionConfig) -> dict[str, list]:
    res = screen(smiles, ids, seeds, cfg)
    return dict(screened=[res.screened], rejected=[json.dumps(res.rejected)],
                survivors=[json.dumps([c.__dict__ for c in res.survivors])], invalid=[json.dumps(res.invalid)])


def _screen_text_batch(batch: dict[str, np.ndarray], seeds: list[Seed], cfg: SelectionConfig) -> dict[str, list]:
    ids, smiles = [], []
    for line in batch["text"]:
        parsed = parse_smi_line(str(line))
        if parsed is not None:
            ids.append(parsed[0])
            smiles.append(parsed[1])
    return _screen_rows(ids, smiles, seeds, cfg)


def _screen_csv_batch(batch: dict[str, np.ndarray], seeds: list[Seed], cfg: SelectionConfig) -> dict[str, list]:
    smiles_col, id_col = csv_columns(list(batch), "library CSV")
    smiles = ["" if s is None else str(s).strip() for s in batch[smiles_col]]
    ids = [str(i).strip() for i in batch[id_col]] if id_col else [""] * len(smiles)
    ids = [i if i and i != "None" else hashed_id(s) for i, s in zip(ids, smiles)]
    return _screen_rows(ids, smiles, seeds, cfg)


def select_library_ray(
    paths: Any,
    seeds: Sequence[Seed],
    cfg: SelectionConfig,
    batch_size: int = 20000,
    num_cpus: float = 1.0,
) -> SelectionResult:
    """The selection protocol over library files too large for one process.

    Ray Data reads the files (`read_text` for .smi/.txt, `read_csv` for .csv; .gz is
    decompressed by extension) and runs `screen` (criteria 1–7) in parallel tasks; each
    batch returns one row (counts + survivors), so only the few survivors reach the driver,
    which applies criterion 8 in the seeded-hash order. A gzipped file is read by one task
    (gzip cannot be split), so split a 10⁸-line dump into parts for parallel reading; the
    screening itself runs in parallel either way. Gives the same result as
    `atomray.tg80.library.select_library` on the same files, except that invalid SMILES are
    named by compound id (Ray Data's text reader keeps no line numbers).
    """
    import ray

    files = library_files(paths)
    smi = [str(f) for f in files if library_kind(f) == "smi"]
    csvs = [str(f) for f in files if library_kind(f) == "csv"]
    kwargs = dict(seeds=list(seeds), cfg=cfg)
    datasets = []
    if smi:
        datasets.append(ray.data.read_text(smi).map_batches(
            _screen_text_batch, batch_size=batch_size, batch_format="numpy", fn_kwargs=kwargs, num_cpus=num_cpus))
    if csvs:
        datasets.append(ray.data.read_csv(csvs).map_batches(
            _screen_csv_batch, batch_size=batch_size, batch_format="numpy", fn_kwargs=kwargs, num_cpus=num_cpus))
    total = ScreenResult([], 0)
    for ds in datasets:
        for row in ds.iter_rows():
            rejected = json.loads(row["rejected"])
            survivors = [Candidate(**c) for c in json.loads(row["survivors"])]
            total = total.merge(ScreenResult(survivors, int(row["screened"]), {c: rejected.get(c, 0) for c in CRITERIA},
                                             json.loads(row["invalid"])))
    return diversify(total, cfg)
