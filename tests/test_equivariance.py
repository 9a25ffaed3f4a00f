"""Equivariance against its noise floor and frame averaging (`atomray.equivariance`, re-exported
by `atomray.evaluate`; issue 13). Tiny models with random weights (the zero-initialised output
head lifted, so the trunk acts) and the x0 prior (the rotor prior is exact but ~40× slower).

Measured here (8 windows, 8 rotations, float32 weights; relative error e, mean):
canonical ATOM ≈ 4e-7, EGNO ≈ 1e-7, quasi-equivariant ATOM ≈ 1.3, the same averaged over K
random rotations ≈ 0.6 (K = 16), 0.3 (64), 0.1 (256) — the 1/√K of an average that is not over
a group — and over its 4 PCA frames ≈ 2e-7, at the floor. Under bf16 autocast the canonical
ATOM's floor rises to ≈ 7e-3 while EGNO's stays ≈ 1e-7 (its coordinates never pass a bf16
matmul), and the PCA-frame average stays ≈ 1e-7: it hands the network the same canonical
input for x and R·x, so the network's own round-off cancels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from model.symmetry import call, random_batch, randomise_parameters

from atomray import evaluate
from atomray.config import DataConfig, ModelConfig
from atomray.data.windows import cut_windows, pad_windows
from atomray.equivariance import (FrameAveraged, equivariance_error, exact_twin, frame_average, noise_floor,
                                  pca_frames, rotation_set)
from atomray.model import build_model

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=16, num_layers=1, num_heads=2, attn_dropout=0.0, gnn_hidden_dim=16, prior="x0",
                   relaxed_input=False, prior_input=False, lifting="equivariant", attention="heterogeneous")
P = 4


def make(dtype=torch.float32, rwpe_dim=0, **switches):
    return randomise_parameters(build_model(replace(TINY, **switches), P, rwpe_dim)).to(dtype).eval()


@pytest.fixture(scope="module")
def windows():
    """8 random molecules of 7 atoms (the first with 2 padding atoms), float32."""
    return random_batch(torch.Generator().manual_seed(0), b=8, n=7, p=P, dtype=torch.float32, pad=2)


@pytest.fixture(scope="module")
def rotations():
    return rotation_set(8, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def quasi():
    return make()


@pytest.fixture(scope="module")
def floor32(quasi, windows, rotations):
    return noise_floor(quasi, windows, rotations)


def test_exact_models_sit_at_float32_round_off(quasi, windows, rotations, floor32):
    assert floor32.errors.shape == (8, 8) and floor32.precision == "float32"
    assert floor32.max < 1e-5 and floor32.mean > 0  # round-off, not exactly zero
    egno = equivariance_error(make(name="egno"), windows, rotations)
    assert egno.max < 1e-5
    twin = exact_twin(quasi)  # the quasi-equivariant model's own weights in the canonical frame
    assert twin.cfg.lifting == "canonical" and twin is not quasi
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), quasi.state_dict().values()))
    assert exact_twin(twin) is twin
    np.testing.assert_array_equal(equivariance_error(twin, windows, rotations).errors, floor32.errors)


def test_exact_model_in_float64_sits_at_float64_round_off(windows, rotations):
    w64 = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in windows.items()}
    assert equivariance_error(make(torch.float64, lifting="canonical"), w64, rotations).max < 1e-12


def test_quasi_equivariant_atom_is_far_above_the_floor(quasi, windows, rotations, floor32):
    err = equivariance_error(quasi, windows, rotations)
    assert err.mean > 1e-2 and err.mean > 1e4 * floor32.mean
    assert err.max >= err.mean and err.errors.shape == (8, 8)
    assert not quasi.training  # eval mode restored as it was
    quasi.train()
    equivariance_error(quasi, windows, rotations[:1])
    assert quasi.training
    quasi.eval()


def test_frame_averaging_brings_quasi_equivariant_atom_to_the_float32_floor(quasi, windows, rotations, floor32):
    """Done-when of issue 13: within 10× the float32 noise floor (both of the canonical twin and
    of EGNO), by averaging over the 4 PCA frames of each molecule."""
    averaged = equivariance_error(frame_average(quasi), windows, rotations)
    assert averaged.mean <= 10 * floor32.mean and averaged.max <= 10 * floor32.max
    egno = equivariance_error(make(name="egno"), windows, rotations)
    assert averaged.mean <= 10 * egno.mean


def test_random_rotation_averaging_only_shrinks_like_one_over_root_k(quasi, windows, rotations, floor32):
    plain = equivariance_error(quasi, windows, rotations).mean
    e4 = equivariance_error(frame_average(quasi, 4, torch.Generator().manual_seed(2)), windows, rotations).mean
    e64 = equivariance_error(frame_average(quasi, 64, torch.Generator().manual_seed(2)), windows, rotations).mean
    assert e64 < 0.6 * e4 and e64 < 0.5 * plain  # 16× the passes: ~4× smaller
    assert e64 > 1e4 * floor32.mean  # but nowhere near the floor


def test_bf16_autocast(quasi, windows, rotations, floor32):
    bf16 = torch.bfloat16
    floor16 = noise_floor(quasi, windows, rotations, autocast=bf16)
    assert floor16.precision.startswith("bfloat16 autocast")
    assert 1e-4 < floor16.mean < 5e-2 and floor16.mean > 100 * floor32.mean  # bf16 round-off, 8 bits
    assert equivariance_error(quasi, windows, rotations, autocast=bf16).mean > 10 * floor16.mean
    averaged = equivariance_error(frame_average(quasi), windows, rotations, autocast=bf16)
    assert averaged.mean <= 10 * floor16.mean
    assert equivariance_error(make(name="egno"), windows, rotations, autocast=bf16).max < 1e-3


def test_reflections(quasi, windows):
    """Canonical ATOM is SE(3)- but not O(3)-equivariant; the 8 PCA frames give O(3)."""
    both = rotation_set(4, torch.Generator().manual_seed(3), reflections=True)
    assert both.shape == (8, 3, 3) and (torch.linalg.det(both[4:]) < 0).all()
    egno = equivariance_error(make(name="egno"), windows, both)
    assert egno.max < 1e-5
    assert noise_floor(quasi, windows, both).mean > 1e-2  # the canonical frame has a handedness
    assert noise_floor(quasi, windows, both, reference=make(name="egno")).max < 1e-5
    assert equivariance_error(frame_average(quasi, reflections=True), windows, both).mean <= 10 * egno.mean
    assert equivariance_error(frame_average(quasi), windows, both).mean > 1e-2  # 4 proper frames: SO(3) only


def test_frame_averaged_model_is_a_drop_in_model(windows):
    """Same call signature and attributes; averaging an exact model changes nothing; padding
    stays 0; extra keyword arguments reach the model."""
    egno = make(name="egno")
    for fa in (frame_average(egno), frame_average(egno, reflections=True)):
        torch.testing.assert_close(call(fa, windows), call(egno, windows), atol=1e-5, rtol=1e-5)
    canonical = make(lifting="canonical")
    fa = frame_average(canonical)
    assert (fa.cfg, fa.num_lags, fa.rwpe_dim) == (canonical.cfg, canonical.num_lags, canonical.rwpe_dim)
    pred = call(fa, windows, t0_fs=123.0)
    torch.testing.assert_close(pred, call(canonical, windows), atol=1e-5, rtol=1e-5)
    assert pred.dtype == torch.float32 and (pred[0, :, -2:] == 0).all()
    plain = {k: v for k, v in windows.items() if v is not None}
    errors = evaluate.model_errors(frame_average(make()), plain)  # keyword call of evaluation code
    assert errors.shape == (8, P) and np.isfinite(errors).all()
    assert not any(n.startswith("rotations") for n in frame_average(egno, 3).state_dict())  # weights only


def test_pca_frames_turn_with_the_molecule(windows):
    x, mask = windows["x0"].double(), windows["mask"]
    frames = pca_frames(x, mask, reflections=True)
    assert frames.shape == (8, 8, 3, 3)
    det = torch.linalg.det(frames)
    assert torch.allclose(det[:, :4], torch.ones(8, 4, dtype=torch.float64))
    assert torch.allclose(det[:, 4:], -torch.ones(8, 4, dtype=torch.float64))
    r = rotation_set(1, torch.Generator().manual_seed(4))[0]
    turned = pca_frames(x @ r.T, mask, reflections=True)
    expected = r @ frames  # as a set: match each turned frame to the nearest rotated frame
    gap = (turned[:, :, None] - expected[:, None]).abs().amax((-1, -2)).amin(-1)  # (B, F)
    assert gap.max() < 1e-9


def test_pipeline_windows(rotations):
    """Numpy windows cut from two trajectories of different sizes (cut_windows + pad_windows,
    with RWPE, masses and molecule ids) go straight in."""
    cfg = DataConfig(horizon="fixed", horizon_fs=40.0, num_lags=P, context_atoms="all", rwpe_k=3)
    rng = np.random.default_rng(0)
    groups = []
    for mid, n in (("a", 5), ("b", 7)):
        x = rng.normal(0, 1.0, (n, 3)) * [1.6, 1.1, 0.7]
        v = rng.normal(0, 0.01, (60, n, 3))
        pos = (x + np.cumsum(v, 0)).astype(np.float32)
        z = rng.integers(6, 9, n)
        groups.append(cut_windows(pos, v.astype(np.float32), z, 1.0, np.array([0, 10]),
                                  np.tile(np.arange(1, P + 1) * 10, (2, 1)), cfg, mid))
    w = pad_windows(groups)
    canonical = make(rwpe_dim=3, lifting="canonical")
    err = evaluate.equivariance_error(canonical, w, rotations, batch_size=3)  # re-exported; batches of 3
    assert err.errors.shape == (4, 8) and err.max < 1e-5
    assert evaluate.equivariance_error(make(rwpe_dim=3), w, rotations).mean > 1e-2


def test_errors_name_what_is_wrong(windows):
    with pytest.raises(ValueError, match="orthogonal"):
        equivariance_error(make(), windows, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match=r"\(R, 3, 3\)"):
        equivariance_error(make(), windows, torch.eye(4))
    with pytest.raises(ValueError, match="lifting='linear'"):
        noise_floor(make(lifting="linear"), windows, torch.eye(3))
    with pytest.raises(ValueError, match="at least 1"):
        rotation_set(0)
    assert isinstance(frame_average(make(), 2), FrameAveraged)


def test_evaluate_job_reports_equivariance_beside_its_noise_floor_and_frame_averages(tmp_path, capsys):
    """jobs/evaluate.py --equivariance R --frame-average pca: the error of the frame-averaged
    quasi-equivariant ATOM (weights perturbed off its zero-initialised correction) and its
    noise floor, in float32 and bf16."""
    import dataclasses

    from jobrun import ROOT, job_main

    from atomray.checkpoint import TrainState, save_checkpoint
    from atomray.config import load_config
    from atomray.model import build_model

    cfg = load_config(ROOT / "jobs" / "configs" / "tiny.yaml", [f"data.path={ROOT / 'data' / 'tg80-mini'}"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, prior="x0", relaxed_input=False,
                                                             prior_input=False, lifting="equivariant"))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_lags=cfg.data.num_lags, rwpe_dim=cfg.data.rwpe_k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, cfg, TrainState(elements=[1, 6, 7, 8]))
    args = ["--model", ckpt, "--data", ROOT / "data" / "tg80-mini", "--molecules", "aspirin", "--horizons-fs", 100,
            "--windows", 8, "--equivariance", 4, "--no-mlflow"]
    plain = job_main(capsys, "evaluate.py", *args, "--out", tmp_path / "plain").out
    averaged = job_main(capsys, "evaluate.py", *args, "--frame-average", "pca", "--out", tmp_path / "fa").out

    def ratios(text):
        lines = [line for line in text.splitlines() if line.startswith("equivariance error")]
        assert len(lines) == 2 and "(float32)" in lines[0] and "bfloat16 autocast" in lines[1], text[-2000:]
        return [float(line.rsplit("= ", 1)[1].rstrip("x")) for line in lines]

    assert ratios(plain)[0] > 1e3  # quasi-equivariant: far above round-off
    assert ratios(averaged)[0] < 10  # frame-averaged: within 10x the float32 noise floor
