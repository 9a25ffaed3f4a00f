"""ATOM must SEE geometry, not only ignore what symmetry says it should (issue: the trunk
could not see interatomic distances, and every symmetry test still passed).

- Radial rescaling: moving each atom along its own direction from the centroid by a
  different factor changes bond lengths, so it must change the prediction. (The old
  lifting RMS-normalised the position stream and kept only directions: the output changed by
  ~1e-6 Å.)
- Locality: trained on a chain of atoms joined by springs, where an atom's near future
  depends on its bonded neighbours only, moving one atom must change its neighbour's
  predicted motion much more than that of an atom at the far end of the chain.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from symmetry import call, random_batch, randomise_parameters

from atomray.config import ModelConfig
from atomray.model import build_model
from atomray.train.loss import trajectory_loss

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, prior="none", relaxed_input=False,
                   prior_input=False, lifting="equivariant", attention="heterogeneous")


def test_rescaling_distances_from_the_centroid_changes_the_prediction():
    g = torch.Generator().manual_seed(21)
    batch = random_batch(g, b=3, n=7, p=4, rwpe_dim=0, pad=1)
    factors = 0.8 + 0.45 * torch.rand(3, 7, 1, generator=g, dtype=torch.float64)  # a factor per atom
    for attention in ("heterogeneous", "self"):
        model = randomise_parameters(build_model(replace(TINY, attention=attention), 4, 0).double()).eval()
        base = call(model, batch)
        moved = call(model, dict(batch, x0=batch["x0"] * factors))
        change = (moved - base).norm(dim=-1)[batch["mask"][:, None].expand(-1, 4, -1)]  # (real atom-lags,)
        assert change.max() > 0.05, f"{attention}: output moved by at most {change.max():.2e} A"


BOND, SPRING, STEPS = 1.4, 0.05, 60  # Å; spring constant in u Å² fs⁻² per Å² of stretch... see chain()


def chain(n_samples: int, n_atoms: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Windows of a zigzag chain of carbon-mass beads joined by harmonic springs (rest length
    1.4 Å, period of one bond ~60 fs), integrated with velocity Verlet (1 fs): random bond
    stretches (~0.06 Å) and velocities (~0.004 Å/fs); lags 15, 30, 45, 60 fs."""
    rng = np.random.default_rng(seed)
    base = np.zeros((n_atoms, 3))
    base[:, 0] = np.arange(n_atoms) * BOND * np.cos(0.5)
    base[1::2, 1] = BOND * np.sin(0.5)
    x = base[None] + rng.normal(scale=0.06, size=(n_samples, n_atoms, 3))
    v = rng.normal(scale=0.004, size=(n_samples, n_atoms, 3))
    x -= x.mean(1, keepdims=True)
    v -= v.mean(1, keepdims=True)
    mass = 12.0

    def force(pos: np.ndarray) -> np.ndarray:
        d = pos[:, 1:] - pos[:, :-1]
        length = np.linalg.norm(d, axis=-1, keepdims=True)
        f = SPRING * (length - BOND) * d / length  # pulls bonded beads together when stretched
        out = np.zeros_like(pos)
        out[:, :-1] += f
        out[:, 1:] -= f
        return out

    x0, v0, frames = x.copy(), v.copy(), []
    a = force(x) / mass
    for step in range(1, STEPS + 1):
        x = x + v + 0.5 * a
        a_new = force(x) / mass
        v = v + 0.5 * (a + a_new)
        a = a_new
        if step % 15 == 0:
            frames.append(x.copy())
    t = lambda arr: torch.as_tensor(arr, dtype=torch.float32)  # noqa: E731
    return {"x0": t(x0), "v0": t(v0), "target": t(np.stack(frames, 1)), "z": torch.full((n_samples, n_atoms), 6),
            "lags_fs": t(np.tile([15.0, 30.0, 45.0, 60.0], (n_samples, 1))),
            "mask": torch.ones(n_samples, n_atoms, dtype=torch.bool)}


def test_moving_an_atom_changes_its_neighbours_prediction_more_than_a_distant_atoms():
    torch.manual_seed(0)
    data = chain(2048)
    model = build_model(replace(TINY, prior="x0"), 4, 0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(400):
        idx = torch.randint(0, 2048, (64,), generator=g)
        pred = model(data["x0"][idx], data["v0"][idx], data["z"][idx], data["lags_fs"][idx], data["mask"][idx])
        loss = trajectory_loss(pred, data["target"][idx], data["mask"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    probe = {k: v[:64] for k, v in chain(64, seed=1).items()}
    moved = dict(probe, x0=probe["x0"].clone())
    moved["x0"][:, 0] += 0.1 * torch.nn.functional.normalize(probe["x0"][:, 0] - probe["x0"][:, 1], dim=-1)  # stretch bond 0–1
    with torch.no_grad():
        change = (call(model, dict(moved, rwpe=None)) - call(model, dict(probe, rwpe=None))).norm(dim=-1).mean((0, 1))  # (N,)
    assert change[1] > 4 * change[-1], f"change of the neighbour {change[1]:.4f} A, of the far end {change[-1]:.4f} A"
