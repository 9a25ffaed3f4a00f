"""Rigid-body motion: what x0, v0 and the masses predict about an isolated molecule, with no learning.

An isolated molecule (vacuum MD) moves as a rigid body plus internal vibrations. Four
extrapolations of its initial state to a lag Δt serve as floors every model must beat
(docs/physics-floors.md) and as the rigid part of the prior a model corrects
(`ModelConfig.prior`, `atomray.priors.compose`):

    no_motion   x(Δt) = x0
    linear      x(Δt) = x0 + v0 Δt                                   (exact for free particles)
    rigid       x(Δt) = c + u Δt + exp([ω]× Δt) (x0 − c)             (exact for a rigid body
                                                                      spinning about a principal axis)
    rotor       x(Δt) = c + u Δt + R(Δt) (x0 − c)                    (exact for any rigid body)

with c, u the centre of mass and its velocity, L = Σ m (x − c) × (v − u) the angular momentum
about c, I = Σ m (|r|² 𝟙 − r rᵀ) the inertia tensor and ω = I⁻¹ L. `rigid` keeps ω constant
and applies exp([ω]× Δt) exactly (Rodrigues' formula). But a free body conserves L, not ω:
unless it spins about a principal axis, ω precesses as the body turns (Euler's equations; a
benzene ring at 300 K is off by more than its whole vibrational amplitude after 1 ps).
`rotor` integrates the torque-free motion, dR/dt = [ω(t)]× R with ω(t) = R I⁻¹ Rᵀ L (I the
inertia tensor at Δt = 0), by classical RK4 on the unit quaternion of R (4th order; steps of at
most 0.2 rad keep positions within 1e-5 Å of an independent DOP853 solution after 1.5 ps, far
below any vibration). Linear or single-atom bodies have a singular I: ω is then the
pseudo-inverse solution (no spin about the molecular axis).

The rigid motion may come from more atoms than are extrapolated: `rigid(x0, v0, mass, lags,
context=(x, v, m))` takes c, u, ω from the atoms (x0, v0, mass) plus the context atoms (e.g. the
hydrogens when only heavy atoms are predicted) and moves the atoms of x0 with it. Atoms of mass
0 (padding) take no part in c, u, ω.

Every function is vectorised over a batch of B states and P lags, works in any float dtype
(the rigid motion is solved in float64), and is SE(3)- and permutation-equivariant: rotating
and translating x0 (and rotating v0) rotates and translates the output. Shapes: x0, v0
(B, N, 3) Å and Å/fs; mass (B, N) u; lags (B, P) fs; output (B, P, N, 3) Å. The rotor's
number of RK4 steps depends on the data (the fastest spin in the batch), so it runs in the
data path (`atomray.priors.paths`), never inside a model's forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ROTOR_STEP_RAD = 0.2  # largest rotation per RK4 step of `rotor`
ROTOR_MAX_STEPS = 4096


def no_motion(x0: Tensor, lags: Tensor) -> Tensor:
    """(B, P, N, 3): x0 at every lag."""
    return x0[:, None].expand(x0.shape[0], lags.shape[1], *x0.shape[1:])


def linear(x0: Tensor, v0: Tensor, lags: Tensor) -> Tensor:
    """(B, P, N, 3): x0 + v0 Δt."""
    return x0[:, None] + v0[:, None] * lags.to(x0.dtype)[:, :, None, None]


def rigid_motion(x: Tensor, v: Tensor, mass: Tensor, rtol: float = 1e-9) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Centre of mass c (B, 3), its velocity u (B, 3), angular velocity ω = I⁻¹L (B, 3) rad/fs,
    angular momentum L (B, 3) and the pseudo-inverse inertia tensor I⁻¹ (B, 3, 3), in float64.
    Principal moments below `rtol` × the largest are treated as zero (pseudo-inverse)."""
    x, v, m = x.double(), v.double(), mass.double()[..., None]  # (B, N, 1)
    total = m.sum(1).clamp_min(1e-300)  # (B, 1)
    c = (m * x).sum(1) / total  # (B, 3)
    u = (m * v).sum(1) / total
    r, w = x - c[:, None], v - u[:, None]  # (B, N, 3) relative position, velocity
    ang = (m * torch.linalg.cross(r, w, dim=-1)).sum(1)  # (B, 3) angular momentum L
    r2 = (m * r * r).sum((1, 2))  # (B,) Σ m |r|²
    inertia = r2[:, None, None] * torch.eye(3, dtype=r.dtype, device=r.device) - torch.einsum("bn,bni,bnj->bij", m[..., 0], r, r)
    lam, vec = torch.linalg.eigh(inertia)  # ascending principal moments, (B, 3), (B, 3, 3)
    keep = lam > rtol * lam[:, -1:].clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    inertia_inv = torch.einsum("bij,bj,bkj->bik", vec, inv, vec)  # V diag(1/λ) Vᵀ
    return c, u, (inertia_inv @ ang[..., None])[..., 0], ang, inertia_inv


def rigid_velocity(x: Tensor, c: Tensor, u: Tensor, omega: Tensor) -> Tensor:
    """(B, N, 3) float64 u + ω × (x − c): the velocity of each atom moving with the rigid body
    of centre c (B, 3), centre velocity u (B, 3) and angular velocity ω (B, 3)."""
    r = x.double() - c[:, None]
    return u[:, None] + torch.linalg.cross(omega[:, None].expand_as(r), r, dim=-1)


def internal_dof(mass: Tensor, inertia_inv: Tensor) -> np.ndarray:
    """(B,) the internal degrees of freedom of each molecule, f = 3N − 3 − rank(I) (3N − 6; 3N − 5
    for a linear molecule; at least 0), N its atoms of mass > 0 and I⁻¹ (B, 3, 3) from
    `rigid_motion`: the motion a thermostat holds and a kinetic temperature is counted over."""
    rank = np.linalg.matrix_rank(inertia_inv.detach().cpu().numpy(), hermitian=True)  # 3, or 2 if linear
    return np.maximum(3 * (mass > 0).sum(-1).cpu().numpy() - 3 - rank, 0)


def internal_velocity(x: Tensor, v: Tensor, mass: Tensor) -> Tensor:
    """(B, N, 3) float64 v − (u + ω × (x − c)): each atom's velocity relative to the rigid-body
    motion of `rigid_motion` (0 at atoms of mass 0). Equivariant."""
    c, u, omega, _, _ = rigid_motion(x, v, mass)
    return (v.double() - rigid_velocity(x, c, u, omega)) * (mass > 0)[..., None]


def prior_velocity(x0: Tensor, v0: Tensor, mass: Tensor, rot: Tensor, kind: str,
                   shift: Tensor | None = None) -> Tensor:
    """(B, P, N, 3) float64 velocities of the atoms of x0 moving with a rigid-body prior, at the
    lags whose orientations R(Δt) are `rot` (B, P, 3, 3): u + ω(Δt) × R(Δt)(x0 − c + shift), with
    ω(Δt) = R I⁻¹ Rᵀ L for the torque-free `rotor` (L conserved) and ω(Δt) = ω₀ for `rigid`
    (constant ω); `shift` (B, P, N, 3), in x0's frame, moves each atom within the body (the
    harmonic prior's internal displacement). The time derivative of `rotor` / `rigid` positions;
    c, u, L, I from the atoms of x0 (mass 0: padding, velocity 0)."""
    if kind not in ("rigid", "rotor"):
        raise ValueError(f"prior_velocity: kind must be 'rigid' or 'rotor', found {kind!r}")
    c, u, omega, ang, inertia_inv = rigid_motion(x0, v0, mass)
    r = rot.double()
    if kind == "rotor":  # ω(t) = R I⁻¹ Rᵀ L, as row vectors: ((L R) I⁻¹) Rᵀ
        body = torch.einsum("bi,bpij->bpj", ang, r)  # Rᵀ L
        omega_t = torch.einsum("bpj,bkj,bpik->bpi", body, inertia_inv, r)  # R I⁻¹ Rᵀ L
    else:
        omega_t = omega[:, None].expand(-1, r.shape[1], -1)
    body = (x0.double() - c[:, None])[:, None] + (0.0 if shift is None else shift.double())  # (B, P, N, 3)
    arm = torch.einsum("bpnj,bpij->bpni", body, r)  # R (x0 − c + shift)
    vel = u[:, None, None] + torch.linalg.cross(omega_t[:, :, None].expand_as(arm), arm, dim=-1)
    return vel * (mass > 0)[:, None, :, None]


def rotate(r: Tensor, theta: Tensor) -> Tensor:
    """Rotate vectors r (B, P, N, 3) by the rotation vectors θ (B, P, 3) (axis θ/|θ|, angle |θ|):
    r cos a + (θ × r) sin(a)/a + θ (θ·r)(1 − cos a)/a², a = |θ| (series near a = 0)."""
    a2 = (theta * theta).sum(-1, keepdim=True)  # (B, P, 1)
    a = a2.sqrt()
    small = a < 1e-4
    safe = torch.where(small, torch.ones_like(a), a)
    sinc = torch.where(small, 1 - a2 / 6, torch.sin(safe) / safe)
    cosc = torch.where(small, 0.5 - a2 / 24, (1 - torch.cos(safe)) / (safe * safe))
    th = theta[:, :, None]  # (B, P, 1, 3)
    cross = torch.linalg.cross(th.expand_as(r), r, dim=-1)
    dot = (th * r).sum(-1, keepdim=True)
    return r * torch.cos(a)[..., None] + cross * sinc[..., None] + th * dot * cosc[..., None]


def _with_context(x0: Tensor, v0: Tensor, mass: Tensor,
                  context: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    if context is None or not context[0].shape[1]:
        return x0, v0, mass
    return tuple(torch.cat((a, b.to(a.dtype)), dim=1) for a, b in zip((x0, v0, mass), context))


def rigid(x0: Tensor, v0: Tensor, mass: Tensor, lags: Tensor,
          context: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """(B, P, N, 3): the atoms of x0 carried along by the molecule's rigid motion at constant ω
    (see module docstring); `context` = (x, v, mass) of further atoms (B, M, 3), (B, M, 3),
    (B, M) that take part in c, u and ω but are not returned."""
    c, u, omega, _, _ = rigid_motion(*_with_context(x0, v0, mass, context))
    t = lags.double()[:, :, None]  # (B, P, 1)
    r = (x0.double() - c[:, None])[:, None].expand(-1, t.shape[1], -1, -1)  # (B, P, N, 3)
    out = c[:, None, None] + (u[:, None] * t)[:, :, None] + rotate(r, omega[:, None] * t)
    return out.to(x0.dtype)


def quaternion_matrix(q: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """(…, 3, 3) rotation matrices of unit quaternions q = (w, x, y, z) (…, 4), torch or NumPy."""
    stack = torch.stack if isinstance(q, Tensor) else np.stack
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return stack((
        stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), -1),
        stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), -1),
        stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1),
    ), -2)


def rotor_rotations(ang: Tensor, inertia_inv: Tensor, lags: Tensor) -> Tensor:
    """(B, P, 3, 3) orientations R(Δt) of torque-free rigid bodies (R(0) = 𝟙): L (B, 3) conserved,
    ω(t) = R I⁻¹ Rᵀ L, integrated by RK4 on the unit quaternion q of R in float64 with equal
    steps per lag, as many as keep every step below ROTOR_STEP_RAD (at most ROTOR_MAX_STEPS).
    In the body frame (the lab frame at Δt = 0) ω_b = I⁻¹ (q̄ L q) and q̇ = ½ q ⊗ (0, ω_b).
    Computed in NumPy on the host (`rotor_quaternions`): it runs in the data path, on tiny
    arrays, where the cost is per operation."""
    ell = ang.detach().double().cpu().numpy()  # (B, 3)
    iinv = inertia_inv.detach().double().cpu().numpy()  # (B, 3, 3)
    t = lags.detach().double().cpu().numpy()  # (B, P)
    q = rotor_quaternions(ell, iinv, t)
    return torch.from_numpy(quaternion_matrix(q)).to(lags.device)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross products of (M, 3) arrays (cheaper than np.cross on small arrays)."""
    return np.stack((a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1], a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2],
                     a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]), -1)


def rotor_quaternions(ell: np.ndarray, inertia_inv: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """(B, P, 4) unit quaternions (w, x, y, z) of `rotor_rotations` (NumPy float64): L (B, 3),
    I⁻¹ (B, 3, 3), lags (B, P) fs. The body-frame form needs ~15 array operations per rate
    evaluation (the lab-frame form, through the rotation matrix, ~35): 12 → 4 ms for 32
    windows of 8 lags and 15 steps on one core."""
    b, p = lags.shape
    bound = np.linalg.norm(ell, axis=-1) * np.linalg.norm(inertia_inv, ord=2, axis=(-2, -1))  # |ω| ≤ |L| ‖I⁻¹‖₂
    angle = float((bound[:, None] * np.abs(lags)).max()) if lags.size else 0.0
    steps = int(min(ROTOR_MAX_STEPS, max(1, -(-angle // ROTOR_STEP_RAD))))
    h = (lags / steps).reshape(-1, 1)  # (B·P, 1)
    el = np.repeat(ell, p, 0)  # (B·P, 3)
    ii = np.repeat(inertia_inv, p, 0)  # (B·P, 3, 3)

    def rate(q: np.ndarray) -> np.ndarray:
        w, u = q[:, :1], q[:, 1:]
        c1 = _cross(u, el)
        body = el - 2 * w * c1 + 2 * _cross(u, c1)  # L in the body frame: q̄ L q
        wb = np.einsum("nij,nj->ni", ii, body)  # ω_b = I⁻¹ L_b
        out = np.empty_like(q)
        out[:, 0] = -(u * wb).sum(-1)
        out[:, 1:] = w * wb + _cross(u, wb)
        return 0.5 * out  # ½ q ⊗ (0, ω_b)

    q = np.zeros((b * p, 4))
    q[:, 0] = 1.0
    for _ in range(steps):
        k1 = rate(q)
        k2 = rate(q + 0.5 * h * k1)
        k3 = rate(q + 0.5 * h * k2)
        k4 = rate(q + h * k3)
        q = q + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        q /= np.sqrt((q * q).sum(-1, keepdims=True))
    return q.reshape(b, p, 4)


def rotor_motion(x0: Tensor, v0: Tensor, mass: Tensor, lags: Tensor,
                 context: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The torque-free rigid-body motion told by (x0, v0, mass) and the context atoms, in float64:
    centre of mass c (B, 3), its velocity u (B, 3), orientations R(Δt) (B, P, 3, 3)."""
    c, u, _, ang, inertia_inv = rigid_motion(*_with_context(x0, v0, mass, context))
    return c, u, rotor_rotations(ang, inertia_inv, lags)


def carry(x0: Tensor, c: Tensor, u: Tensor, rot: Tensor, lags: Tensor) -> Tensor:
    """(B, P, N, 3) = c + u Δt + R(Δt)(x0 − c): points moved with a rigid motion (float64 in,
    x0's dtype out)."""
    r = x0.double() - c[:, None]  # (B, N, 3)
    out = c[:, None, None] + (u[:, None] * lags.double()[..., None])[:, :, None] + torch.einsum("bpij,bnj->bpni", rot, r)
    return out.to(x0.dtype)


def rotor(x0: Tensor, v0: Tensor, mass: Tensor, lags: Tensor,
          context: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """(B, P, N, 3): the atoms of x0 carried along by the molecule's torque-free rigid-body
    motion (see module docstring); `context` as for `rigid`."""
    c, u, rot = rotor_motion(x0, v0, mass, lags, context)
    return carry(x0, c, u, rot, lags)


# ---------------------------------------------------------------------------------------------
# superposition (diagnostics: how much of an error a rigid motion could remove)


def kabsch(p: Tensor, q: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The proper rotation R (…, 3, 3) and centroids cp, cq (…, 1, 3) that best fit p onto q
    (…, N, 3) in the weighted least-squares sense, atom weights (…, N) ≥ 0 (0 for padding):
    p's fit is (p − cp) Rᵀ + cq. Batched over any leading dimensions."""
    w = weight[..., None] / weight.sum(-1, keepdim=True)[..., None].clamp_min(1e-12)
    cp, cq = (p * w).sum(-2, keepdim=True), (q * w).sum(-2, keepdim=True)
    h = ((p - cp) * w).transpose(-1, -2) @ (q - cq)  # (…, 3, 3)
    u, _, vt = torch.linalg.svd(h)
    sign = torch.sign(torch.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    flip = torch.diag_embed(torch.stack((torch.ones_like(sign), torch.ones_like(sign), sign), -1))
    return vt.transpose(-1, -2) @ flip @ u.transpose(-1, -2), cp, cq  # proper: det = +1


def superpose(p: Tensor, q: Tensor, weight: Tensor) -> Tensor:
    """p (…, N, 3) moved by the proper rotation and translation that best fit it onto q
    (…, N, 3) in the weighted least-squares sense (`kabsch`), atom weights (…, N) ≥ 0 (0 for
    padding). Batched over any leading dimensions."""
    rot, cp, cq = kabsch(p, q, weight)
    return (p - cp) @ rot.transpose(-1, -2) + cq


def procrustes_mean(x: Tensor, weight: Tensor, iterations: int = 5) -> Tensor:
    """(N, 3) average shape of the structures x (W, N, 3) of one molecule: each superposed on the
    running mean (weights (W, N)), then averaged; starts from x[0]."""
    ref = x[0]
    for _ in range(iterations):
        ref = superpose(x, ref.expand_as(x), weight).mean(0)
    return ref


def kabsch_np(p: np.ndarray, q: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`kabsch` in NumPy float64: (R (…, 3, 3), cp, cq (…, 1, 3)) with p's fit (p − cp) Rᵀ + cq.
    For the host-side basin matching, where a torch call per small array costs more than the math."""
    w = weight[..., None] / np.maximum(weight.sum(-1, keepdims=True)[..., None], 1e-12)
    cp, cq = (p * w).sum(-2, keepdims=True), (q * w).sum(-2, keepdims=True)
    h = np.swapaxes((p - cp) * w, -1, -2) @ (q - cq)  # (…, 3, 3)
    u, _, vt = np.linalg.svd(h)
    v, ut = np.swapaxes(vt, -1, -2), np.swapaxes(u, -1, -2)
    sign = np.sign(np.linalg.det(v @ ut))
    sign = np.where(sign == 0, 1.0, sign)
    flip = np.ones(sign.shape + (3,))
    flip[..., 2] = sign
    return (v * flip[..., None, :]) @ ut, cp, cq


def rotated(r: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Vectors r (K, 3) turned by angle_rad about `axis` (3,) (right-handed, Rodrigues)."""
    axis = axis / np.linalg.norm(axis)
    along = (r @ axis)[:, None] * axis
    return along + np.cos(angle_rad) * (r - along) + np.sin(angle_rad) * np.cross(axis, r)
