"""The streaming training pipeline: Ray Data reads trajectories, the workers cut windows.

    Ray Data: read_parquet(frames/*.parquet, filtered to the split's molecules, files shuffled)
        → map_batches(chunk_segments), fused into the read (one task per file): each segment
          becomes chunks of `chunk_frames` start frames plus the largest horizon after them,
          with velocities filled in
        → streaming split to the Ray Train workers (TorchTrainer `datasets=`)
    worker: WindowStream — for each chunk it receives, draw windows with a generator seeded by
        (seed, epoch, rank, chunk), pool and shuffle windows across chunks, pad to the batch's
        largest molecule (mask), attach each window's prior paths (a `transform` the training
        loop hands in: `atomray.priors.paths.PriorPaths`, vectorised over the batch), convert to
        torch; a background thread keeps a bounded queue of ready batches filled and runs ahead
        across epoch boundaries, so Ray Data's per-epoch start-up never stalls training.

Why windows are cut on the worker rather than in `map_batches`: the window seed must depend
on the epoch and the worker, which only the worker knows (a Ray Data plan is fixed when the
trainer starts), and a pure NumPy sampler (~10⁵ windows/s/core, benchmarks/bench_windows.py)
costs a few milliseconds per batch.

Every rank yields exactly `steps_per_epoch` batches (DDP needs equal step counts): windows per
chunk follow the chunk's share of start frames, and a rank that received fewer chunks than
average tops up from chunks it already holds.

Validation and test windows are drawn once, with a fixed seed, by `fixed_windows`; they are
identical on every rank and in every epoch. Nothing here holds more than one chunk pool of
trajectory data per worker, so the data set size is bounded by storage, not memory.
"""

from __future__ import annotations

import os
import queue
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from atomray.config import DataConfig
from atomray import storage
from atomray.data.frames import FRAMES_SCHEMA, DataError, Trajectory, check_fields, finite_difference_velocities
from atomray.data.dataset import frame_files, read_molecules, read_parquet, read_parquet_schema, read_segments
from atomray.data.windows import (
    Windows,
    max_horizon_frames,
    min_horizon_frames,
    pad_windows,
    sample_windows,
)

DATA_TASK_CPUS = 0.25  # logical CPUs each Ray Data read / chunking task reserves
CHUNK_COLUMNS = ["molecule_id", "segment", "first_frame", "chunk", "dt_fs", "n_atoms", "n_frames", "n_starts",
                 "atomic_numbers", "positions", "velocities"]


# ---------------------------------------------------------------------------------------------
# chunks: the unit of work that flows from Ray Data to the workers


def row_range(n_frames: int, fraction: tuple[float, float] = (0.0, 1.0)) -> tuple[int, int]:
    """Frames [lo, hi) of an n_frames segment that a time fraction covers. Time fractions
    (in-distribution splits) apply per frames row, the unit windows never cross."""
    return int(fraction[0] * n_frames), int(fraction[1] * n_frames)


def chunk_bounds(n_frames: int, cfg: DataConfig, dt_fs: float,
                 fraction: tuple[float, float] = (0.0, 1.0)) -> list[tuple[int, int, int]]:
    """(first frame, end frame, start frames) of each chunk of an n_frames segment.

    Chunk k may start windows at frames a = lo + k·stride … a + stride - 1 and carries the
    largest horizon after them (clipped at the end of the row's `fraction`); the last chunks
    start only where a window of the smallest horizon still fits.
    """
    stride, h_max, h_min = chunk_stride(cfg, dt_fs), max_horizon_frames(cfg, dt_fs), min_horizon_frames(cfg, dt_fs)
    lo, hi = row_range(n_frames, fraction)
    out = []
    for a in range(lo, max(hi - h_min, lo), stride):
        b = min(hi, a + stride + h_max)
        out.append((a, b, min(stride, b - a - h_min)))
    return out


def chunk_stride(cfg: DataConfig, dt_fs: float) -> int:
    """Start frames per chunk: `chunk_frames`, but never fewer than the largest horizon (so
    the horizon-long tail a chunk carries is at most half its data)."""
    return max(int(cfg.chunk_frames), max_horizon_frames(cfg, dt_fs))


def chunk_segments(table: pa.Table, cfg: DataConfig, atomic_numbers: dict[str, list[int]],
                   fraction: tuple[float, float] = (0.0, 1.0)) -> pa.Table:
    """Ray Data `map_batches` step: cut frames rows into chunks (see module docstring).

    A chunk holds frames [a, a + stride + H_max) of its segment (clipped to the end), and
    windows may start at its first `n_starts` frames. Missing velocities are derived by
    finite differences over the whole segment first.
    """
    out: dict[str, list] = {name: [] for name in CHUNK_COLUMNS}
    for i in range(table.num_rows):
        mid = table.column("molecule_id")[i].as_py()
        n_frames, n_atoms = int(table.column("n_frames")[i].as_py()), int(table.column("n_atoms")[i].as_py())
        dt = float(table.column("dt_fs")[i].as_py())
        pos = table.column("positions")[i].values.to_numpy(zero_copy_only=False).reshape(n_frames, n_atoms, 3)
        vcell = table.column("velocities")[i]
        if vcell.is_valid:
            vel = vcell.values.to_numpy(zero_copy_only=False).reshape(n_frames, n_atoms, 3)
        else:
            vel = finite_difference_velocities(pos, dt)
        segment = int(table.column("segment")[i].as_py())
        for k, (a, b, n_starts) in enumerate(chunk_bounds(n_frames, cfg, dt, fraction)):
            out["molecule_id"].append(mid)
            out["segment"].append(segment)
            out["first_frame"].append(a)
            out["chunk"].append(segment * 1_000_003 + k)
            out["dt_fs"].append(dt)
            out["n_atoms"].append(n_atoms)
            out["n_frames"].append(b - a)
            out["n_starts"].append(n_starts)
            out["atomic_numbers"].append(atomic_numbers[mid])
            out["positions"].append(np.ascontiguousarray(pos[a:b]).reshape(-1))
            out["velocities"].append(np.ascontiguousarray(vel[a:b]).reshape(-1))
    return pa.table({
        "molecule_id": pa.array(out["molecule_id"], pa.string()),
        "segment": pa.array(out["segment"], pa.int32()),
        "first_frame": pa.array(out["first_frame"], pa.int64()),
        "chunk": pa.array(out["chunk"], pa.int64()),
        "dt_fs": pa.array(out["dt_fs"], pa.float64()),
        "n_atoms": pa.array(out["n_atoms"], pa.int32()),
        "n_frames": pa.array(out["n_frames"], pa.int32()),
        "n_starts": pa.array(out["n_starts"], pa.int32()),
        "atomic_numbers": pa.array(out["atomic_numbers"], pa.list_(pa.int8())),
        "positions": pa.array(out["positions"], pa.list_(pa.float32())),
        "velocities": pa.array(out["velocities"], pa.list_(pa.float32())),
    })


@dataclass(frozen=True)
class SegmentInfo:
    """Metadata of one frames row (no coordinates): enough to plan an epoch."""

    path: str
    molecule_id: str
    segment: int
    dt_fs: float
    n_atoms: int
    n_frames: int


def scan_segments(root: str | Path, molecule_ids: Sequence[str] | None = None) -> list[SegmentInfo]:
    """Read only the metadata columns of every frames shard (cheap at any data set size)."""
    wanted = None if molecule_ids is None else set(molecule_ids)
    out = []
    for path in frame_files(root):
        # Every file's schema, not just the metadata columns: the training read trusts it.
        check_fields(read_parquet_schema(path), FRAMES_SCHEMA, path)
        t = read_parquet(path, columns=["molecule_id", "segment", "dt_fs", "n_atoms", "n_frames"])
        for mid, seg, dt, n, f in zip(*(t.column(c).to_pylist() for c in t.column_names)):
            if wanted is None or mid in wanted:
                out.append(SegmentInfo(str(path), mid, int(seg), float(dt), int(n), int(f)))
    return out


def count_starts(segments: Sequence[SegmentInfo], cfg: DataConfig, fraction: tuple[float, float] = (0.0, 1.0)) -> int:
    """Start frames available to training windows over all chunks of `segments`."""
    return sum(n for s in segments for _, _, n in chunk_bounds(s.n_frames, cfg, s.dt_fs, fraction))


def build_train_dataset(root: str | Path, molecule_ids: Sequence[str], cfg: DataConfig,
                        atomic_numbers: dict[str, list[int]], seed: int, num_cpus: float = DATA_TASK_CPUS,
                        fraction: tuple[float, float] = (0.0, 1.0), concurrency: int | None = None):
    """The Ray Data plan for training chunks (lazy; Ray Train executes it once per epoch).

    One fused task per frames file reads it and cuts its chunks; each task reserves
    `num_cpus`, and at most `concurrency` run at once (None: as many as free CPUs allow).
    Every task and every idle process kept for the next epoch takes CPU from training on a
    small node, so fewer, larger tasks are cheaper: benchmarks/bench_pipeline.py."""
    import ray.data
    from ray.data.expressions import col

    # The plan re-executes every epoch; per-operator progress bars would flood job logs
    # (the worker loop prints one line per epoch instead).
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = os.environ.get("RAY_DATA_LOG_LEVEL", "INFO").upper() in ("DEBUG", "INFO")
    # Chunks arrive in file order (shuffled per epoch by seed), not in task-completion order,
    # so a run's windows depend only on its seeds.
    ctx.execution_options.preserve_order = True
    # Ray 2.60's file-listing Parquet reader (datasource V2) spends ~3 s starting every
    # execution, once per epoch; the classic reader starts in ~0.3 s (measured on 2 cores).
    ctx.use_datasource_v2 = False
    files = sorted({s.path for s in scan_segments(root, molecule_ids)})
    if not files:
        raise DataError(f"{root}: no frames for the training molecules {sorted(molecule_ids)[:5]}...")
    fs, _ = storage.filesystem(files[0])
    ds = ray.data.read_parquet(
        [storage.filesystem(f)[1] for f in files],
        filesystem=fs,
        columns=FRAMES_SCHEMA.names,
        shuffle=ray.data.FileShuffleConfig(seed=seed),
        num_cpus=num_cpus,
        concurrency=concurrency,
        # One block per file: Ray Data would otherwise split each read's output to reach
        # its default block count, and a split read cannot fuse with the chunking step.
        override_num_blocks=len(files),
    ).filter(expr=col("molecule_id").is_in(list(molecule_ids)))
    z = {m: list(atomic_numbers[m]) for m in molecule_ids}
    # batch_size=None (a whole block) and the read's concurrency: both are needed for Ray
    # Data to fuse the chunking into the read task.
    return ds.map_batches(chunk_segments, fn_args=(cfg, z, tuple(fraction)), batch_format="pyarrow",
                          batch_size=None, num_cpus=num_cpus, zero_copy_batch=True,
                          compute=ray.data.TaskPoolStrategy(size=concurrency))


# ---------------------------------------------------------------------------------------------
# the worker side: chunks -> windows -> padded torch batches


def window_seed(*keys: int | str) -> np.random.Generator:
    """A generator seeded from a tuple of ints/strings (stable across processes)."""
    words = [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence([abs(int(w)) for w in words]))


def chunk_to_trajectory(batch: pa.Table, i: int) -> tuple[Trajectory, int]:
    n_frames, n_atoms = batch.column("n_frames")[i].as_py(), batch.column("n_atoms")[i].as_py()
    shape = (n_frames, n_atoms, 3)
    traj = Trajectory(
        molecule_id=batch.column("molecule_id")[i].as_py(),
        atomic_numbers=np.asarray(batch.column("atomic_numbers")[i].values.to_numpy(), np.int64),
        dt_fs=batch.column("dt_fs")[i].as_py(),
        t0_fs=0.0,
        positions=batch.column("positions")[i].values.to_numpy(zero_copy_only=False).reshape(shape),
        velocities=batch.column("velocities")[i].values.to_numpy(zero_copy_only=False).reshape(shape),
        segment=int(batch.column("segment")[i].as_py()),
        first_frame=int(batch.column("first_frame")[i].as_py()),
    )
    return traj, int(batch.column("n_starts")[i].as_py())


def to_torch(batch: dict[str, Any], device: Any = "cpu") -> dict[str, Any]:
    """Numeric arrays of a padded batch as torch tensors on `device` (float32 / int64 / bool)."""
    import torch

    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
    return out


@dataclass(frozen=True)
class EpochPlan:
    """How many windows each rank turns into how many batches per epoch."""

    steps_per_epoch: int
    local_batch: int
    windows_per_start: float  # expected windows per available start frame

    @classmethod
    def make(cls, cfg: DataConfig, total_starts: int, world_size: int) -> "EpochPlan":
        local = cfg.batch_size // world_size
        if local < 1:
            raise DataError(f"data.batch_size={cfg.batch_size} is smaller than the {world_size} workers")
        steps = cfg.train_windows // (local * world_size)
        if steps < 1:
            raise DataError(
                f"data.train_windows={cfg.train_windows} is less than one global batch "
                f"({local * world_size}); raise train_windows or lower batch_size"
            )
        if total_starts <= 0:
            raise DataError("the training molecules have no start frames long enough for the horizon")
        return cls(steps, local, steps * local * world_size / total_starts)


class WindowStream:
    """Padded torch batches for one worker, epoch after epoch, from its Ray Data shard.

    `shard` is the worker's `ray.train.get_dataset_shard("train")`; `epochs(start)` yields
    (epoch, iterator over exactly `plan.steps_per_epoch` batches). A producer thread fills a
    bounded queue, running ahead into the next epoch.
    """

    def __init__(self, shard: Any, cfg: DataConfig, plan: EpochPlan, seed: int, rank: int,
                 device: Any = "cpu", pool_chunks: int = 16, queue_batches: int | None = None,
                 transform: Callable[[dict], dict] | None = None, with_context: bool = False):
        self.shard, self.cfg, self.plan, self.seed, self.rank = shard, cfg, plan, seed, rank
        self.device, self.pool_chunks = device, pool_chunks
        self.transform = transform or (lambda batch: batch)
        self.with_context = with_context  # context atoms in training batches (a prior that needs them)
        # Deep enough to cover Ray Data's per-epoch start-up while the previous epoch trains.
        depth = queue_batches if queue_batches is not None else max(32, plan.steps_per_epoch)
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- producer -------------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        cfg, plan = self.cfg, self.plan
        need = plan.steps_per_epoch * plan.local_batch
        pool: list[Windows] = []
        pool_size = 0
        held: list[tuple[Trajectory, int, int]] = []  # recent chunks, for top-up
        made = 0
        shuffle_rng = window_seed(self.seed, epoch, self.rank, "shuffle")

        def drain(final: bool) -> Iterator[dict[str, Any]]:
            nonlocal pool, pool_size, made
            if not pool:
                return
            merged = pad_windows(pool)
            order = shuffle_rng.permutation(len(merged["x0"]))
            full = len(order) // plan.local_batch * plan.local_batch
            take = min(full, max(0, plan.steps_per_epoch - made) * plan.local_batch)
            # One transform call for every batch of the pool: its cost is mostly per call (the
            # rotor's RK4 steps), so a pool of batches pays it once.
            ready = self.transform({k: v[order[:take]] for k, v in merged.items()}) if take else {}
            for s in range(0, take, plan.local_batch):
                yield to_torch({k: v[s : s + plan.local_batch] for k, v in ready.items()}, self.device)
                made += 1
            if made >= plan.steps_per_epoch:
                return
            rest = order[full:]
            pool = [{k: v[rest] for k, v in merged.items()}] if len(rest) and not final else []
            pool_size = len(rest) if pool else 0

        for batch in self.shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            for i in range(batch.num_rows):
                traj, n_starts = chunk_to_trajectory(batch, i)
                chunk = int(batch.column("chunk")[i].as_py())
                rng = window_seed(self.seed, epoch, traj.molecule_id, chunk)
                n = int(rng.poisson(plan.windows_per_start * n_starts)) if n_starts > 0 else 0
                held = (held + [(traj, n_starts, chunk)])[-self.pool_chunks:]
                if n == 0 or made >= plan.steps_per_epoch:
                    continue
                pool.append(sample_windows(traj, n, cfg, rng, start_range=(0, n_starts), with_context=self.with_context))
                pool_size += n
                if len(pool) >= self.pool_chunks:
                    yield from drain(final=False)
        # Top up from the chunks this rank holds if it received fewer than average.
        top_up = 0
        while made < plan.steps_per_epoch:
            if not held:
                raise DataError(f"rank {self.rank} received no training data in epoch {epoch}")
            traj, n_starts, chunk = held[top_up % len(held)]
            rng = window_seed(self.seed, epoch, traj.molecule_id, chunk, "top-up", top_up)
            missing = need - made * plan.local_batch - pool_size
            pool.append(sample_windows(traj, max(missing, plan.local_batch), cfg, rng, start_range=(0, n_starts),
                                       with_context=self.with_context))
            pool_size += len(pool[-1]["x0"])
            top_up += 1
            yield from drain(final=False)
        pool, pool_size = [], 0

    def _produce(self, start_epoch: int, end_epoch: int) -> None:
        try:
            for epoch in range(start_epoch, end_epoch):
                for batch in self._epoch_batches(epoch):
                    if self._stop.is_set():
                        return
                    self._queue.put(("batch", epoch, batch))
                self._queue.put(("end", epoch, None))
        except BaseException as err:  # surfaced in the consumer thread
            self._queue.put(("error", -1, err))

    # -- consumer -------------------------------------------------------------------------

    def epochs(self, start_epoch: int, end_epoch: int) -> Iterator[tuple[int, Iterator[dict[str, Any]]]]:
        """Yield (epoch, batches) for epochs start..end-1; consume each batches iterator fully."""
        self._thread = threading.Thread(target=self._produce, args=(start_epoch, end_epoch), daemon=True)
        self._thread.start()
        for epoch in range(start_epoch, end_epoch):
            yield epoch, self._take_epoch(epoch)

    def _take_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        while True:
            kind, e, item = self._queue.get()
            if kind == "error":
                raise item
            if kind == "end":
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while not self._queue.empty():
            self._queue.get_nowait()


class InMemoryStream:
    """The same interface as WindowStream, fed from windows held in memory (drawn once).

    For benchmarks (the "data path is never the bottleneck" comparison) and for small
    single-molecule experiments; each epoch is a fresh permutation of the same windows.
    """

    def __init__(self, windows: dict[str, Any], plan: EpochPlan, seed: int, rank: int, device: Any = "cpu"):
        self.windows = to_torch(windows, device)
        self.plan, self.seed, self.rank = plan, seed, rank
        n = len(self.windows["x0"])
        if n < plan.local_batch:
            raise DataError(f"{n} in-memory windows are fewer than one batch of {plan.local_batch}")

    def epochs(self, start_epoch: int, end_epoch: int) -> Iterator[tuple[int, Iterator[dict[str, Any]]]]:
        for epoch in range(start_epoch, end_epoch):
            yield epoch, self._epoch(epoch)

    def _epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        import torch

        n = len(self.windows["x0"])
        order = torch.from_numpy(window_seed(self.seed, epoch, self.rank, "memory").permutation(n))
        for step in range(self.plan.steps_per_epoch):
            idx = order[(np.arange(self.plan.local_batch) + step * self.plan.local_batch) % n]
            yield {k: v[idx] for k, v in self.windows.items()}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# fixed evaluation windows


def fixed_windows(root: str | Path, molecule_ids: Sequence[str], n: int, cfg: DataConfig, seed: int,
                  frame_fraction: tuple[float, float] = (0.0, 1.0)) -> dict[str, np.ndarray]:
    """`n` evaluation windows spread evenly over `molecule_ids`, drawn once with `seed`.

    Windows lie inside one frames row each, within its `frame_fraction` (as training chunks
    do, so time-disjoint splits stay disjoint), and carry the context atoms the physics floors
    need. Reads one molecule at a time and keeps only the windows. Returns a padded batch
    (numpy), the same on every call with the same arguments.
    """
    if not molecule_ids:
        raise DataError("no molecules to draw evaluation windows from")
    per_mol = np.full(len(molecule_ids), n // len(molecule_ids))
    per_mol[: n % len(molecule_ids)] += 1
    files = molecule_files(root, molecule_ids)
    groups = []
    for mid, k in zip(molecule_ids, per_mol):
        if k == 0:
            continue
        trajectory = molecule_segments(root, mid, files.get(mid, []))
        groups += segment_windows(trajectory, int(k), cfg, window_seed(seed, mid, "eval"), frame_fraction)
    return pad_windows(groups)


def molecule_files(root: str | Path, molecule_ids: Sequence[str]) -> dict[str, list[str]]:
    """The frames files that hold each molecule's segments (from the metadata columns only)."""
    files: dict[str, list[str]] = {}
    for s in scan_segments(root, molecule_ids):
        files.setdefault(s.molecule_id, []).append(s.path)
    return files


def molecule_segments(root: str | Path, molecule_id: str, files: Sequence[str]) -> list[Trajectory]:
    """A molecule's frames rows as trajectories in time order, velocities filled in."""
    z = read_atomic_numbers(root, molecule_id)
    segments = [seg for path in sorted(set(files)) for seg in read_segments(path, [molecule_id])]
    segments.sort(key=lambda seg: (seg.t0_fs, seg.segment))
    if not segments:
        raise DataError(f"{root}: molecule {molecule_id!r} has no frames")
    out = []
    for seg in segments:
        vel = seg.velocities if seg.velocities is not None else finite_difference_velocities(seg.positions, seg.dt_fs)
        out.append(Trajectory(molecule_id, z, seg.dt_fs, seg.t0_fs, seg.positions, vel, seg.segment))
    return out


def segment_windows(segments: Sequence[Trajectory], n: int, cfg: DataConfig, rng: np.random.Generator,
                    frame_fraction: tuple[float, float] = (0.0, 1.0)) -> list[Windows]:
    """`n` windows over a molecule's segments, in proportion to each segment's usable frames."""
    spans = np.array([np.subtract(*row_range(seg.n_frames, frame_fraction)[::-1]) for seg in segments], float)
    counts = rng.multinomial(n, spans / spans.sum())
    return [sample_windows(seg, int(c), cfg, rng, frame_range=row_range(seg.n_frames, frame_fraction))
            for seg, c in zip(segments, counts) if c]


def read_atomic_numbers(root: str | Path, molecule_id: str) -> np.ndarray:
    table = read_molecules(root)
    ids = table.column("molecule_id").to_pylist()
    if molecule_id not in ids:
        raise DataError(f"{root}: no molecule {molecule_id!r} in the molecules table")
    return np.asarray(table.column("atomic_numbers")[ids.index(molecule_id)].as_py(), np.int64)
