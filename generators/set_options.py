"""`--set KEY=VALUE` pairs -> a generator's options dict, for `wsl generate` and benchmarks/generate.py alike.

A value is parsed as JSON where it parses (numbers, booleans, lists, quoted strings), else kept as
the string it is. Imports nothing heavy: the CLI parses options before it loads any generator.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from store.errors import UserError


def parse_set_options(items: Iterable[str] | None, example: str = "latent_dim=16") -> dict[str, Any]:
    """--set KEY=VALUE pairs -> dict; a pair without '=' or without a key is a UserError."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set {item!r} is not KEY=VALUE", f"write e.g. --set {example}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
