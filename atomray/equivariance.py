"""Symmetry diagnostics of an operator: its equivariance error against its numerical noise floor,
frame averaging, and the paper's quasi-equivariance ε (App. E.3) and rotation penalty (Table 4).
MD-ET and TransIP report the same pair of numbers. Re-exported by `atomray.evaluate`.

    rotations = rotation_set(16, torch.Generator().manual_seed(0), reflections=False)
    err = equivariance_error(model, windows, rotations)                      # float32
    err16 = equivariance_error(model, windows, rotations, autocast=torch.bfloat16)
    floor = noise_floor(model, windows, rotations)                           # same precision
    averaged = frame_average(model)          # PCA frames; frame_average(model, k=64) for K rotations

The error. For a window x (the real atoms of x0, v0), a rotation R about the centroid c of x0
and the prediction f(x) (P, N, 3):

    e(x, R) = ‖f(R·x) − R·f(x)‖ / ‖f(x) − c‖,      R·y = (y − c) Rᵀ + c,  v ↦ v Rᵀ

norms over the P frames, the real atoms and xyz. The denominator is the size of the
prediction about the centroid, so e is relative to the molecule's extent (dimensionless, not
Å) and comparable across molecules; an exactly equivariant model gives e = 0 up to round-off.
This differs from `quasi_equivariance_epsilon`, the paper's ε (App. E.3, Å):
that averages the deviation over rotations before taking its norm. The rotations and norms are
computed in float64 outside the model; the model sees its inputs in its own parameter dtype,
optionally under autocast (bf16), so e measures the model in the precision it runs in. A
window's prior paths (`atomray.priors.paths`) turn with it (`atomray.data.augment.rotate_batch`),
exactly as the data path would compute them for the rotated window.

The noise floor is e of an exactly equivariant model in the same precision: what round-off
alone costs. `noise_floor` measures it on the model's own weights made exactly equivariant —
ATOM with `lifting=canonical` (App. D.1: the same network run in the canonical frame of the
molecule, an SE(3)-equivariant operator, identical parameter shapes) — or on EGNO / EGNN,
which are exactly E(3)-equivariant by construction. A quasi-equivariant model is as good as
exact when its e is within a small factor of this floor.

Frame averaging (Puny et al., "Frame averaging for invariant and equivariant network design",
ICLR 2022): f̄(x) = 1/|F| Σ_{g ∈ F(x)} g · f(g⁻¹ · x). Over K random rotations this only
averages errors down like 1/√K (the rotations are not a group, so f̄ stays approximately
equivariant). Over the PCA frames of x — the eigenvectors (e₁, e₂, e₃) of the covariance of
the real atoms' positions with every sign choice, 4 proper frames for SO(3) or 8 for O(3)
(the finite group of the canonical frame's sign ambiguities) — the frame set turns with the
molecule, F(R·x) = R·F(x), so f̄ is exactly equivariant for any f whenever the three
covariance eigenvalues are distinct (linear or highly symmetric molecules are not).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from atomray.data.augment import random_rotation, random_rotations, rotate_batch
from atomray.metrics import reduce_samples, s2t
from atomray.model.registry import MODEL_INPUTS, model_inputs
from atomray.priors.compose import PATH_KEYS

EXACT_MODELS = ("egno", "egnn_r", "egnn_s")  # E(3)-equivariant by construction
_BATCH_KEYS = (*MODEL_INPUTS, "target", "rwpe", *PATH_KEYS)


def _inputs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Tensor]:
    """The batch's model inputs, target and prior paths as tensors on the model's device."""
    missing = [k for k in (*MODEL_INPUTS, "target") if k not in batch]
    if missing:
        raise KeyError(f"equivariance: batch is missing {missing} (has {sorted(batch)})")
    device = next(model.parameters()).device
    out = {k: torch.as_tensor(batch[k], device=device) for k in _BATCH_KEYS if batch.get(k) is not None}
    out["mask"] = out["mask"].bool()
    return out


def _predict(model: nn.Module, b: Mapping[str, Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """The model's prediction on batch b, its floating inputs cast to `dtype` first."""
    if dtype is not None:
        b = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in b.items()}
    return model(**model_inputs(b))


class _EvalMode:
    """Context: model.eval() and no_grad, restoring the training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


@dataclass(frozen=True)
class EquivarianceError:
    """Relative equivariance errors e (see the module docstring): `errors` (W, R) per window
    and rotation, their `mean` and `max`, and the `precision` they were measured in."""

    mean: float
    max: float
    errors: np.ndarray
    precision: str


def rotation_set(n: int, generator: torch.Generator | None = None, reflections: bool = False) -> Tensor:
    """(n, 3, 3) Haar-random proper rotations (float64), followed with `reflections` by n more
    improper ones (det −1: −R of fresh rotations R), drawn from `generator` on the CPU."""
    if n < 1:
        raise ValueError(f"rotation_set: n must be at least 1, found {n}")
    out = random_rotations(n, generator, torch.float64)
    if reflections:
        out = torch.cat((out, -random_rotations(n, generator, torch.float64)))
    return out


def _rotations(rotations: Any) -> Tensor:
    r = torch.as_tensor(np.asarray(rotations) if isinstance(rotations, (list, tuple)) else rotations,
                        dtype=torch.float64).cpu()
    r = r[None] if r.dim() == 2 else r
    if r.dim() != 3 or r.shape[1:] != (3, 3) or len(r) == 0:
        raise ValueError(f"rotations must be (R, 3, 3) orthogonal matrices, found shape {tuple(r.shape)}")
    gap = (r @ r.transpose(1, 2) - torch.eye(3, dtype=torch.float64)).abs().max()
    if gap > 1e-6:
        raise ValueError(f"rotations must be orthogonal (R Rᵀ = 1), found |R Rᵀ − 1| up to {float(gap):.2g}")
    return r


def _dtype(model: nn.Module) -> torch.dtype:
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def _precision(model: nn.Module, autocast: torch.dtype | None) -> str:
    own = str(_dtype(model)).replace("torch.", "")
    return own if autocast is None else f"{str(autocast).replace('torch.', '')} autocast ({own} weights)"


def equivariance_error(model: nn.Module, windows: Mapping[str, Any], rotations: Any,
                       autocast: torch.dtype | None = None, batch_size: int = 256) -> EquivarianceError:
    """Relative equivariance error of `model` on a padded window batch (keys x0, v0, z, lags_fs,
    mask, target, optional rwpe; numpy or torch) over `rotations` (R, 3, 3) (proper, or
    improper to test reflections): e(x, R) for every window and rotation, in the model's
    parameter dtype, or under `torch.autocast` to `autocast` (e.g. torch.bfloat16) on the
    model's device. The model is put in eval mode for the measurement (no dropout)."""
    rots = _rotations(rotations)
    dtype = _dtype(model)
    n = len(windows["x0"])
    errors = np.zeros((n, len(rots)))
    with _EvalMode(model):
        for s in range(0, n, batch_size):
            part = {k: windows[k][s : s + batch_size] for k in _BATCH_KEYS if windows.get(k) is not None}
            errors[s : s + batch_size] = _batch_errors(model, _inputs(model, part), rots, dtype, autocast)
    return EquivarianceError(float(errors.mean()), float(errors.max()), errors, _precision(model, autocast))


def _batch_errors(model: nn.Module, b: Mapping[str, Any], rots: Tensor, dtype: torch.dtype,
                  autocast: torch.dtype | None) -> np.ndarray:
    b = {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}
    x0 = b["x0"]
    m = b["mask"].double()[..., None]  # (B, N, 1)
    c = (x0 * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, 3)
    m4, c4 = m[:, None], c[:, None]  # (B, 1, N, 1), (B, 1, 1, 3)
    amp = torch.autocast(x0.device.type, dtype=autocast) if autocast is not None else nullcontext()
    with amp:
        base = _predict(model, b, dtype).double() - c4  # (B, P, N, 3) about c
    size = (base**2 * m4).sum((1, 2, 3)).sqrt()  # (B,)
    out = torch.zeros(len(x0), len(rots), dtype=torch.float64, device=x0.device)
    for k, r in enumerate(rots.to(x0.device)):
        with amp:
            turned = _predict(model, rotate_batch(b, r), dtype).double() - c4
        out[:, k] = ((turned - base @ r.T) ** 2 * m4).sum((1, 2, 3)).sqrt() / size.clamp_min(1e-300)
    return out.cpu().numpy()


def exact_twin(model: nn.Module) -> nn.Module:
    """The exactly equivariant model whose error is `model`'s noise floor: ATOM with its own
    weights in the canonical frame (`lifting=canonical`), the model itself when it is already
    exact (canonical ATOM, EGNO, EGNN-R/S); the wrapped model's twin for a FrameAveraged one."""
    from atomray.model import ATOM

    if isinstance(model, FrameAveraged):
        model = model.model
    cfg = getattr(model, "cfg", None)
    if isinstance(model, ATOM):
        if cfg.lifting == "canonical":
            return model
        if cfg.lifting != "equivariant":
            raise ValueError(f"noise_floor: ATOM with lifting={cfg.lifting!r} has no canonical twin with the same "
                             f"weights (only lifting=equivariant does); pass reference= an exactly equivariant model")
        twin = ATOM(replace(cfg, lifting="canonical"), model.num_lags, model.rwpe_dim)
        twin.load_state_dict(model.state_dict(), strict=True)
        p = next(model.parameters())
        return twin.to(device=p.device, dtype=p.dtype).train(model.training)
    if cfg is not None and getattr(cfg, "name", None) in EXACT_MODELS:
        return model
    raise ValueError(f"noise_floor: no exactly equivariant twin known for {type(model).__name__}; "
                     f"pass reference= an exactly equivariant model (canonical ATOM or EGNO)")


def noise_floor(model: nn.Module, windows: Mapping[str, Any], rotations: Any, autocast: torch.dtype | None = None,
                reference: nn.Module | None = None, batch_size: int = 256) -> EquivarianceError:
    """The equivariance error an exactly equivariant model shows in the same precision on the
    same windows and rotations: round-off alone (see the module docstring). `reference`
    defaults to `exact_twin(model)` (canonical-frame ATOM with the model's weights, or the
    EGNO / EGNN model itself). Note canonical ATOM is SE(3)-, not O(3)-equivariant: with
    reflections among the rotations its error is not a noise floor (EGNO's is)."""
    twin = reference if reference is not None else exact_twin(model)
    return equivariance_error(twin, windows, rotations, autocast, batch_size)


# ---------------------------------------------------------------------------------------------
# frame averaging

_PROPER = ((1, 1, 1), (-1, -1, 1), (-1, 1, -1), (1, -1, -1))
_IMPROPER = ((-1, 1, 1), (1, -1, 1), (1, 1, -1), (-1, -1, -1))


def pca_frames(x: Tensor, mask: Tensor, reflections: bool = False) -> Tensor:
    """(B, F, 3, 3) frames of positions x (B, N, 3) (real atoms: mask (B, N) True): the
    eigenvectors of their covariance (columns, largest first) with every sign choice, F = 4
    proper frames, or 8 with `reflections`; float64. The set turns with x: frames(x Rᵀ) =
    R · frames(x) as a set, for any orthogonal R, when the eigenvalues are distinct."""
    from atomray.model.canonical import canonical_frame

    q, _ = canonical_frame(x.double(), torch.zeros_like(x, dtype=torch.float64), mask)  # (B, 3, 3), det +1
    signs = torch.tensor(_PROPER + (_IMPROPER if reflections else ()), dtype=torch.float64, device=x.device)
    return q[:, None] * signs[None, :, None, :]  # (B, F, 3, 3): column k of frame f times sign f_k


class FrameAveraged(nn.Module):
    """A model averaged over frames, with the model's call signature:
    forward(x0, v0, z, lags_fs, mask, rwpe=None, paths=None, **extra) → (B, P, N, 3) in x0's dtype
    (the prior paths turn with each frame).

    f̄(x) = 1/K Σ_k g_k · f(g_k⁻¹ · x), g⁻¹ · x = (x − c) Q + c, v ↦ v Q, g · y = (y − c) Qᵀ + c,
    c the centroid of the real atoms. `rotations` (K, 3, 3) given: Q_k = R_kᵀ, the average of
    R⁻¹ f(R x) over those K rotations (approximately equivariant, error ~1/√K). `rotations`
    None: Q over the PCA frames of x (`pca_frames`, 4, or 8 with `reflections`): exactly
    equivariant up to round-off. Geometry is done in float64; the model sees x0's dtype and
    its own precision. K forward passes (one batch each) per call.
    """

    def __init__(self, model: nn.Module, rotations: Any = None, reflections: bool = False):
        super().__init__()
        self.model, self.reflections = model, reflections
        self.rotations = None if rotations is None else _rotations(rotations)  # not a buffer: stays float64
        for name in ("cfg", "num_lags", "rwpe_dim"):  # evaluation code reads these off a model
            if hasattr(model, name):
                setattr(self, name, getattr(model, name))

    def forward(self, x0: Tensor, v0: Tensor, z: Tensor, lags_fs: Tensor, mask: Tensor,
                rwpe: Tensor | None = None, paths: Mapping[str, Tensor] | None = None, **extra: Any) -> Tensor:
        x, v = x0.double(), v0.double()
        mask = mask.bool()
        paths = dict(paths or {})
        m = mask.double()[..., None]  # (B, N, 1)
        c = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)  # (B, 1, 3)
        if self.rotations is None:
            frames = pca_frames(x, mask, self.reflections)  # (B, F, 3, 3)
        else:
            frames = self.rotations.to(x.device).transpose(1, 2)[None].expand(len(x), -1, 3, 3)  # Q_k = R_kᵀ
        acc = torch.zeros(x.shape[0], lags_fs.shape[1], x.shape[1], 3, dtype=torch.float64, device=x.device)
        for k in range(frames.shape[1]):
            q = frames[:, k]  # (B, 3, 3): g⁻¹ · x = (x − c) Q + c, a turn by Qᵀ
            turned = rotate_batch({"x0": x, "v0": v, "mask": mask, **paths}, q.transpose(1, 2))
            turned = {key: (t.to(x0.dtype) if t.is_floating_point() and key not in ("x0", "v0") else t)
                      for key, t in turned.items()}
            y = self.model(turned["x0"].to(x0.dtype), turned["v0"].to(v0.dtype), z, lags_fs, mask, rwpe,
                           {key: turned[key] for key in paths}, **extra).double()
            acc += (y - c[:, None]) @ q.transpose(1, 2)[:, None] + c[:, None]  # (B, P, N, 3)
        return (acc / frames.shape[1] * m[:, None]).to(x0.dtype)


def frame_average(model: nn.Module, k: int | None = None, generator: torch.Generator | None = None,
                  reflections: bool = False) -> FrameAveraged:
    """`model` averaged over the PCA frames of each input (k None: exact, 4 or 8 passes) or over
    k Haar-random rotations drawn from `generator` (2k with `reflections`: k proper + k improper)."""
    if k is None:
        return FrameAveraged(model, None, reflections)
    return FrameAveraged(model, rotation_set(k, generator, reflections))


# ---------------------------------------------------------------------------------------------
# the paper's quasi-equivariance ε and rotation penalty


def quasi_equivariance_epsilon(model: nn.Module, batch: Mapping[str, Any], n_rotations: int = 20,
                               generator: torch.Generator | None = None, reduction: str = "mean") -> Tensor:
    """Monte-Carlo ε of App. E.3 (Å): for every sample x_n of the batch and R random rotations g,

        ε ≈ 1/N Σ_n ‖ 1/R Σ_r ( f(g·x_n) − g·f(x_n) ) ‖₂

    where g rotates x0 and v0 about the origin (the centroid of a centred batch) and the norm
    runs over the P frames, real atoms and xyz. 0 for an exactly rotation-equivariant model.
    reduction "none" returns the (B,) per-sample values (for mean ± 2 SD as in Table 14).
    """
    if n_rotations < 1:
        raise ValueError(f"quasi_equivariance_epsilon: n_rotations must be >= 1, found {n_rotations}")
    b = _inputs(model, batch)
    x0 = b["x0"]
    m = b["mask"].to(x0.dtype)[:, None, :, None]
    with _EvalMode(model):
        base = _predict(model, b)  # (B, P, N, 3)
        acc = torch.zeros_like(base)
        for _ in range(n_rotations):  # one forward per rotation keeps memory at one batch
            r = random_rotation(generator, x0.dtype).to(x0.device)
            acc += _predict(model, rotate_batch(b, r, about="origin")) - base @ r.T
    per_sample = ((acc / n_rotations) ** 2 * m).sum((1, 2, 3)).sqrt()  # (B,)
    return reduce_samples(per_sample, reduction)


def rotation_penalty(model: nn.Module, batch: Mapping[str, Any], rotation: Tensor) -> dict[str, float]:
    """Table 4: S2T (Å²) of the batch as given and with inputs and targets rotated by
    `rotation` (3, 3), their difference and ratio ("rotation penalty", ×)."""
    b = _inputs(model, batch)
    r = torch.as_tensor(rotation, dtype=b["x0"].dtype, device=b["x0"].device)
    with _EvalMode(model):
        plain = s2t(_predict(model, b), b["target"], b["mask"])
        turned_batch = rotate_batch(b, r, about="origin")
        turned = s2t(_predict(model, turned_batch), turned_batch["target"], b["mask"])
    plain, turned = float(plain), float(turned)
    return {"unrotated": plain, "rotated": turned, "increase": turned - plain,
            "ratio": turned / plain if plain > 0 else float("inf")}
