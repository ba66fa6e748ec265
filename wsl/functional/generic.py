"""The generic path: any architecture (a registered builder, a user's nn.Module) under torch.func.

    vmap(functional_call(module, (params_i, buffers_i), x))

over the population, with the module in train or eval mode as asked. Buffers
travel as batched inputs: in eval mode BatchNorm reads each model's running
statistics; in train mode it uses each model's batch statistics and updates
its running statistics in place in *our copies* of the buffers (vmap batches
the in-place update), which population_forward returns as the new buffers.
Integer buffers are handed to the module in their own dtype (rounded from the
float vector) and come back as floats.

Not batchable, so refused with a UserError: a BatchNorm with momentum=None in
train mode (a cumulative average reads the counter as a Python number).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from store.errors import UserError
from store.layout import BUFFER_DTYPES
from wsl.functional.common import Call, module_for

_BN = nn.modules.batchnorm._BatchNorm


@contextmanager
def _momentum(module: nn.Module, momentum: float | None):
    """Temporarily give every BatchNorm of the module this momentum (None: leave them)."""
    if momentum is None:
        yield
        return
    bns = [m for m in module.modules() if isinstance(m, _BN)]
    old = [m.momentum for m in bns]
    try:
        for m in bns:
            m.momentum = momentum
        yield
    finally:
        for m, o in zip(bns, old):
            m.momentum = o


def generic(call: Call, x: torch.Tensor) -> torch.Tensor:
    """vmap(functional_call) over the population: works for any registered architecture."""
    from torch.func import functional_call, vmap

    layout = call.layout
    module = module_for(layout)
    module.train(call.train)
    if call.features and not hasattr(module, "features"):
        raise UserError(f"architecture {call.cfg.get('name')!r} has no features() method", "use features=False")
    if call.train and call.bn_momentum is None:
        bad = [n for n, m in module.named_modules() if isinstance(m, _BN) and m.momentum is None and m.track_running_stats]
        if bad:
            raise UserError(f"BatchNorm {bad[0]!r} has momentum=None (a cumulative average), which cannot be "
                            "trained batched", "give it a momentum (e.g. nn.BatchNorm2d(c, momentum=0.1))")
    params = {e.name: call.params[e.name] for e in layout.param_entries}
    buffers = {}
    for e in layout.buffer_entries:
        t = call.params[e.name]
        if e.dtype is not None:
            t = t.detach().round().to(BUFFER_DTYPES[e.dtype])
        elif call.train:
            t = t.detach().clone()  # the module updates it in place: never the caller's tensor
        buffers[e.name] = t

    def one(p, b, xb):
        if call.features:
            return _call_features(module, p, b, xb)
        return functional_call(module, (p, b), (xb,))

    with _momentum(module, call.bn_momentum if call.train else None):
        out = vmap(one, in_dims=(0, 0, None if call.shared else 0),
                   randomness="different" if call.train else "error")(params, buffers, x)
    if call.train:
        for e in layout.buffer_entries:
            call.new_buffers[e.name] = buffers[e.name].to(layout.torch_dtype)
    return out.transpose(1, 2).contiguous() if call.batch_last and not call.features else out


class _Features(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, t):
        return self.m.features(t)


def _call_features(module, p, b, xb):
    from torch.func import functional_call

    return functional_call(_Features(module), ({f"m.{k}": v for k, v in p.items()},
                                               {f"m.{k}": v for k, v in b.items()}), (xb,))
