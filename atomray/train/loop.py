"""The Ray Train boundary: the worker loop and the TorchTrainer that runs it.

This is the only module that calls `ray.train.*` (docs/architecture.md). The worker loop builds the
model and data inside the worker, wraps the model with `prepare_model` (DDP: gloo on CPU,
NCCL on CUDA), trains on its Ray Data shard through `WindowStream`, validates on fixed
windows every epoch, and reports metrics with a checkpoint directory. `EpochRecorder`, a
callback on the Ray Train controller, prints and logs to MLflow each epoch only once its
checkpoint is committed, from that checkpoint's own history: the record never holds an epoch
that a dead attempt ran but never committed.

Resume is automatic: after a worker failure (`FailureConfig(max_failures)`) or when the same
`storage_path` + `name` is submitted again, Ray Train hands the latest checkpoint to
`ray.train.get_checkpoint()` and the loop continues from the next epoch; rank 0 first removes
checkpoint directories a dead attempt uploaded but never committed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atomray import storage
from atomray.config import RunConfig, config_from_dict, to_dict
from atomray.data.pipeline import EpochPlan, InMemoryStream, WindowStream, fixed_windows, to_torch
from atomray.data.splits import EvalSet, Split
from atomray.evaluate import (FLOORS, ErrorTable, eval_transform, model_errors, rotated_copy, score_windows,
                              strongest_floor, summarise, validation_windows, with_paths)
from atomray.checkpoint import TrainState, load_optimizer, load_weights, read_state, save_checkpoint
from atomray.train.faults import COMMIT_MARKER, commit_marker_needed, exit_after_report, maybe_inject_fault, read_faults
from atomray.train.loss import epoch_generator, training_loss, training_transform
from atomray.train.optim import build_optimizer, lr_at, train_step


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def gather_tables(table: ErrorTable) -> ErrorTable:
    """Every rank's ErrorTable of its slice of an evaluation set, joined (on every rank)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return table
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, table)
    return ErrorTable.concat(parts)


def find_unused_parameters(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig) -> bool:
    """True when some trainable parameter gets no gradient from the training loss (an
    ablation switch left it unused); DDP must then be told to look for unused parameters."""
    model.zero_grad(set_to_none=True)
    training_loss(model, batch, cfg, torch.Generator(), nullcontext()).backward()
    unused = any(p.requires_grad and p.grad is None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return unused


@dataclass
class RankEvalSet:
    """This rank's slice of a fixed evaluation set: the windows on the device and the floors'
    errors on them (computed once; the model's are added every epoch)."""

    name: str
    windows: dict[str, torch.Tensor]
    rotated: dict[str, torch.Tensor]
    floors: ErrorTable

    @classmethod
    def make(cls, name: str, windows: dict[str, np.ndarray], rank: int, world: int, device: Any) -> "RankEvalSet":
        rotated = rotated_copy(windows)  # the same rotations whatever the number of ranks
        part, turned = ({k: v[rank::world] for k, v in w.items()} for w in (windows, rotated))
        return cls(name, to_torch(part, device), to_torch(turned, device), score_windows(None, part))

    def metrics(self, model: torch.nn.Module, batch_size: int, autocast: Any, breakdown: bool) -> dict[str, float]:
        local = ErrorTable(self.floors.lags_fs, self.floors.molecule_id,
                           {**self.floors.errors, "model": model_errors(model, self.windows, batch_size, autocast),
                            "model_rotated": model_errors(model, self.rotated, batch_size, autocast)})
        return summarise(gather_tables(local), self.name, breakdown)


def load_physics(root: str, molecules: list[str], *known: Any) -> Any:
    """The stored per-frame physics of `molecules`, taken from what is loaded already (`known`,
    None where nothing was) or read, or None when the data set has none for them (then the
    machine's basin store serves the evaluation windows)."""
    from atomray.priors.frames import FramePhysics

    if not molecules:
        return None
    loaded = {m: p for k in known if k is not None for m, p in k.molecules.items()}
    if all(m in loaded for m in molecules):
        return FramePhysics(root, {m: loaded[m] for m in molecules})
    return FramePhysics.load(root, molecules)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function. `config` holds the resolved RunConfig as a dict ("run"),
    the split ("split"), the epoch plan inputs and the MLflow run to log to."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from atomray.model import build_model

    cfg: RunConfig = config_from_dict(config["run"])
    split = Split.from_dict(config["split"])
    # Ray Train sets this process's root logger to INFO, and some of its records (every report,
    # in full) reach the root logger: the run's log level applies to them too.
    logging.getLogger().setLevel(config["log_level"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    record_placement(config["run_dir"], rank, world, device)

    # -- model, optimiser, resume --------------------------------------------------------
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    state = TrainState(mlflow_run_id=config.get("mlflow_run_id", ""), elements=list(config.get("elements", [])))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_weights(d, model, device)
            load_optimizer(d, optimizer, device)
            state = read_state(d)
        state.resumed_at.append(state.epoch + 1)
    if rank == 0:
        remove_uncommitted_checkpoints(config["run_dir"], checkpoint)

    data = cfg.data
    transform, physics = training_transform(cfg, split.train)  # the prior paths of training batches
    held_out = load_physics(data.path, [*split.val, *split.test], physics)
    scoring = eval_transform(cfg, held_out)
    eval_sets = [RankEvalSet.make("val", with_paths(validation_windows(data, split), scoring), rank, world, device)]
    for d in config.get("eval_sets", []):
        es = EvalSet.from_dict(d)
        windows = fixed_windows(data.path, es.molecules, es.n, data, es.seed, es.frame_fraction)
        scoring = eval_transform(cfg, load_physics(data.path, es.molecules, physics, held_out))
        eval_sets.append(RankEvalSet.make(es.name, with_paths(windows, scoring), rank, world, device))

    probe = {k: v[:2] for k, v in eval_sets[0].windows.items()}
    unused = find_unused_parameters(model, probe, cfg)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})
    if cfg.scaling.compile:
        model = torch.compile(model)
    use_bf16 = cfg.scaling.precision == "bf16" and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext()

    plan = EpochPlan.make(data, int(config["total_starts"]), world)
    total_steps = plan.steps_per_epoch * cfg.train.epochs
    if data.train_feed == "fixed":  # one set of windows, drawn once, every epoch
        held = fixed_windows(data.path, split.train, data.train_windows, data, data.split_seed + 4, split.ranges["train"])
        held = with_paths({k: v[rank::world] for k, v in held.items()}, transform)
        if not transform.context:
            held = {k: v for k, v in held.items() if not k.startswith("ctx_")}
        stream = InMemoryStream(held, plan, cfg.train.seed, rank, device)
    else:
        stream = WindowStream(ray.train.get_dataset_shard("train"), data, plan, cfg.train.seed, rank, device,
                              transform=transform, with_context=transform.context)

    try:
        for epoch, batches in stream.epochs(state.epoch + 1, cfg.train.epochs):
            model.train()
            t0, n_batches, waited = time.perf_counter(), 0, 0.0
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
            noise_gen = epoch_generator(cfg.train.seed, epoch, rank, "noise")
            augment_gen = epoch_generator(cfg.train.seed, epoch, rank, "augment")
            while True:
                t_wait = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - t_wait
                if batch is None:
                    break
                maybe_inject_fault(config, epoch, n_batches, plan.steps_per_epoch, rank, world)
                loss = train_step(model, optimizer, batch, cfg, state.step, total_steps, noise_gen, augment_gen, autocast)
                state.step += 1
                n_batches += 1
                loss_sum += loss
            seconds = time.perf_counter() - t0
            loss_sum = all_reduce_sum(torch.stack([loss_sum.float(), torch.tensor(float(n_batches), device=device)])).cpu()
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum[0] / loss_sum[1]),
                "lr": lr_at(max(state.step - 1, 0), total_steps, cfg.optim),
                "epoch_seconds": seconds,
                "train_samples_per_s": plan.steps_per_epoch * plan.local_batch * world / max(seconds, 1e-9),
                "data_wait_fraction": waited / max(seconds, 1e-9),
            }
            for es in eval_sets:  # validation breaks down by lag and ΔT decade; test sets do not
                row.update(es.metrics(model, plan.local_batch, autocast, breakdown=es.name == "val"))
            if not all(math.isfinite(x) for x in row.values()):
                raise FloatingPointError(f"non-finite metrics at epoch {epoch}: {row}")
            state.epoch = epoch
            state.history.append(row)
            state.best_val_s2s = min(state.best_val_s2s, row["val_s2s"])
            with exit_after_report(config, epoch, rank, world):
                report(row, model, optimizer, cfg, state, rank, Checkpoint)
    finally:
        stream.close()


def progress_line(row: dict[str, float], epochs: int) -> str:
    """One line per epoch for the driver's log: validation S2T/S2S beside the floors on the same
    windows, and how the model compares with the strongest (10⁻² Å², like the paper's tables)."""
    floors = ", ".join(f"{f} {100 * row[f'val_s2t_{f}']:.3f}" for f in FLOORS if f"val_s2t_{f}" in row)
    name, floor = strongest_floor(row, "val_s2t")
    line = (f"epoch {int(row['epoch']) + 1}/{epochs}  loss {row['train_loss']:.4g}  "
            f"val S2T {100 * row['val_s2t']:.3f}  S2S {100 * row['val_s2s']:.3f}  "
            f"= {row['val_s2t'] / floor:.2f}x {name}  (rotated copies {100 * row['val_s2t_rotated']:.3f}; "
            f"floors S2T: {floors})  x1e-2 A^2  "
            f"{row['epoch_seconds']:.1f} s, {row['train_samples_per_s']:.0f} samples/s, "
            f"{100 * row['data_wait_fraction']:.0f}% waiting for data")
    sets = sorted({k[: -len("_s2t")] for k in row if k.endswith("_s2t")} - {"val"})
    for name in sets:
        best, floor = strongest_floor(row, f"{name}_s2t")
        line += f"  | {name} S2T {100 * row[name + '_s2t']:.3f} = {row[name + '_s2t'] / floor:.2f}x {best}"
    return line


def report(row: dict[str, float], model, optimizer, cfg: RunConfig, state: TrainState, rank: int, checkpoint_cls) -> None:
    """Every rank reports; rank 0 attaches the checkpoint directory (model of rank 0 equals
    every other rank's under DDP)."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:
            save_checkpoint(tmp, model, cfg, state, optimizer)
            ray.train.report(row, checkpoint=checkpoint_cls.from_directory(tmp))
        else:
            ray.train.report(row)


def record_placement(run_dir: str, rank: int, world: int, device: Any) -> None:
    """Write run_dir/placement/rank-<r>.json: which node, process and device run this rank."""
    import json
    import socket

    import ray

    info = {"rank": rank, "world_size": world, "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(), "pid": os.getpid(), "device": str(device),
            "torch_threads": torch.get_num_threads()}
    storage.write_text(storage.join(run_dir, "placement", f"rank-{rank}.json"), json.dumps(info))


CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint directories under storage_path/name


def remove_uncommitted_checkpoints(run_dir: str, committed: Any) -> list[str]:
    """Delete the checkpoint directories of `run_dir` that a dead attempt uploaded but Ray Train
    never committed: every one (there is no committed checkpoint yet) or, with `committed` the
    latest committed checkpoint, those unreadable or not older than it (a committed later one
    would be the latest). Older ones are the best-so-far Ray keeps. Returns the names removed."""
    from atomray.checkpoint import STATE_FILE

    latest_name, latest_epoch = "", -1
    if committed is not None:
        latest_name = storage.basename(committed.path)
        latest_epoch = json.loads(storage.read_text(storage.join(run_dir, latest_name, STATE_FILE)))["epoch"]
    removed = []
    for name in storage.listdir(run_dir, "dir"):
        if not name.startswith(CHECKPOINT_PREFIX) or name == latest_name:
            continue
        try:
            epoch = json.loads(storage.read_text(storage.join(run_dir, name, STATE_FILE)))["epoch"]
        except (storage.StorageError, ValueError, KeyError):
            epoch = latest_epoch  # half uploaded: never committed
        if epoch >= latest_epoch:
            storage.delete_dir(storage.join(run_dir, name))
            removed.append(name)
    if removed:
        print(f"removed {len(removed)} checkpoint(s) a failed attempt left uncommitted: {', '.join(removed)}",
              file=sys.__stdout__, flush=True)
    return removed


def committed_history(checkpoint: Any) -> list[dict[str, float]]:
    """The metric history saved in a (committed) Ray Train checkpoint, read from its storage."""
    import posixpath

    from atomray.checkpoint import STATE_FILE

    with checkpoint.filesystem.open_input_stream(posixpath.join(checkpoint.path, STATE_FILE)) as fh:
        return json.loads(fh.read())["history"]


def record_epochs(epochs: int, mlflow_uri: str = "", mlflow_run_id: str = "", commit_marker: str = ""):
    """An `EpochRecorder` (a Ray Train `UserCallback`, built here so that `ray.train` is
    imported only where a run starts). With `commit_marker`, it writes there the last committed
    epoch (what fault injection waits for)."""
    from ray.train import UserCallback

    class EpochRecorder(UserCallback):
        """Runs on the Ray Train controller, after Ray Train has committed a report's checkpoint:
        prints the epoch line and logs to MLflow every row of the committed checkpoint's history
        not logged yet. An epoch a dead attempt reported but never committed is never recorded;
        the epoch it re-runs is recorded once, with the values of the checkpoint that stays."""

        def __init__(self) -> None:
            self.logged: set[int] | None = None

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None:
                return
            history = committed_history(checkpoint)
            print(progress_line(history[-1], epochs), flush=True)
            if commit_marker:
                storage.write_text(commit_marker, str(int(history[-1]["epoch"])))
            if not mlflow_run_id:
                return
            from atomray import tracking

            try:
                c = tracking.client(mlflow_uri)
                if self.logged is None:
                    self.logged = tracking.logged_steps(c, mlflow_run_id, "val_s2t")
                self.logged = tracking.log_epochs(c, mlflow_run_id, history, self.logged)
            except Exception as err:  # MLflow unreachable: the driver logs what is missing at the end
                print(f"warning: MLflow logging of epoch {int(history[-1]['epoch']) + 1} failed ({err}); "
                      f"it is logged when the run ends", flush=True)

    return EpochRecorder()


def fit(cfg: RunConfig, split: Split, dataset: Any, total_starts: int, run_dir: str,
        mlflow_uri: str = "", mlflow_run_id: str = "", eval_sets: list | None = None,
        callbacks: list | None = None, elements: list[int] | None = None):
    """Run the TorchTrainer for `cfg` and return Ray Train's `Result`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.cpus_per_worker == 0:
        # A worker that reserves no CPU (it shares its node's cores with Ray Data) still
        # needs a non-empty placement bundle: reserve a little memory instead.
        resources["memory"] = 256 * 1024**2
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    log_level = os.environ.get("ATOMRAY_LOG_LEVEL", "INFO")  # set by atomray.train.pretrain.quiet_logs
    faults = read_faults()
    commit_marker = storage.join(run_dir, COMMIT_MARKER) if commit_marker_needed(faults) else ""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run": to_dict(cfg),
            "split": split.to_dict(),
            "total_starts": total_starts,
            "run_dir": run_dir,
            "mlflow_uri": mlflow_uri,
            "mlflow_run_id": mlflow_run_id,
            "eval_sets": [e.to_dict() for e in eval_sets or []],
            "elements": list(elements or []),
            "log_level": log_level,
            "faults": faults,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers,
                                               use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources,
                                               placement_strategy=cfg.scaling.placement_strategy),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="val_s2s",
                                                         checkpoint_score_order="min"),
            callbacks=[record_epochs(cfg.train.epochs, mlflow_uri, mlflow_run_id, commit_marker), *(callbacks or [])],
            # Ray Train's own INFO lines (every report, every checkpoint) only when asked for.
            logging_config=ray.train.LoggingConfig(log_level=log_level),
        ),
        datasets={"train": dataset} if dataset is not None else None,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]) if dataset is not None else None,
    )
    return trainer.fit()
