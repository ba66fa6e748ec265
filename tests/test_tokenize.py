"""Neuron tokens and fixed-size chunks both invert exactly, for every architecture."""
from __future__ import annotations

import pytest
import torch

from wsl import ParamLayout, UserError
from wsl.tokenize import ChunkTokenizer, NeuronTokenizer, tokenizer_from_dict

ARCHS = [
    {"name": "mlp", "in_features": 64, "out_features": 10, "width": 16, "depth": 2},
    {"name": "cnn2d", "in_channels": 1, "image_size": 8, "out_features": 10, "width": 4},
    {"name": "cnn1d", "in_channels": 1, "length": 40, "out_features": 10, "width": 6, "depth": 3},
    {"name": "transformer", "seq_len": 10, "token_dim": 4, "out_features": 10, "width": 8, "depth": 1, "heads": 2},
    {"name": "siren", "in_features": 2, "out_features": 1, "width": 8, "depth": 2},
]


def weights(layout, n=3):
    return torch.randn(n, layout.num_params)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["name"])
@pytest.mark.parametrize("make", [lambda L: NeuronTokenizer(L), lambda L: NeuronTokenizer(L, max_token=20),
                                  lambda L: ChunkTokenizer(L, 16), lambda L: ChunkTokenizer(L, 7, per_tensor=False)],
                         ids=["neuron", "neuron-max20", "chunk16", "chunk7-flat"])
def test_roundtrip_exact(arch, make):
    layout = ParamLayout.from_config(arch)
    tok = make(layout)
    w = weights(layout)
    t = tok.encode(w)
    assert t.shape == (3, tok.num_tokens, tok.token_dim)
    assert torch.equal(tok.decode(t), w)
    assert torch.equal(tok.decode(tok.encode(w[1])), w[1])
    assert (t[:, ~tok.mask] == 0).all()  # padding is zero
    assert int(tok.mask.sum()) == layout.num_params
    again = tokenizer_from_dict(tok.to_dict())
    assert torch.equal(again.index, tok.index)
    # padding values do not leak into the decoded weights
    noisy = t.clone()
    noisy[:, ~tok.mask] = 123.0
    assert torch.equal(tok.decode(noisy), w)


def test_neuron_rows_are_units():
    layout = ParamLayout.from_config(ARCHS[0])
    tok = NeuronTokenizer(layout)
    w = weights(layout, 1)[0]
    p = layout.unflatten(w)
    t = tok.encode(w)
    # first token: unit 0 of layer 0 = its 64 incoming weights and its bias
    assert torch.equal(t[0, :65], torch.cat([p["layers.0.weight"][0], p["layers.0.bias"][:1]]))
    assert tok.num_tokens == 16 + 16 + 10
    assert tok.token_tensor.tolist()[:17] == [0] * 16 + [2]
    assert tok.token_position.tolist()[15:18] == [15, 0, 1]
    cnn = ParamLayout.from_config(ARCHS[1])
    ct = NeuronTokenizer(cnn)
    pc = cnn.unflatten(weights(cnn, 1)[0])
    assert torch.equal(ct.encode(cnn.flatten(pc))[1, :10],
                       torch.cat([pc["convs.0.weight"][1].reshape(-1), pc["convs.0.bias"][1:2]]))


def test_chunks_have_fixed_size_and_stay_in_their_tensor():
    layout = ParamLayout.from_config(ARCHS[0])
    tok = ChunkTokenizer(layout, 32)
    assert tok.token_dim == 32
    sizes = tok.mask.sum(1)
    for t in range(tok.num_tokens):
        e = layout.entries[tok.token_tensor[t]]
        idx = tok.index[t, :sizes[t]]
        assert (idx >= e.offset).all() and (idx < e.offset + e.numel).all()


def test_bad_input():
    layout = ParamLayout.from_config(ARCHS[0])
    tok = ChunkTokenizer(layout, 32)
    with pytest.raises(UserError, match="values per model"):
        tok.encode(torch.randn(2, layout.num_params + 1))
    with pytest.raises(UserError, match="tokens have shape"):
        tok.decode(torch.randn(2, tok.num_tokens, 31))
    with pytest.raises(UserError, match="chunk_size"):
        ChunkTokenizer(layout, 0)
