"""Per-tensor standardization of flat weight vectors, with stored statistics.

Generators see weights whose scales differ by orders of magnitude between
tensors (a first-layer kernel vs a head bias). p-diff and most weight
generators standardize each parameter tensor with statistics of the training
population; the statistics travel with the generator so samples map back:

    norm = Normalizer.fit(weights, layout)   # weights [N, P]
    z = norm.transform(weights)              # [N, P], each tensor ~ mean 0, std 1
    w = norm.inverse(z)                      # == weights, bit for bit
    norm.save("gen/normalizer.json"); Normalizer.load("gen/normalizer.json")

Statistics: for each tensor of the layout, the mean and std over all models and
all entries of that tensor (std of a constant tensor is taken as 1). Buffers
(BatchNorm running statistics) are tensors like the others by default, so a
generator sees standardized statistics and its samples come back with their
own; `fit(..., include_buffers=False)` leaves them as they are (mean 0, std 1).

Exactness: arithmetic is float64 and `transform` returns float64 by default, so
`inverse(transform(w))` cast to w's dtype reproduces float32/16 weights exactly
(the float64 round-trip error is below half a float32 ulp for every weight
except nonzero values smaller than 2**-29 times their tensor's |mean|; zeros are
exact). Ask for `dtype=torch.float32` to halve memory: the round trip is then
within float32 rounding (about 1e-7 relative), not exact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from store.errors import UserError
from store.layout import ParamLayout

__all__ = ["Normalizer"]


class Normalizer:
    """Per-tensor mean/std of a layout's parameters; `transform` and `inverse` map [N, P] both ways."""

    def __init__(self, layout: ParamLayout, mean: torch.Tensor, std: torch.Tensor):
        mean = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean.numel() != len(layout) or std.numel() != len(layout):
            raise UserError(f"normalizer statistics have {mean.numel()} means and {std.numel()} stds "
                            f"but layout {layout.layout_id} has {len(layout)} tensors",
                            "fit the normalizer on weights of this layout")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise UserError("normalizer statistics contain NaN/inf or a non-positive std",
                            "fit it on finite weights")
        self.layout = layout
        self.mean = mean
        self.std = std
        sizes = torch.tensor([e.numel for e in layout.entries])
        # per-coordinate statistics, built once: [P]
        self._mean_p = torch.repeat_interleave(mean, sizes)
        self._std_p = torch.repeat_interleave(std, sizes)

    # ----- fitting ---------------------------------------------------------
    @classmethod
    def fit(cls, weights: torch.Tensor, layout: ParamLayout, min_std: float = 1e-8,
            include_buffers: bool = True) -> "Normalizer":
        """Statistics of each tensor over all models ([N, P] or [P]) and all of its entries (buffers: see above)."""
        w = layout.check_flat(weights).detach().to("cpu", torch.float64)
        w = w.reshape(-1, layout.num_params)
        means, stds = [], []
        for e in layout.entries:
            if e.buffer and not include_buffers:
                means.append(torch.tensor(0.0, dtype=torch.float64))
                stds.append(torch.tensor(1.0, dtype=torch.float64))
                continue
            block = w[:, e.offset:e.offset + e.numel]
            m = block.mean()
            s = block.std(unbiased=False) if block.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
            means.append(m)
            stds.append(s if s > min_std else torch.tensor(1.0, dtype=torch.float64))
        return cls(layout, torch.stack(means), torch.stack(stds))

    # ----- mapping ---------------------------------------------------------
    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mean_p.device != device:
            self._mean_p, self._std_p = self._mean_p.to(device), self._std_p.to(device)
        return self._mean_p, self._std_p

    def transform(self, weights: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Weights [N, P] or [P] -> standardized values (float64 unless `dtype` says otherwise)."""
        w = self.layout.check_flat(weights)
        m, s = self._stats(w.device)
        return ((w.to(torch.float64) - m) / s).to(dtype)

    def inverse(self, z: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Standardized values -> weights in the layout's dtype (or `dtype`)."""
        z = self.layout.check_flat(z, what="standardized weights", allow_nonfinite=True)
        m, s = self._stats(z.device)
        return (z.to(torch.float64) * s + m).to(dtype or self.layout.torch_dtype)

    # ----- persistence -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "per_tensor_standardization",
            "layout": self.layout.to_dict(),
            "layout_id": self.layout.layout_id,
            "names": self.layout.names,
            "mean": [float(v) for v in self.mean],  # float64 values round-trip through JSON exactly
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], layout: ParamLayout | None = None) -> "Normalizer":
        try:
            lay = layout or ParamLayout.from_dict(d["layout"])
            if lay.layout_id != d.get("layout_id", lay.layout_id):
                raise UserError(f"normalizer was fit for layout {d['layout_id']}, not {lay.layout_id}",
                                "use the layout the normalizer was fit on")
            return cls(lay, torch.tensor(d["mean"], dtype=torch.float64), torch.tensor(d["std"], dtype=torch.float64))
        except (KeyError, TypeError) as e:
            raise UserError(f"malformed normalizer state ({e})", "pass what Normalizer.to_dict wrote") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Normalizer":
        path = Path(path)
        if not path.exists():
            raise UserError(f"no normalizer at {path}", "give the file Normalizer.save wrote")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e})", "give the file Normalizer.save wrote") from None
        return cls.from_dict(d)

    def __repr__(self) -> str:
        return f"Normalizer(layout={self.layout.layout_id}, tensors={len(self.layout)})"
