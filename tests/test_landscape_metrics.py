"""Landscape metric math: Hessian-vector products, PyHessian agreement, CKA, mode connectivity, phase rule."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from wsl import ParamLayout
from zoo import config_for, load_dataset
from zoo.landscape.cka import MinibatchCKA, cka, gram_linear, hsic1
from zoo.landscape.connectivity import bezier, mc_from_losses, mode_connectivity
from zoo.landscape.hessian import (EIG_SEED_OFFSET, PopulationHessian, hessian_metrics, hutchinson_trace,
                                   top_eigenvalue)
from zoo.landscape.phases import Thresholds, label_phases, phase_of
from zoo.landscape.recipe import Recipe, param_views, per_model_loss
from wsl.functional import population_forward


def _digits_population(n=3, width=8, steps=150, seed=0):
    """n small MLPs on digits, briefly trained as one population (so the Hessian is that of a real model)."""
    ds = load_dataset("digits")
    layout = ParamLayout.from_config(config_for(ds, {"name": "mlp", "width": width, "depth": 2}))
    torch.manual_seed(seed)
    W = layout.flatten([layout.build_module() for _ in range(n)])
    leaves = [t.clone().requires_grad_(True) for t in param_views(layout, W).values()]
    opt = torch.optim.Adam(leaves, lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(ds.x_train), (64,), generator=g)
        out = population_forward(layout, dict(zip(layout.names, leaves)), ds.x_train[idx])
        loss = per_model_loss(out, ds.y_train[idx]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    W = torch.cat([t.detach().reshape(n, -1) for t in leaves], 1)
    mods = [layout.load_into(layout.build_module(), w) for w in W]
    return ds, layout, mods, W


@pytest.fixture(scope="module")
def pop():
    return _digits_population()


# ----------------------------------------------------------------------------- Hessian
@pytest.mark.parametrize("method", ["autograd", "func"])
def test_hvp_equals_finite_difference(pop, method):
    ds, layout, _, W = pop
    x, y = ds.x_train[:200].double(), ds.y_train[:200]
    W = W.double()
    hess = PopulationHessian(layout, W, [(x[:120], y[:120]), (x[120:], y[120:])], method=method)
    v = torch.randn(W.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hv = hess.hvp(v)

    def grad_at(w):
        w = w.clone().requires_grad_(True)
        loss = per_model_loss(population_forward(layout, param_views(layout, w), x), y).sum()
        return torch.autograd.grad(loss, w)[0]

    eps = 1e-5
    fd = (grad_at(W + eps * v) - grad_at(W - eps * v)) / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=1e-5, atol=1e-6)


def test_population_values_do_not_depend_on_the_cohort(pop):
    ds, layout, _, W = pop
    batches = [(ds.x_train[:256], ds.y_train[:256])]
    together = hessian_metrics(layout, W, batches, iterations=10, probes=8, seeds=[5, 6, 7])
    alone = hessian_metrics(layout, W[1:2], batches, iterations=10, probes=8, seeds=[6])
    for k in together:
        torch.testing.assert_close(together[k][1:2], alone[k], rtol=1e-4, atol=1e-6)


def test_top_eigenvalue_and_trace_match_pyhessian(pop):
    pyhessian = pytest.importorskip("pyhessian")
    ds, layout, mods, W = pop
    x, y = ds.x_train[:256], ds.y_train[:256]
    iterations, probes, seed = 20, 32, 11
    hess = PopulationHessian(layout, W, [(x, y)])
    ours_eig = top_eigenvalue(hess, iterations, seeds=[seed + i for i in range(len(mods))])
    ours_tr = hutchinson_trace(hess, probes, seeds=[seed + i for i in range(len(mods))])
    for i, m in enumerate(mods):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.zero_grad(set_to_none=True)
            ref = pyhessian.hessian(m, F.cross_entropy, data=(x, y), cuda=False)
            torch.manual_seed(seed + i + EIG_SEED_OFFSET)  # our start vector's stream
            ref_eig = ref.eigenvalues(maxIter=iterations, tol=0.0)[0][0]
            torch.manual_seed(seed + i)  # the seed our model i draws its probes from
            samples = ref.trace(maxIter=probes, tol=0.0)
        assert len(samples) == probes
        ref_tr = sum(samples) / len(samples)
        # the tolerances; with the same seeds the two agree to float rounding
        assert abs(float(ours_eig[i]) - ref_eig) <= 0.05 * abs(ref_eig), (i, float(ours_eig[i]), ref_eig)
        assert abs(float(ours_tr[i]) - ref_tr) <= 0.10 * abs(ref_tr), (i, float(ours_tr[i]), ref_tr)
        assert float(ours_eig[i]) == pytest.approx(ref_eig, rel=1e-3)
        assert float(ours_tr[i]) == pytest.approx(ref_tr, rel=1e-3)


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian():
    # a linear model with squared loss has H = 2 X^T X / n for every output: an exact reference
    layout = ParamLayout([("layers.0.weight", (1, 6)), ("layers.0.bias", (1,))],
                         arch={"name": "mlp", "in_features": 6, "out_features": 1, "depth": 0})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 0.5, 0.2, 0.1], dtype=torch.float64)
    y = torch.randn(50, 1, generator=g, dtype=torch.float64)
    W = torch.randn(2, 7, generator=g, dtype=torch.float64)
    hess = PopulationHessian(layout, W, [(x, y)], task="regression")
    xa = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    H = 2 * xa.T @ xa / 50
    eig = top_eigenvalue(hess, iterations=200)
    tr = hutchinson_trace(hess, probes=2000)
    torch.testing.assert_close(eig, torch.linalg.eigvalsh(H)[-1].expand(2), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(tr, torch.trace(H).expand(2), rtol=0.05, atol=0)


# ----------------------------------------------------------------------------- CKA
def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(0))
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(list(x.split(50)), list(x.split(50))) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g, dtype=torch.float64)
    y = x @ torch.randn(12, 8, generator=g, dtype=torch.float64) + 0.5 * torch.randn(300, 8, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    base = cka(list(x.split(100)), list(y.split(100)))
    assert 0.2 < base < 0.99
    assert cka(list((x @ q).split(100)), list(y.split(100))) == pytest.approx(base, abs=1e-10)
    assert cka(list((7.5 * x).split(100)), list((0.01 * y).split(100))) == pytest.approx(base, abs=1e-10)
    # and it is not invariant to an arbitrary invertible linear map (what separates CKA from CCA)
    a = torch.diag(torch.logspace(-2, 2, 12, dtype=torch.float64))
    assert abs(cka(list((x @ a).split(100)), list(y.split(100))) - base) > 1e-3


def test_minibatch_cka_accumulates_hsic_rather_than_averaging_cka():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 10, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :6] * 2) + 0.8 * torch.randn(400, 6, generator=g, dtype=torch.float64)
    xb, yb = list(x.split(40)), list(y.split(40))
    num = sum(hsic1(gram_linear(a), gram_linear(b)) for a, b in zip(xb, yb))
    dx = sum(hsic1(gram_linear(a), gram_linear(a)) for a in xb)
    dy = sum(hsic1(gram_linear(b), gram_linear(b)) for b in yb)
    assert cka(xb, yb) == pytest.approx(float(num / (dx * dy).sqrt()), rel=1e-10)
    averaged = sum(cka(a, b) for a, b in zip(xb, yb)) / len(xb)
    assert abs(cka(xb, yb) - averaged) > 1e-4


def test_unbiased_hsic_matches_the_song_et_al_formula():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 3, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
    k, l = gram_linear(x), gram_linear(y)
    n = 9
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    ref = (torch.trace(kt @ lt) + (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
           - 2 / (n - 2) * (one.T @ kt @ lt @ one)) / (n * (n - 3))
    assert float(hsic1(k, l)) == pytest.approx(float(ref), rel=1e-12)


def test_population_cka_matrix_is_symmetric_with_unit_diagonal():
    acc = MinibatchCKA(4)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        acc.update(torch.randn(4, 32, 5, generator=g))
    m = acc.matrix()
    torch.testing.assert_close(m, m.T)
    torch.testing.assert_close(m.diagonal(), torch.ones(4, dtype=torch.float64))


# ----------------------------------------------------------------------------- mode connectivity
def test_mc_formula_on_hand_made_curves():
    flat = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    assert float(mc_from_losses(flat)) == 0.0
    barrier = torch.tensor([0.1, 0.5, 0.9, 0.4, 0.3])  # mean of endpoints 0.2, worst interior 0.9
    assert float(mc_from_losses(barrier)) == pytest.approx(0.2 - 0.9)
    valley = torch.tensor([1.0, 0.6, 0.4, 0.7, 1.2])
    assert float(mc_from_losses(valley)) == pytest.approx(1.1 - 0.4)
    both = torch.stack([barrier, valley])
    torch.testing.assert_close(mc_from_losses(both), torch.tensor([-0.7, 0.7], dtype=torch.float64))


def test_bezier_passes_through_its_endpoints():
    w0, th, w1 = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(bezier(w0, th, w1, 0.0), w0)
    torch.testing.assert_close(bezier(w0, th, w1, 1.0), w1)
    torch.testing.assert_close(bezier(w0, th, w1, torch.tensor([0.0, 1.0, 0.5])),
                               torch.stack([w0[0], w1[1], 0.25 * w0[2] + 0.5 * th[2] + 0.25 * w1[2]]))


def test_mc_is_zero_for_identical_endpoints(pop):
    ds, layout, _, W = pop
    batches = [(ds.x_train[:256], ds.y_train[:256])]
    r = mode_connectivity(layout, W, W.clone(), (ds.x_train, ds.y_train), batches, points=5, epochs=0)
    # phi(t) = w0 for every t, up to float32 rounding of the Bezier weights
    torch.testing.assert_close(r["mc"], torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(r["losses"], r["losses"][:, :1].expand_as(r["losses"]), rtol=0, atol=1e-6)


def test_mc_is_negative_across_a_constructed_barrier(pop):
    ds, layout, mods, W = pop
    # the same function with its hidden units permuted: L0 == L1, but the straight
    # line between the two weight vectors averages unrelated units -> a barrier
    w0 = W[:1]
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    p = {k: v.clone() for k, v in layout.unflatten(w0[0]).items()}
    p["layers.0.weight"], p["layers.0.bias"] = p["layers.0.weight"][perm], p["layers.0.bias"][perm]
    p["layers.1.weight"] = p["layers.1.weight"][:, perm]
    w1 = layout.flatten(p).unsqueeze(0)
    batches = [(ds.x_train[:512], ds.y_train[:512])]
    r = mode_connectivity(layout, w0, w1, (ds.x_train, ds.y_train), batches, points=7, epochs=0)
    assert r["losses"][0, 0] == pytest.approx(float(r["losses"][0, -1]), rel=1e-5)
    assert float(r["mc"][0]) < -0.1
    # training the control point lowers the barrier (the curve goes around it)
    trained = mode_connectivity(layout, w0, w1, (ds.x_train, ds.y_train), batches, points=7, epochs=5, lr=0.01)
    assert float(trained["mc"][0]) > float(r["mc"][0])


# ----------------------------------------------------------------------------- phases
ROWS = [  # hand-made metric rows -> the phase the rule must give with the default thresholds
    ({"train_loss": 1.5, "hessian_trace": 400.0, "mode_connectivity": -0.3, "cka_logits": 0.2}, "I"),
    ({"train_loss": 1.5, "hessian_trace": 5.0, "mode_connectivity": 0.4, "cka_logits": 0.2}, "II"),
    ({"train_loss": 0.9, "hessian_trace": 400.0, "mode_connectivity": 0.0, "cka_logits": 0.5}, "I"),
    ({"train_loss": 0.9, "hessian_trace": 3.0, "mode_connectivity": 0.01, "cka_logits": 0.5}, "II"),
    ({"train_loss": 0.01, "hessian_trace": 3.0, "mode_connectivity": -0.4, "cka_logits": 0.95}, "III"),
    ({"train_loss": 0.01, "hessian_trace": 3.0, "mode_connectivity": 0.01, "cka_logits": 0.5}, "IV-A"),
    ({"train_loss": 0.01, "hessian_trace": 3.0, "mode_connectivity": -0.02, "cka_logits": 0.97}, "IV-B"),
    ({"train_loss": 0.01, "hessian_trace": 3.0, "mode_connectivity": 0.3, "cka_logits": 0.97}, "IV-B"),
    ({"train_loss": 0.01, "hessian_trace": 3.0, "mode_connectivity": None, "cka_logits": None}, None),
    ({"train_loss": 2.0, "hessian_trace": 90.0, "mode_connectivity": float("nan")}, "I"),
]


@pytest.mark.parametrize("row,phase", ROWS)
def test_phase_rule_on_hand_made_rows(row, phase):
    assert phase_of(row) == phase


def test_thresholds_are_parameters_and_serialise():
    row = {"train_loss": 0.05, "hessian_trace": 3.0, "mode_connectivity": 0.0, "cka_logits": 0.85, "cka_hidden": 0.95}
    assert phase_of(row) == "IV-A"
    assert phase_of(row, Thresholds(cka=0.8)) == "IV-B"
    assert phase_of(row, Thresholds(cka_metric="cka_hidden")) == "IV-B"
    assert phase_of(row, Thresholds(loss=0.01)) == "II"
    th = Thresholds.parse("loss=0.2, cka=0.7")
    assert (th.loss, th.cka, th.mc_tol) == (0.2, 0.7, Thresholds().mc_tol)
    assert Thresholds.parse(th.to_json()) == th
    assert label_phases([r for r, _ in ROWS]) == [p for _, p in ROWS]


def test_bad_thresholds_and_recipes_are_user_errors():
    from wsl import UserError

    with pytest.raises(UserError, match="not k=v"):
        Thresholds.parse("loss")
    with pytest.raises(UserError, match="unknown phase thresholds"):
        Thresholds.parse('{"los": 1}')
    with pytest.raises(UserError, match="finite number"):
        Thresholds(loss=-1)
    with pytest.raises(UserError, match="5 points or more"):
        Recipe(curve_points=3)
    assert Recipe().recipe_id == Recipe().recipe_id != Recipe(probes=8).recipe_id


def test_cka_of_a_constant_representation_is_undefined_not_huge():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(4))
    dead = torch.zeros(64, 8)
    const = torch.full((64, 3), 0.7) + torch.tensor([0.1, -2.0, 3.0])
    assert torch.isnan(torch.tensor(cka(x, dead))) and torch.isnan(torch.tensor(cka(x, const)))
    assert cka(x, x) == pytest.approx(1.0)
