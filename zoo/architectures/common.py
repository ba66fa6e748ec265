"""What every built-in architecture shares: config checking and weight initialisation.

Configs are user input (spec files), so `take` names every unknown or missing
key and every out-of-range value. Keys a family gained after stores were
written (`batchnorm` and its knobs on cnn2d / cnn1d) are *optional*: they
appear in the full config only when they differ from their default, so a
config without them keeps the layout_id (and model_id) it always had.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from store.errors import UserError

INITS = ("default", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "normal")
BN_KEYS = ("batchnorm", "bn_momentum", "bn_eps")
BN_DEFAULTS = {"batchnorm": False, "bn_momentum": 0.1, "bn_eps": 1e-5}
WITH_BATCHNORM = ("cnn2d", "cnn1d", "resnet", "resnet1d")


def take(config: Mapping[str, Any], defaults: Mapping[str, Any], required: tuple[str, ...],
         optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, check required and unknown keys; `optional` keys are kept only when not default."""
    name = config.get("name")
    optional = dict(optional or {})
    allowed = set(defaults) | set(required) | set(optional)
    unknown = sorted(set(config) - allowed - {"name"})
    bn_asked = [k for k in unknown if k in BN_KEYS]
    if bn_asked:
        raise UserError(f"architecture {name!r} has no BatchNorm (the spec sets {', '.join(bn_asked)})",
                        f"BatchNorm is available in: {', '.join(WITH_BATCHNORM)}; remove the key or pick one of those")
    if unknown:
        raise UserError(f"architecture {name!r} has unknown keys {unknown}", f"allowed keys: {', '.join(sorted(allowed))}")
    missing = [k for k in required if k not in config]
    if missing:
        raise UserError(f"architecture {name!r} is missing {missing}",
                        "give them, or build the config with zoo.architectures.config_for(dataset, ...)")
    out = {**defaults, **config}
    for key in ("width", "depth"):
        if key in out and (not isinstance(out[key], int) or isinstance(out[key], bool)
                           or out[key] < (1 if key == "width" else 0)):
            raise UserError(f"architecture {name!r} has {key}={out[key]!r}", f"{key} must be a positive integer")
    if "dropout" in out and not (0.0 <= float(out["dropout"]) < 1.0):
        raise UserError(f"architecture {name!r} has dropout={out['dropout']!r}", "dropout must be in [0, 1)")
    if out.get("init", "default") not in INITS:
        raise UserError(f"architecture {name!r} has init={out['init']!r}", f"use one of: {', '.join(INITS)}")
    if "batchnorm" in optional or "batchnorm" in defaults:
        _check_batchnorm(name, config, out)
        if "batchnorm" in optional:  # optional BatchNorm: absent from the full config unless it is on
            if out.get("batchnorm"):
                out.update({k: out.get(k, optional[k]) for k in ("bn_momentum", "bn_eps")})
            else:
                for k in BN_KEYS:
                    out.pop(k, None)
    return out


def _check_batchnorm(name: str, config: Mapping[str, Any], out: dict) -> None:
    bn = out.get("batchnorm", False)
    if not isinstance(bn, bool):
        raise UserError(f"architecture {name!r} has batchnorm={bn!r}", "batchnorm must be true or false")
    knobs = [k for k in ("bn_momentum", "bn_eps") if k in config]
    if knobs and not bn:
        raise UserError(f"architecture {name!r} sets {', '.join(knobs)} without batchnorm = true",
                        "set batchnorm = true, or remove those keys")
    m = out.get("bn_momentum", BN_DEFAULTS["bn_momentum"])
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0.0 < float(m) <= 1.0:
        raise UserError(f"architecture {name!r} has bn_momentum={m!r}",
                        "bn_momentum must be a number in (0, 1] (torch's momentum: the new batch's weight)")
    e = out.get("bn_eps", BN_DEFAULTS["bn_eps"])
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not float(e) > 0:
        raise UserError(f"architecture {name!r} has bn_eps={e!r}", "bn_eps must be a positive number")
    for k in ("bn_momentum", "bn_eps"):
        if k in out:
            out[k] = float(out[k])


def apply_init(module: nn.Module, init: str) -> None:
    """Re-initialise weight matrices / kernels; biases to zero (except 'default')."""
    if init == "default":
        return
    fn = {
        "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "xavier_uniform": nn.init.xavier_uniform_,
        "xavier_normal": nn.init.xavier_normal_,
        "normal": lambda w: nn.init.normal_(w, std=0.02),
    }[init]
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fn(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
