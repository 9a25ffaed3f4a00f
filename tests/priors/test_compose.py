"""`atomray.priors.compose`: the one composition of a physics prior from the batch keys the data
path attached — the `Prior` module every model starts from, and the floors scored beside every
model. Floors from synthetic keys against independent formulas; the Prior and fresh models at
initialisation against the floor of the same name, on real tg80-mini windows (ethanol and
benzene, padded) whose paths `PriorPaths` computed with real MMFF94 and GFN2-xTB."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from atomray.config import ModelConfig
from atomray.data.augment import random_rotation, rotate_batch
from atomray.model import build_model
from atomray.model.registry import model_inputs
from atomray.priors import rigid
from atomray.priors.anharmonic import TAU_MD_FS
from atomray.priors.compose import (FLOORS, KINDS, PARTS, PATH_KEYS, TAU_RELAX_FS, Prior, floor_parts,
                                    floor_predictions, prior_parts, toward_minimum)
from atomray.priors.modes import TAU_VIB_FS
from atomray.priors.paths import DatasetBasins, PriorPaths
from model.symmetry import call, randomise_parameters
from priorkit import as_torch, frame_physics, windows

torch.set_num_threads(1)
TINY = ModelConfig(embed_dim=32, num_layers=2, num_heads=4, attn_dropout=0.0, gnn_hidden_dim=16)
PLAIN = replace(TINY, relaxed_input=False, prior_input=False)  # what a non-harmonic prior allows
F64 = torch.float64


@pytest.fixture(scope="module")
def real() -> dict:
    """8 tg80-mini windows (4 ethanol, padded to 12 atoms, and 4 benzene), all atoms, with every
    prior path (float64), v0 in Å/fs, 8 lags ≤ 1 ps."""
    batch = windows(("ethanol", "benzene"), 8, "all", seed=3, frame_fraction=(0.0, 0.2))
    paths = PriorPaths(set(PARTS), DatasetBasins(frame_physics(batch)), dtype=np.float64)(batch)
    out = as_torch(paths, F64)
    assert (~out["mask"]).any() and out["md_ok"].all()
    return out


def synthetic(seed: int = 0, b: int = 3, p: int = 4, n: int = 5) -> dict:
    """A batch of random keys: x0, lags, rotor path and orthogonal R(Δt), vib_osc, vib_d0, md_path, md_ok."""
    g = torch.Generator().manual_seed(seed)
    rot = torch.stack([torch.stack([random_rotation(g) for _ in range(p)]) for _ in range(b)])
    x0 = torch.randn(b, n, 3, generator=g, dtype=F64)
    return {"x0": x0, "v0": torch.randn(b, n, 3, generator=g, dtype=F64) * 0.01,
            "z": torch.full((b, n), 6), "mass": torch.full((b, n), 12.0, dtype=F64),
            "mask": torch.ones(b, n, dtype=torch.bool),
            "lags_fs": torch.sort(torch.rand(b, p, generator=g, dtype=F64) * 900 + 1, dim=1).values,
            "rotor_path": torch.randn(b, p, n, 3, generator=g, dtype=F64), "rotor_rot": rot,
            "rigid_path": torch.randn(b, p, n, 3, generator=g, dtype=F64), "rigid_rot": rot.flip(1),
            "vib_osc": torch.randn(b, p, n, 3, generator=g, dtype=F64) * 0.1,
            "vib_d0": torch.randn(b, n, 3, generator=g, dtype=F64) * 0.1,
            "md_path": torch.randn(b, p, n, 3, generator=g, dtype=F64),
            "md_ok": torch.tensor([True, False, True][:b])}


def paths_of(batch: dict) -> dict:
    return {k: batch[k] for k in PATH_KEYS if k in batch}


# ---------------------------------------------------------------------------------------------
# which parts


def test_parts_and_keys_name_what_each_prior_and_floor_reads():
    assert PATH_KEYS == ("rigid_path", "rigid_rot", "rotor_path", "rotor_rot", "vib_osc", "vib_d0", "md_path", "md_ok",
                         "vib_vel")
    assert {k: prior_parts(k) for k in KINDS} == {"none": set(), "x0": set(), "rigid": {"rigid"}, "rotor": {"rotor"},
                                                  "harmonic": {"rotor", "vibration"}}
    assert prior_parts("harmonic", anharmonic=True) == {"rotor", "vibration", "md"}
    assert floor_parts(["no_motion", "linear", "rigid_heavy", "rigid_all"]) == set()
    assert floor_parts(["relaxed_all"]) == floor_parts(["harmonic_all"]) == {"rotor", "vibration"}
    assert floor_parts() == {"rotor", "vibration", "md"}
    with pytest.raises(ValueError, match="prior must be one of"):
        prior_parts("relaxed")
    with pytest.raises(ValueError, match="unknown floor 'wobble'"):
        floor_parts(["rotor_all", "wobble"])
    with pytest.raises(ValueError, match="hands over to the harmonic one"):
        Prior("rotor", anharmonic=True)


def test_a_prior_names_the_batch_keys_it_lacks():
    batch = synthetic()
    Prior("harmonic", anharmonic=True).check(paths_of(batch))
    with pytest.raises(KeyError, match=r"\['md_path', 'md_ok'\]"):
        Prior("harmonic", anharmonic=True).check({k: v for k, v in paths_of(batch).items() if not k.startswith("md_")})
    with pytest.raises(KeyError, match="rotor_path"):
        Prior("rotor").check(None)
    with pytest.raises(KeyError, match=r"floor 'harmonic_all' needs the batch keys \['vib_osc', 'vib_d0'\]"):
        floor_predictions({k: v for k, v in batch.items() if not k.startswith("vib_")}, ["harmonic_all"])


# ---------------------------------------------------------------------------------------------
# floors from keys, against independent formulas


def test_floors_from_keys_are_their_formulas():
    """relaxed_all = rotor_all + a(Δt) R (−d0), a = 1 − exp(−Δt/250 fs); harmonic_all = rotor_all
    + R (exp(−Δt/1000 fs) osc − d0); mmff_md = md_path where md_ok, else harmonic_all;
    anharmonic_all = harmonic_all + exp(−Δt/150 fs) (md_path − harmonic_all) where md_ok."""
    b = synthetic()
    got = floor_predictions(b)
    t = b["lags_fs"][..., None, None]
    rot, rotor = b["rotor_rot"], b["rotor_path"]
    turn = lambda d: torch.einsum("bpij,bpnj->bpni", rot, d)  # noqa: E731 R(Δt) acting on each atom's vector
    d0 = b["vib_d0"][:, None].expand_as(b["vib_osc"])
    relaxed = rotor + (1 - torch.exp(-t / 250.0)) * turn(-d0)
    harmonic = rotor + turn(torch.exp(-t / 1000.0) * b["vib_osc"] - d0)
    ok = b["md_ok"][:, None, None, None]
    mmff = torch.where(ok, b["md_path"], harmonic)
    anh = torch.where(ok, harmonic + torch.exp(-t / 150.0) * (b["md_path"] - harmonic), harmonic)
    expect = {"no_motion": b["x0"][:, None].expand_as(rotor), "linear": b["x0"][:, None] + b["v0"][:, None] * t,
              "rotor_all": rotor, "relaxed_all": relaxed, "harmonic_all": harmonic, "mmff_md": mmff,
              "anharmonic_all": anh}
    for name, value in expect.items():
        torch.testing.assert_close(got[name], value, atol=1e-12, rtol=0, msg=name)
    torch.testing.assert_close(got["mmff_md"][1], harmonic[1])  # md_ok False: the harmonic path
    torch.testing.assert_close(got["anharmonic_all"][1], harmonic[1])
    torch.testing.assert_close(got["rigid_all"], rigid.rigid(b["x0"], b["v0"], b["mass"], b["lags_fs"]))
    assert (TAU_RELAX_FS, TAU_VIB_FS, TAU_MD_FS) == (250.0, 1000.0, 150.0)
    torch.testing.assert_close(toward_minimum(-b["vib_d0"], rot, b["lags_fs"]), relaxed - rotor)
    assert list(got) == list(FLOORS)
    with pytest.raises(ValueError, match="unknown floor"):
        floor_predictions(b, ["rotor_all", "wobble"])


def test_floors_mask_padding_out_of_the_rigid_motion():
    """A padded atom (mask False) has no mass in the rigid-body floors, whatever mass it says."""
    b = synthetic(1)
    b["mask"][:, -1] = False
    moved = dict(b, x0=b["x0"].clone(), mass=b["mass"].clone())
    moved["x0"][:, -1] += 10.0
    moved["mass"][:, -1] = 99.0
    for name in ("rigid_heavy", "rigid_all"):
        torch.testing.assert_close(floor_predictions(moved, [name])[name][:, :, :-1],
                                   floor_predictions(b, [name])[name][:, :, :-1], msg=name)


# ---------------------------------------------------------------------------------------------
# the Prior module


def test_the_prior_composes_its_keys_and_hands_out_the_bodys_orientation():
    b = synthetic(2)
    x0, lags, paths = b["x0"], b["lags_fs"], paths_of(b)
    assert Prior("none")(x0, lags, paths) == (None, None)
    base, rot = Prior("x0")(x0, lags, paths)
    torch.testing.assert_close(base, x0[:, None].expand_as(b["rotor_path"]))
    torch.testing.assert_close(rot, torch.eye(3, dtype=F64).expand_as(b["rotor_rot"]))
    for kind in ("rigid", "rotor"):
        base, rot = Prior(kind)(x0, lags, paths)
        torch.testing.assert_close(base, b[f"{kind}_path"], msg=kind)
        torch.testing.assert_close(rot, b[f"{kind}_rot"], msg=kind)
    floors = floor_predictions(b)
    base, rot = Prior("harmonic")(x0, lags, paths)
    torch.testing.assert_close(base, floors["harmonic_all"])
    torch.testing.assert_close(rot, b["rotor_rot"])
    base, _ = Prior("harmonic", anharmonic=True)(x0, lags, paths)
    torch.testing.assert_close(base, floors["anharmonic_all"])
    base32, rot32 = Prior("harmonic", anharmonic=True)(x0.float(), lags.float(), paths)  # the model's dtype out
    assert base32.dtype == rot32.dtype == torch.float32
    torch.testing.assert_close(base32, floors["anharmonic_all"].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind, anharmonic, floor", [("rotor", False, "rotor_all"), ("harmonic", False, "harmonic_all"),
                                                     ("harmonic", True, "anharmonic_all"), ("x0", False, "no_motion")])
def test_the_prior_at_init_is_the_floor_of_the_same_name_on_real_windows(real, kind, anharmonic, floor):
    base, _ = Prior(kind, anharmonic).double()(real["x0"], real["lags_fs"], paths_of(real))
    expect = floor_predictions(real, [floor])[floor]
    m = real["mask"][:, None, :, None]
    # 1e-7 Å: the Prior keeps log τ, made in float32, so its τ is 1000 (150) fs to 2e-7, relative
    torch.testing.assert_close(base * m, expect * m, atol=1e-7, rtol=0)


def test_the_prior_learns_its_dephasing_and_hand_over_times(real):
    prior = Prior("harmonic", anharmonic=True).double()
    assert math.isclose(prior.vib_log_tau.exp().item(), TAU_VIB_FS, rel_tol=1e-6)
    assert math.isclose(prior.md_log_tau.exp().item(), TAU_MD_FS, rel_tol=1e-6)
    base, _ = prior(real["x0"], real["lags_fs"], paths_of(real))
    base.square().sum().backward()
    assert prior.vib_log_tau.grad.abs() > 0 and prior.md_log_tau.grad.abs() > 0
    with torch.no_grad():
        prior.vib_log_tau.fill_(math.log(10.0))  # a fast dephasing: at 1 ps the relaxed shape, no oscillation
    base, rot = prior(real["x0"], real["lags_fs"], paths_of(real))
    assert sorted(n for n, _ in prior.named_parameters()) == ["md_log_tau", "vib_log_tau"]
    long = real["lags_fs"] > 500
    expect = real["rotor_path"] - torch.einsum("bpij,bnj->bpni", rot, real["vib_d0"])
    torch.testing.assert_close(base[long], expect[long], atol=1e-9, rtol=0)


def test_rotor_and_rigid_priors_differ_when_the_body_precesses(real):
    """Spun up 20× and seen over 1.5–3 ps, the molecules' ω precesses: the exact rotor differs
    from the constant-ω rigid prior, and both from x0."""
    fast = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in real.items()}
    fast["v0"] = fast["v0"] * 20
    fast["lags_fs"] = fast["lags_fs"] * 0 + np.linspace(1500.0, 3000.0, fast["lags_fs"].shape[1])
    b = as_torch(PriorPaths({"rigid", "rotor"}, dtype=np.float64)(fast))
    outs = {k: Prior(k)(b["x0"], b["lags_fs"], paths_of(b))[0] for k in ("x0", "rigid", "rotor")}
    m = b["mask"][:, None, :, None]
    assert ((outs["rigid"] - outs["x0"]) * m).abs().max() > 0.1
    assert ((outs["rotor"] - outs["rigid"]) * m).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# models start at their prior


def first_lags(batch: dict, p: int) -> dict:
    """The batch with its first p lags only (and the paths at them)."""
    out = dict(batch)
    for key in ("lags_fs", "rigid_path", "rigid_rot", "rotor_path", "rotor_rot", "vib_osc", "md_path"):
        out[key] = batch[key][:, :p]
    return out


@pytest.mark.parametrize("prior", ["x0", "rigid", "rotor"])
@pytest.mark.parametrize("name", ["atom", "egno", "egnn_r", "egnn_s"])
def test_a_fresh_model_predicts_its_prior_exactly(real, name, prior):
    """4 lags: a fresh EGNN rollout on these real windows overflows to NaN after 5–6 steps
    (before the zero correction multiplies it), in the old code as in this one."""
    torch.manual_seed(0)
    real = first_lags(real, 4)
    model = build_model(replace(PLAIN, name=name, prior=prior), 4, 8).double().eval()
    x0, v0, lags, m = real["x0"], real["v0"], real["lags_fs"], real["mask"]
    mass = real["mass"] * m
    expect = {"x0": lambda: rigid.no_motion(x0, lags), "rigid": lambda: rigid.rigid(x0, v0, mass, lags),
              "rotor": lambda: rigid.rotor(x0, v0, mass, lags)}[prior]()
    with torch.no_grad():
        out = call(model, real)
    # 1e-6 Å: the rotor's RK4 step count follows the fastest spin in the batch
    torch.testing.assert_close(out, expect * m[:, None, :, None], atol=1e-6, rtol=0)
    if prior != "x0":
        assert ((expect - x0[:, None]) * m[:, None, :, None]).abs().max() > 1e-3  # the body does move


@pytest.mark.parametrize("name, inputs, anharmonic", [("atom", False, False), ("atom", True, False),
                                                      ("egno", False, False), ("atom", True, True), ("egno", False, True)])
def test_a_fresh_model_with_the_harmonic_prior_predicts_its_floor(real, name, inputs, anharmonic):
    """At step 0 a model with the harmonic prior predicts harmonic_all, with the anharmonic prior
    anharmonic_all — whatever it reads as inputs — and the atoms visibly vibrate."""
    torch.manual_seed(0)
    cfg = replace(TINY, name=name, prior="harmonic", anharmonic=anharmonic, relaxed_input=inputs, prior_input=inputs)
    model = build_model(cfg, 8, 8).double().eval()
    with torch.no_grad():
        out = call(model, real)
    m = real["mask"][:, None, :, None]
    floors = floor_predictions(real, ["anharmonic_all" if anharmonic else "harmonic_all", "rotor_all"])
    # 1e-7 Å: the prior's log τ is made in float32 (τ to 2e-7, relative)
    torch.testing.assert_close(out, floors["anharmonic_all" if anharmonic else "harmonic_all"] * m, atol=1e-7, rtol=0)
    assert ((out - floors["rotor_all"]) * m).abs().max() > 0.01


def test_a_fresh_models_prior_times_are_learnable(real):
    model = build_model(replace(TINY, anharmonic=True), 8, 8).double()
    call(model, real).square().sum().backward()
    assert model.prior.vib_log_tau.grad.abs() > 0 and model.prior.md_log_tau.grad.abs() > 0


def features(cfg: ModelConfig, batch: dict) -> torch.Tensor:
    model = randomise_parameters(build_model(cfg, 8, 8).double().eval(), scale=0.5)
    with torch.no_grad():
        h, _ = model.embed(**model_inputs(batch))
    return h


def at_rest_at_the_minimum(real: dict) -> dict:
    """The real batch with every window's atoms moved onto its basin's minimum (superposed:
    x0 − d0) and at rest: d0 = 0 and no vibration, only the residual force's slow drift."""
    b = dict(real)
    b["x0"] = (real["x0"] - real["vib_d0"]) * real["mask"][..., None]
    b["v0"] = torch.zeros_like(real["v0"])
    b["vib_osc"] = torch.zeros_like(real["vib_osc"])
    b["vib_d0"] = torch.zeros_like(real["vib_d0"])
    return b


def test_relaxed_input_lets_the_trunk_see_the_shift_to_the_minimum(real):
    """With random weights, ATOM's trunk features change with relaxed_input on displaced
    molecules, and not at their minimum (δ = −d0 = 0 lifts to zero), all other weights shared."""
    off, on = replace(TINY, prior_input=False, relaxed_input=False), replace(TINY, prior_input=False)
    assert (features(on, real) - features(off, real)).abs().max() > 1e-2
    rest = at_rest_at_the_minimum(real)
    torch.testing.assert_close(features(on, rest), features(off, rest), atol=1e-10, rtol=0)


def test_prior_input_lets_each_lag_slot_see_the_vibration(real):
    """With random weights, ATOM's lag-slot features change with prior_input on vibrating
    molecules, and not on molecules at rest at their minimum (no vibration lifts to zero)."""
    off, on = replace(TINY, relaxed_input=False, prior_input=False), replace(TINY, relaxed_input=False)
    assert (features(on, real) - features(off, real)).abs().max() > 1e-2
    rest = at_rest_at_the_minimum(real)
    torch.testing.assert_close(features(on, rest), features(off, rest), atol=1e-10, rtol=0)


def test_inputs_from_the_harmonic_prior_need_the_harmonic_prior():
    for key in ("relaxed_input", "prior_input"):
        with pytest.raises(ValueError, match=f"{key}.*harmonic"):
            build_model(replace(TINY, prior="rotor", **{"relaxed_input": False, "prior_input": False, key: True}), 8, 0)


def test_a_harmonic_canonical_atom_stays_equivariant_on_real_windows(real):
    """Turning real windows with their paths (`rotate_batch`) turns the prediction of an ATOM with
    random weights, the harmonic prior, relaxed and prior inputs and the anharmonic hand-over."""
    torch.manual_seed(0)
    model = randomise_parameters(build_model(replace(TINY, anharmonic=True), 8, 8).double().eval(), scale=0.5)
    q = random_rotation(torch.Generator().manual_seed(5))
    inputs = {k: real[k] for k in ("x0", "v0", "z", "lags_fs", "mask", "rwpe", *PATH_KEYS)}
    m = real["mask"][:, None, :, None].double()
    with torch.no_grad():
        expected = call(model, inputs) @ q.T * m
        got = call(model, rotate_batch(inputs, q, about="origin")) * m
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    assert (expected - call(model, inputs).detach() * m).abs().max() > 0.1


def test_harmonic_loss_weights_are_inverse_to_the_harmonic_floors_error(real):
    """`train.loss_weighting=harmonic`: a window the harmonic_all floor misses by more weighs less."""
    from atomray.metrics import masked_mse
    from atomray.train.loss import window_weights

    b = {k: v for k, v in real.items() if isinstance(v, torch.Tensor)}
    harm = floor_predictions(b, ["harmonic_all"])["harmonic_all"]
    g = torch.Generator().manual_seed(0)
    scale = torch.linspace(0.01, 0.05, len(harm), dtype=F64)[:, None, None, None]
    b["target"] = harm + scale * torch.randn(harm.shape, generator=g, dtype=F64) * b["mask"][:, None, :, None]
    w = window_weights(b, 1e-3, "harmonic")
    expect = 1 / (masked_mse(harm, b["target"], b["mask"]) + 1e-3)
    torch.testing.assert_close(w.double(), expect / expect.mean(), rtol=1e-4, atol=0)
    assert w[0] > 1.5 * w[-1]
    assert not torch.allclose(w, window_weights(b, 1e-3, "anharmonic"))  # not the anharmonic floor's weights


def test_an_undamped_harmonic_prior_keeps_the_oscillation_and_learns_no_dephasing_time():
    """`vib_damping=False`: τ = ∞ is a fixed buffer, not a parameter, and the vibration at every lag
    is the undamped oscillation less the start displacement (osc − d0), where the damped prior's
    is exp(−Δt/τ) osc − d0."""
    from atomray.priors.compose import Prior

    torch.manual_seed(0)
    osc, d0 = torch.randn(2, 3, 5, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    lags = torch.tensor([[50.0, 500.0, 1000.0]] * 2, dtype=torch.float64)
    paths = {"vib_osc": osc, "vib_d0": d0}
    undamped, damped = Prior("harmonic", damping=False), Prior("harmonic")
    assert [n for n, _ in undamped.named_parameters()] == [] and "vib_log_tau" in undamped.state_dict()
    assert torch.allclose(undamped.vibration(paths, None, lags), osc - d0[:, None], atol=1e-12)
    assert not torch.allclose(damped.vibration(paths, None, lags), osc - d0[:, None], atol=1e-3)
