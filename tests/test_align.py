"""Hidden-unit permutations: random ones keep every output, weight matching pulls two seeds together."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from wsl import ParamLayout, UserError
from wsl.align import align, apply_permutation, permutation_spec, random_permutation, weight_matching
from wsl.functional import population_forward

sys.path.insert(0, str(Path(__file__).parent))

ARCHS = {
    "mlp": ({"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 2}, (64,)),
    "siren": ({"name": "siren", "in_features": 2, "out_features": 1, "width": 8, "depth": 2}, (2,)),
    "cnn2d": ({"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 10, "width": 4}, (1, 8, 8)),
    "cnn2d_nohidden": ({"name": "cnn2d", "in_channels": 2, "image_size": 8, "out_features": 3, "width": 3,
                        "hidden": 0, "pooling": "avg"}, (2, 8, 8)),
    "cnn1d": ({"name": "cnn1d", "in_channels": 1, "length": 40, "out_features": 10, "width": 6, "depth": 3}, (1, 40)),
}


def zoo(arch, n=4, seed=0):
    torch.manual_seed(seed)
    layout = ParamLayout.from_config(arch)
    return layout, layout.flatten([layout.build_module() for _ in range(n)])


@pytest.mark.parametrize("key", list(ARCHS))
def test_random_permutation_preserves_outputs(key):
    arch, shape = ARCHS[key]
    layout, w = zoo(arch)
    x = torch.randn(9, *shape)
    aug = random_permutation(w, layout, torch.Generator().manual_seed(1))
    assert not torch.equal(aug, w)
    with torch.no_grad():
        torch.testing.assert_close(population_forward(layout, layout.unflatten(aug), x),
                                   population_forward(layout, layout.unflatten(w), x), rtol=1e-5, atol=1e-5)
    one = random_permutation(w[0], layout)
    assert one.shape == w[0].shape
    assert torch.equal(one.sort().values, w[0].sort().values)  # the same values, reordered


@pytest.mark.parametrize("key", list(ARCHS))
def test_weight_matching_undoes_a_permutation(key):
    arch, _ = ARCHS[key]
    layout, w = zoo(arch, n=1)
    shuffled = random_permutation(w[0], layout, torch.Generator().manual_seed(3))
    aligned = align(w[0], shuffled, layout)
    assert torch.equal(aligned, w[0])


def test_alignment_reduces_distance_between_two_seeds():
    from _wsl_zoo import mlp_zoo

    z = mlp_zoo()
    layout = z["layout"]
    final = z["weights"][-1]
    good = torch.argsort(-z["lr"])[:6]  # trained models, different seeds
    ref, others = final[good[0]], final[good[1:]]
    aligned = align(ref, others, layout)
    before = (others - ref).norm(dim=1)
    after = (aligned - ref).norm(dim=1)
    assert (after < before).all(), (before, after)
    # alignment is a permutation: norms and functions are unchanged
    torch.testing.assert_close(aligned.norm(dim=1), others.norm(dim=1))


def test_apply_permutation_checks_and_identity():
    arch, _ = ARCHS["mlp"]
    layout, w = zoo(arch, n=2)
    spec = permutation_spec(layout)
    ident = {g: torch.arange(s) for g, s in spec.groups.items()}
    assert torch.equal(apply_permutation(w, layout, ident), w)
    bad = dict(ident)
    bad["layers.0"] = torch.zeros(16, dtype=torch.long)
    with pytest.raises(UserError, match="not a permutation"):
        apply_permutation(w, layout, bad)
    with pytest.raises(UserError, match="no permutation"):
        apply_permutation(w, layout, {})
    tl = ParamLayout.from_config({"name": "transformer", "seq_len": 4, "token_dim": 2, "out_features": 2, "width": 4,
                                  "depth": 1, "heads": 2})
    with pytest.raises(UserError, match="supports"):
        random_permutation(torch.zeros(tl.num_params), tl)
    perms = weight_matching(w[0], w[1], layout)
    assert set(perms) == set(spec.groups)
