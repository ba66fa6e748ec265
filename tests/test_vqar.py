"""The vqar generator (VQ-VAE tokens + autoregressive prior): round trips, seeding, conditions, several layouts,
save/load and push/pull, bad input. A tiny two-width zoo and tiny knobs keep every test a few seconds."""
from __future__ import annotations

import json

import pytest
import torch

from generators import LatentDiffusion, load_generator
from generators.vqar import VQAutoregressive
from generators.vqar.quantizer import ChunkVQVAE, codebook_health, train_vqvae
from store.errors import UserError
from store.layout import ParamLayout
from store.store import ZooStore
from test_generators_records import fake_hub  # noqa: F401 (the fixture)
from wsl.tokenize import ChunkTokenizer

TASKS = ["digits-pair:0-1", "digits-pair:0-2", "digits-pair:1-2"]
TINY = dict(chunk_size=4, codebook_size=8, code_dim=4, vq_hidden=8, ae_steps=5, vq_batch=64, d_model=16, depth=1,
            heads=2, steps=6, batch_size=4, set_hidden=8, cond_dim=8, max_per_class=4, context_per_class=8,
            decoded_eval_datasets=2)
TINY_CLI = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def widths_zoo(tmp_path_factory):
    """Two widths (4 and 6) of one MLP family, 3 pair tasks x 2 seeds: two layouts in one store."""
    import zoo

    path = tmp_path_factory.mktemp("vqar") / "store"
    zoo.train({"name": "tiny-widths", "dataset": TASKS, "epochs": 2, "batch_size": 64, "seeds": 2,
               "architecture": {"name": "mlp", "width": [4, 6], "depth": 1}, "optimizer": {"name": "adam", "lr": 0.01}},
              ZooStore(path, create=True))
    return path


@pytest.fixture(scope="module")
def mixed_gen(widths_zoo):
    return VQAutoregressive.fit(ZooStore(widths_zoo, create=False), None, metric="test_acc", **TINY)


def _layouts(store_path) -> list[ParamLayout]:
    zs = ZooStore(store_path, create=False)
    return [zs.layout(lid) for lid in sorted(zs.sql("SELECT DISTINCT layout_id FROM checkpoints").layout_id)]


# ----- tokens -> codes -> chunks ------------------------------------------------------------------
def test_round_trip_is_exact_with_an_identity_codebook():
    layout = ParamLayout([("w", (2, 4)), ("b", (3,))])  # chunk 2: "b" has a padded last chunk
    tok = ChunkTokenizer(layout, 2)
    palette = torch.tensor([[0.5, -1.25], [3.0, 0.0], [-2.0, 7.5], [1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    pick = torch.randint(len(palette), (5, tok.num_tokens), generator=g)
    padded = ~tok.mask.all(1)  # a padded chunk can only hold an entry whose padding position is 0 (as encode makes it)
    pick[:, padded] = torch.tensor([1, 3])[torch.randint(2, (5, int(padded.sum())), generator=g)]
    chunks = palette[pick]  # [N, T, 2]
    weights = tok.decode(chunks)
    vq = ChunkVQVAE(2, len(palette), 2, hidden=0)
    vq.vq._codebook.embed.data.copy_(palette[None])
    vq.vq._codebook.initted.data.fill_(True)
    enc = tok.encode(weights)
    idx = vq.encode(enc.reshape(-1, 2), tok.mask.expand(5, -1, -1).reshape(-1, 2))
    back = tok.decode(vq.decode(idx).reshape(5, tok.num_tokens, 2))
    assert torch.equal(back, weights)
    health = codebook_health(idx, len(palette))
    assert health["tokens"] == 5 * tok.num_tokens and 0 < health["usage_fraction"] <= 1
    assert health["dead_codes"] == len(palette) - health["codes_used"]


def test_trained_vqvae_reconstructs_with_bounded_error():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 4, generator=g) * 3
    x = centres[torch.randint(6, (600,), generator=g)] + 0.05 * torch.randn(600, 4, generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    for hidden, steps in ((0, 30), (32, 300)):  # the codebook alone, and with an encoder / decoder
        torch.manual_seed(0)
        vq = ChunkVQVAE(4, 8, 4, hidden=hidden, dead_threshold=0.5)
        train_vqvae(vq, x, mask, steps=steps, batch_size=128, lr=3e-3, generator=g)
        rec = vq.decode(vq.encode(x, mask))
        rel = float((rec - x).pow(2).sum() / x.pow(2).sum())
        assert rel < 0.05, (hidden, rel)  # six clusters, eight codes: far better than predicting zeros (1.0)


# ----- sampling -------------------------------------------------------------------------------------
def test_same_seed_same_samples_other_seed_or_condition_other_samples(mixed_gen):
    a, layout = mixed_gen.sample(4, "digits-pair:0-1", seed=3)
    b, _ = mixed_gen.sample(4, "digits-pair:0-1", seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, mixed_gen.sample(4, "digits-pair:0-1", seed=4)[0])
    assert not torch.equal(a, mixed_gen.sample(4, "digits-pair:3-5", seed=3)[0])  # an unseen task: another condition
    assert not torch.equal(a, mixed_gen.sample(4, "digits-pair:0-1", seed=3, target={"test_acc": 0.5})[0])


def test_mixed_layout_fit_samples_valid_weights_for_each_layout(mixed_gen, widths_zoo):
    layouts = _layouts(widths_zoo)
    assert len(layouts) == 2 and sorted(mixed_gen.fit_info["layout_groups"][0]) == ["0", "1"]
    assert {lay.layout_id for lay in mixed_gen.layouts} == {lay.layout_id for lay in layouts}
    info = mixed_gen.fit_info["codebook"]
    assert 0 < info["usage_fraction"] <= 1 and info["perplexity"] >= 1 and info["decoded_zoo_relative_acc"] > 0
    assert set(mixed_gen.fit_info["recon_error_per_tensor"]) == {lay.layout_id for lay in layouts}
    for lay in layouts:
        w, got = mixed_gen.sample(3, "digits-pair:1-2", seed=0, layout=lay.layout_id)
        assert got == lay and w.shape == (3, lay.num_params) and bool(torch.isfinite(w).all())
        module = lay.load_into(lay.build_module(), w[0])
        assert module(torch.zeros(2, 64)).shape == (2, 2)
    # another width of the family (never fit): weights of that layout; outside the family: exit-2 error
    other = ParamLayout.from_config({**layouts[0].arch, "width": 5})
    w, got = mixed_gen.sample(2, "digits-pair:1-2", seed=0, layout=other)
    assert got == other and w.shape == (2, other.num_params) and bool(torch.isfinite(w).all())
    deeper = ParamLayout.from_config({**layouts[0].arch, "depth": 2})
    with pytest.raises(UserError, match="outside the family"):
        mixed_gen.sample(2, "digits-pair:1-2", layout=deeper)
    with pytest.raises(UserError, match="not one this vqar generator was fit on"):
        mixed_gen.sample(2, "digits-pair:1-2", layout="0123456789abcdef")


def test_diffusion_still_refuses_a_selection_that_mixes_layouts(widths_zoo):
    with pytest.raises(UserError, match="mixes 2 layouts"):
        LatentDiffusion.fit(ZooStore(widths_zoo, create=False), None, steps=1, ae_steps=1)
    zs = ZooStore(widths_zoo, create=False)
    gen = LatentDiffusion.fit(zs, "width = 4", last=True, steps=1, ae_steps=1, latent_dim=2, ae_hidden=8,
                              denoiser_hidden=8, set_hidden=4, cond_dim=4)
    other = next(lay for lay in _layouts(widths_zoo) if lay != gen.layout)
    with pytest.raises(UserError, match="makes layout"):
        gen.sample(1, "digits-pair:0-1", layout=other.layout_id)


def test_bad_options_are_user_errors():
    for bad, match in ((dict(chunk_size=0), "chunk_size"), (dict(codebook_size=1), "at least 2"),
                       (dict(mean_model="cubic"), "mean_model"), (dict(mean_kernel="poly"), "mean_kernel"), (dict(d_model=10, heads=4), "multiple of heads")):
        with pytest.raises(UserError, match=match):
            VQAutoregressive(**bad)


def test_save_load_is_bit_identical(mixed_gen, tmp_path):
    mixed_gen.save_pretrained(tmp_path / "gen")
    back = load_generator(tmp_path / "gen")
    assert type(back) is VQAutoregressive and back.generator_id == mixed_gen.generator_id
    a, b = mixed_gen.state_tensors(), back.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for lay in mixed_gen.layouts:
        assert torch.equal(mixed_gen.sample(3, "digits-pair:0-2", seed=1, layout=lay.layout_id)[0],
                           back.sample(3, "digits-pair:0-2", seed=1, layout=lay.layout_id)[0])


# ----- the CLI: fit, sample --layout, push / pull, exit 2 -------------------------------------------
@pytest.mark.slow
def test_cli_fit_sample_layout_push_pull(run_cli, widths_zoo, fake_hub, tmp_path):  # noqa: F811
    import shutil

    store = tmp_path / "store"
    shutil.copytree(widths_zoo, store)
    code, out, err = run_cli("generate", "fit", "--method", "vqar", "--store", store, "--format", "json", *TINY_CLI)
    assert code == 0, err
    gid = json.loads(out)["generator_id"]
    lay = _layouts(store)[0]
    code, out, err = run_cli("generate", "sample", gid, "--store", store, "-d", "digits-pair:0-2", "-n", "3",
                             "--layout", lay.layout_id, "--format", "json")
    assert code == 0, err
    zs = ZooStore(store, create=False)
    assert zs.sql("SELECT DISTINCT layout_id FROM samples").layout_id.tolist() == [lay.layout_id]
    code, out, err = run_cli("generate", "sample", gid, "--store", store, "-d", "digits-pair:0-2", "--layout", "nope")
    assert code == 2 and "--layout nope" in out + err
    code, out, err = run_cli("generate", "eval", gid, "--store", store, "-d", "digits-pair:0-2", "-n", "3",
                             "--finetune-models", "0", "--no-baselines", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["summary"]
    code, out, err = run_cli("generate", "push", gid, "--store", store, "--repo-id", "lab/tiny-vqar", "--format", "json")
    assert code == 0, err
    pulled = load_generator("lab/tiny-vqar")
    local = load_generator(store / "generators" / gid)
    assert pulled.generator_id == gid
    a, b = pulled.state_tensors(), local.state_tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(pulled.sample(2, "digits-pair:3-5", seed=2, layout=lay.layout_id)[0],
                       local.sample(2, "digits-pair:3-5", seed=2, layout=lay.layout_id)[0])


def test_cli_chunk_larger_than_every_tensor_exits_2_and_writes_nothing(run_cli, widths_zoo, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(widths_zoo, store)
    before = sorted(p.name for p in store.rglob("*"))
    code, out, err = run_cli("generate", "fit", "--method", "vqar", "--store", store, *TINY_CLI,
                             "--set", "chunk_size=100000")
    assert code == 2 and "larger than the largest tensor" in out + err
    assert sorted(p.name for p in store.rglob("*")) == before
    code, out, err = run_cli("generate", "fit", "--method", "vqar", "--store", store, "--set", "codebook_size=1")
    assert code == 2 and "at least 2" in out + err


def test_benchmark_figures_decode_held_out_checkpoints_through_the_vqvae(mixed_gen, widths_zoo):
    from generators.training_set import Split

    zs = ZooStore(widths_zoo, create=False)
    figs = mixed_gen.benchmark_figures({"store": zs, "split": Split("t", TASKS[:2], TASKS[2:])})
    assert figs["decoded_zoo_checkpoints"] == "held-out" and figs["decoded_zoo_evaluated"] == 4  # 2 seeds x 2 widths
    for k in ("codebook_usage", "dead_code_fraction", "decoded_zoo_relative_acc", "decoded_zoo_mean_only_relative_acc"):
        assert 0 <= figs[k] <= 1.5, k
    assert mixed_gen.benchmark_figures(None)["decoded_zoo_checkpoints"] == "seen (training)"
    # reconstruct keeps the function: the aligned checkpoint computes what the stored one does
    from wsl.evaluate import evaluate
    from zoo import load_dataset

    lay = mixed_gen.layouts[0]
    from generators.evaluation.references import zoo_checkpoints

    w, _ = zoo_checkpoints(zs, TASKS[2], lay.layout_id)
    aligned, decoded, mean_only = mixed_gen.reconstruct(w, load_dataset(TASKS[2]), lay.layout_id)
    ds = load_dataset(TASKS[2])
    assert torch.allclose(evaluate(aligned, lay, ds).loss, evaluate(w, lay, ds).loss, atol=1e-5)
    assert decoded.shape == mean_only.shape == w.shape


# ----- leave-one-dataset-out residuals (loo.py) --------------------------------------------------
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_loo_means_equal_a_refit_without_the_dataset(kernel):
    """The closed-form leave-one-out prediction equals kernel ridge refit without that dataset (same kernel,
    penalty and centring), for every group and dataset."""
    from generators.components.mean_model import GroupedRidge
    from generators.vqar.loo import loo_means

    g = torch.Generator().manual_seed(0)
    D, F, P = 7, 5, 6
    stats = torch.randn(D, F, generator=g, dtype=torch.float64)
    index = torch.cat([torch.arange(D), torch.arange(D)])  # two groups, one model per dataset each
    groups = torch.cat([torch.zeros(D, dtype=torch.long), torch.ones(D, dtype=torch.long)])
    x = torch.randn(2 * D, P, generator=g)
    mm = GroupedRidge([D, D], F, P)
    mm.fit(stats, x, index, groups, kernel)
    got = loo_means(mm, mm(stats)[groups, index], index, groups)
    for gi, ridge in enumerate(mm.ridges):
        feats, lam, gamma = ridge.features, float(ridge.penalty), float(ridge.gamma)
        t = x[groups == gi].double() - ridge.target_mean
        for i in range(D):
            keep = torch.arange(D) != i
            k = ridge._kernel(feats[keep], feats[keep], gamma)
            a = torch.linalg.solve(k + lam * torch.eye(D - 1, dtype=torch.float64), t[keep])
            want = ridge.target_mean + ridge._kernel(feats[i:i + 1], feats[keep], gamma) @ a
            assert torch.allclose(got[gi * D + i].double(), want[0], atol=1e-4), (gi, i)


# ----- an unseen width: resized from a fit layout (layouts.resize) --------------------------------
def test_resize_widening_keeps_the_function_and_cropping_keeps_shapes():
    from generators.vqar.layouts import resize, source_for

    arch = {"name": "mlp", "in_features": 5, "out_features": 3, "width": 4, "depth": 2, "activation": "relu"}
    small, wide, narrow = (ParamLayout.from_config({**arch, "width": w}) for w in (4, 7, 3))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, small.num_params, generator=g)
    x = torch.randn(9, 5, generator=g)
    up = resize(w, small, wide)
    assert up.shape == (2, wide.num_params)
    for i in range(2):
        a = small.load_into(small.build_module(), w[i])(x)
        b = wide.load_into(wide.build_module(), up[i])(x)
        assert torch.allclose(a, b, atol=1e-5)
    down = resize(w, small, narrow)
    assert down.shape == (2, narrow.num_params) and bool(torch.isfinite(down).all())
    assert source_for(wide, [narrow, small]) == 1 and source_for(narrow, [small, wide]) == 0  # widest inside; else nearest


def test_unseen_width_is_the_resized_sample_of_a_fit_width(mixed_gen, widths_zoo):
    import dataclasses

    from generators.vqar.layouts import resize

    layouts = sorted(_layouts(widths_zoo), key=lambda lay: lay.arch["width"])  # widths 4 and 6
    other = ParamLayout.from_config({**layouts[0].arch, "width": 9})
    gen = mixed_gen
    saved = gen.config
    gen.config = dataclasses.replace(saved, head_fit="none")
    try:
        w, got = gen.sample(3, "digits-pair:1-2", seed=1, layout=other)
        src, _ = gen.sample(3, "digits-pair:1-2", seed=1, layout=layouts[1].layout_id)
    finally:
        gen.config = saved
    assert got == other and torch.equal(w, resize(src, layouts[1], other))
    with pytest.raises(UserError, match="unseen_layout"):
        VQAutoregressive(unseen_layout="crop")


# ----- residual-VQ levels and the leave-one-out codebook ---------------------------------------------
def test_residual_levels_encode_decode_and_count_per_level():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, generator=g)
    mask = torch.ones_like(x, dtype=torch.bool)
    torch.manual_seed(0)
    one, two = ChunkVQVAE(4, 8, 4, hidden=0), ChunkVQVAE(4, 8, 4, hidden=0, levels=2)
    errs = []
    for vq in (one, two):
        train_vqvae(vq, x, mask, steps=20, batch_size=128, lr=1e-3, generator=g)
        idx = vq.encode(x, mask)
        rec = vq.decode(idx.reshape(len(x), -1)).reshape(len(x), 4)
        errs.append(float((rec - x).pow(2).mean()))
    assert idx.shape == (400, 2) and errs[1] < errs[0]  # the second level quantizes what the first left
    h = codebook_health(idx.reshape(-1), 8, levels=2)
    assert h["codebook_size"] == 16 and len(h["level_usage_fractions"]) == 2 and h["tokens"] == 800


def test_fit_keeps_leave_one_out_statistics_and_levels_sample(widths_zoo):
    zs = ZooStore(widths_zoo, create=False)
    gen = VQAutoregressive.fit(zs, "width = 4", last=True, metric="test_acc", **{**TINY, "vq_levels": 2})
    assert "l0_lnorm" in gen.modules and "loo_residual_relative_mse" in gen.fit_info["codebook"]
    lay = gen.layouts[0]
    assert len(gen._layout_tokens(lay).tensor_id) == 2 * ChunkTokenizer(lay, TINY["chunk_size"]).num_tokens
    w, got = gen.sample(2, "digits-pair:0-1", seed=0)
    assert w.shape == (2, lay.num_params) and bool(torch.isfinite(w).all())
    plain = VQAutoregressive.fit(zs, "width = 4", last=True, metric="test_acc", **{**TINY, "token_residuals": "fit"})
    assert "l0_lnorm" not in plain.modules and "loo_residual_relative_mse" not in plain.fit_info["codebook"]


def test_cached_generation_matches_teacher_forcing():
    """Greedy sampling with the preallocated key/value cache picks what the full causal pass scores highest."""
    from generators.vqar.prior import TokenPrior

    torch.manual_seed(0)
    prior = TokenPrior(8, 2, 16, 6, 4, d_model=16, depth=2, heads=2, dropout=0.0).eval()
    cond, desc = torch.randn(3, 4), torch.randn(6)
    tid, pos = torch.tensor([0] * 5 + [1] * 4), torch.arange(9)
    out = prior.generate(cond, desc, tid, pos, 0.0, 0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = prior(cond, desc, tid, pos, out)
    assert torch.equal(logits.argmax(-1), out)
