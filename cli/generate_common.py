"""What the `wsl generate` commands share: the store they open, --set and --target-acc parsing, the summary print."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

from cli import common
from store.errors import UserError


def open_store(store: Optional[Path], create: bool):
    from store.store import ZooStore

    return ZooStore(common.store_path(store), create=create)


def parse_options(options: List[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs -> dict (values parsed as JSON where they parse, else kept as strings)."""
    from generators.set_options import parse_set_options

    return parse_set_options(options)


def target(target_acc: Optional[float]) -> Optional[dict[str, float]]:
    if target_acc is None:
        return None
    if not (0.0 <= target_acc <= 1.0):
        raise UserError(f"--target-acc {target_acc} is outside [0, 1]", "give an accuracy such as 1.0 or 0.95")
    return {"test_acc": float(target_acc)}


def emit_summary(summary: dict[str, Any], fmt: str, title: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(common.json_safe(summary), default=str) + "\n")
    else:
        common.print_summary(summary, title)
