"""The streaming pipeline: chunking, exact per-epoch step counts, fresh windows per epoch,
reproducible windows for a seed, fixed validation windows — through a real Ray Data plan."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from atomray.config import DataConfig
from atomray.data.dataset import read_molecules
from atomray.data.pipeline import (
    EpochPlan,
    WindowStream,
    build_train_dataset,
    chunk_bounds,
    count_starts,
    fixed_windows,
    scan_segments,
)
from atomray.data.windows import max_horizon_frames, min_horizon_frames

CFG = DataConfig(horizon="loguniform", horizon_min_fs=8, horizon_max_fs=200, chunk_frames=300,
                 train_windows=256, batch_size=32, rwpe_k=4)


@pytest.mark.parametrize("n_frames", [50, 400, 1200, 1237])
@pytest.mark.parametrize("fraction", [(0.0, 1.0), (0.0, 0.8), (0.9, 1.0)])
def test_chunks_cover_every_start_once(n_frames, fraction):
    h_min, h_max = min_horizon_frames(CFG, 1.0), max_horizon_frames(CFG, 1.0)
    lo, hi = int(fraction[0] * n_frames), int(fraction[1] * n_frames)
    starts = []
    for a, b, n in chunk_bounds(n_frames, CFG, 1.0, fraction):
        assert lo <= a and b <= hi and b - a >= min(n + h_max, hi - a)
        starts += list(range(a, a + n))
    assert starts == list(range(lo, max(hi - h_min, lo)))


def _molecules(root):
    t = read_molecules(root)
    ids = t.column("molecule_id").to_pylist()
    return ids, dict(zip(ids, t.column("atomic_numbers").to_pylist()))


def _stream(root, ids, z, seed=0, world=1, rank=0):
    plan = EpochPlan.make(CFG, count_starts(scan_segments(root, ids), CFG), world)
    ds = build_train_dataset(root, ids, CFG, z, seed=seed)
    return WindowStream(ds.iterator(), CFG, plan, seed=seed, rank=rank), plan


def test_stream_epochs_have_exact_steps_and_fresh_windows(ray_local, mmff_dataset):
    ids, z = _molecules(mmff_dataset)
    stream, plan = _stream(mmff_dataset, ids, z)
    epochs = {}
    for epoch, batches in stream.epochs(0, 2):
        got = list(batches)
        assert len(got) == plan.steps_per_epoch
        for b in got:
            assert b["x0"].shape[0] == plan.local_batch
            assert b["mask"].any(1).all()
            n = b["mask"].sum(1)
            assert ((b["z"] > 0) == b["mask"]).all() and (n > 0).all()
        epochs[epoch] = sorted((int(s), float(b["lags_fs"][i, -1])) for b in got for i, s in enumerate(b["start"].tolist()))
    assert epochs[0] != epochs[1]  # a fresh draw of windows every epoch
    stream.close()


def test_same_seed_same_windows(ray_local, mmff_dataset):
    ids, z = _molecules(mmff_dataset)
    draws = []
    for _ in range(2):
        stream, _ = _stream(mmff_dataset, ids, z, seed=7)
        (_, batches), = list(stream.epochs(0, 1))
        draws.append(sorted((int(s), float(l)) for b in batches for s, l in zip(b["start"].tolist(), b["lags_fs"][:, -1].tolist())))
        stream.close()
    assert draws[0] == draws[1]


def test_ranks_yield_equal_steps(ray_local, mmff_dataset):
    ids, z = _molecules(mmff_dataset)
    plan = EpochPlan.make(CFG, count_starts(scan_segments(mmff_dataset, ids), CFG), 2)
    ds = build_train_dataset(mmff_dataset, ids, CFG, z, seed=0)
    shards = ds.streaming_split(2, equal=True)
    import threading

    counts = {}

    def consume(rank):
        stream = WindowStream(shards[rank], CFG, plan, seed=0, rank=rank)
        counts[rank] = [sum(1 for _ in batches) for _, batches in stream.epochs(0, 2)]

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    assert counts == {0: [plan.steps_per_epoch] * 2, 1: [plan.steps_per_epoch] * 2}


def test_fixed_windows_are_identical_each_call(mmff_dataset):
    ids, _ = _molecules(mmff_dataset)
    a = fixed_windows(mmff_dataset, ids[:3], 50, CFG, seed=1, frame_fraction=(0.5, 1.0))
    b = fixed_windows(mmff_dataset, ids[:3], 50, CFG, seed=1, frame_fraction=(0.5, 1.0))
    assert len(a["x0"]) == 50
    for key in ("x0", "target", "lags_fs", "mask", "rwpe"):
        np.testing.assert_array_equal(a[key], b[key])
    # Windows lie in the second half of their frames row (one 1200-frame row per molecule).
    assert (a["start"] >= 600).all()
    last = a["start"] + (a["lags_fs"][:, -1] / 1.0).astype(int)
    assert (last < 1200).all()


def test_read_and_chunking_fuse_into_one_task_per_file(ray_local, mmff_dataset):
    """The plan's cost per epoch on a small node: one Ray Data task per frames file that both
    reads and chunks it (a split read or a row-batched map would not fuse)."""
    ids, z = _molecules(mmff_dataset)
    files = {s.path for s in scan_segments(mmff_dataset, ids)}
    ds = build_train_dataset(mmff_dataset, ids, CFG, z, seed=0, concurrency=2)
    rows = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert rows == sum(len(chunk_bounds(s.n_frames, CFG, s.dt_fs)) for s in scan_segments(mmff_dataset, ids))
    stats = ds.stats()
    assert "ReadParquet->MapBatches(chunk_segments)" in stats, stats
    assert f"{len(files)} tasks executed" in stats, stats


def test_read_tasks_default_to_one_per_worker_and_reject_negatives():
    from atomray.config import ConfigError, RunConfig
    from atomray.train.pretrain import read_tasks, resolve

    cfg = RunConfig()
    assert read_tasks(dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=3))) == 3
    assert read_tasks(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, read_tasks=5))) == 5
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, read_tasks=-1))
    with pytest.raises(ConfigError, match="data.read_tasks"):
        resolve(bad)
