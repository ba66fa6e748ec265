"""Unseen-dataset protocols as data: which tasks a generator is fit on, which are held out.

A `Protocol` is a task family, a glob pattern over `models.dataset` (fnmatch rules: `*`, `?`,
`[...]`; e.g. `digits-subset:*`), and how its held-out tasks are chosen: either an explicit
list, or a random split (`split_seed` S and a held-out count K). A generator fit under a
protocol sees every zoo checkpoint of the seen tasks and, of a held-out task, only that
task's training samples (through its dataset condition).

    from generators.protocols import parse_protocol, resolve
    p = parse_protocol("digits-subsets")                              # a built-in name
    p = parse_protocol("pattern=digits-pair:*,split-seed=3,held-out=10")  # inline
    p = parse_protocol("my-protocol.toml")                            # a small TOML file
    r = resolve(p, store, where="zoo = 'digits-pairs'")               # against what the store holds
    where, params = r.seen_filter("epoch = 20")                       # for Gen.fit(store, where, params=params)

The random-split rule, one function (`draw_held_out`) for every protocol: the family's tasks
sorted by name (Python string order), then `numpy.random.default_rng(S).choice(len, K,
replace=False)` picks the held-out ones. Under `resolve` the family is the matching tasks
the store holds with at least one finished model (after the user's `--where`).

Built-ins (`BUILTINS`; docs/generators.md "Protocols"):
- `digits-pairs`: the 45 pair tasks, 35 seen / 10 held out: the pairs generators/protocol.py
  fixed (drawn once with default_rng(1) under two constraints: every digit in some held-out
  pair, each held-out pair's digits in the same label roles among the seen pairs).
- `digits-pairs-random`: the same 45 tasks, a random split (seed 0, 10 held out): the figure
  the constrained split must be reported beside (docs/design.md, "Unseen-dataset protocols").
- `digits-subsets`: the 1,022 class-subset tasks of zoo/specs/digits-subsets.toml; 20 held out,
  listed explicitly so they never depend on a store: `draw_held_out(spec tasks, 0, 20)`
  (tests/test_protocols.py checks the list against the rule).

Why not a module per protocol: a protocol is a few values, so users define their own from
the command line or a TOML file with the same validation as the built-ins, and a fitted
generator can record the one it was fit under (`Resolution.to_dict`).
"""
from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from store import filters
from store.errors import UserError
from zoo.datasets import check_name

SYNTAX = ("a built-in name ({builtins}), a .toml file, or KEY=VALUE items separated by commas: "
          "pattern=digits-pair:*,split-seed=3,held-out=10 or pattern=digits-pair:*,held-out=digits-pair:0-2|digits-pair:4-9")
KEYS = ("name", "pattern", "held_out", "split_seed", "description")


def draw_held_out(tasks: Iterable[str], split_seed: int, count: int) -> list[str]:
    """The random-split rule: `count` of the tasks (sorted by name) drawn by default_rng(split_seed); sorted."""
    universe = sorted(set(tasks))
    if not 1 <= count < len(universe):
        raise UserError(f"a split of {len(universe)} task(s) with {count} held out leaves "
                        + ("no seen task" if count >= len(universe) else "no held-out task"),
                        f"hold out between 1 and {len(universe) - 1} task(s)" if len(universe) > 1
                        else "the family needs at least 2 tasks: widen the pattern or the --where")
    idx = np.random.default_rng(split_seed).choice(len(universe), size=count, replace=False)
    return sorted(universe[int(i)] for i in idx)


@dataclass(frozen=True)
class Protocol:
    """A task family (glob over models.dataset) and its held-out tasks: a list, or split_seed + count."""

    name: str
    pattern: str
    held_out: tuple[str, ...] | int  # the tasks, or (with split_seed) how many to draw
    split_seed: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"protocol {self.name!r}"
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise UserError(f"protocol name {self.name!r} is not letters, digits, '-', '_' or '.'",
                            "give e.g. name=my-pairs")
        if not isinstance(self.pattern, str) or not self.pattern.strip():
            raise UserError(f"{where} has no task pattern", "give e.g. pattern=digits-pair:* (a glob over models.dataset)")
        if not isinstance(self.description, str):
            raise UserError(f"{where}: description {self.description!r} is not a string", "give a string")
        if isinstance(self.held_out, bool) or not isinstance(self.held_out, (int, tuple, list)):
            raise UserError(f"{where}: held_out {self.held_out!r} is neither a task list nor a count",
                            "give a list of task names, or a count with split_seed")
        if isinstance(self.held_out, int):
            if isinstance(self.split_seed, bool) or not isinstance(self.split_seed, int) or self.split_seed < 0:
                raise UserError(f"{where}: a held-out count ({self.held_out}) needs a split seed >= 0, "
                                f"not {self.split_seed!r}", "add split-seed=S (e.g. split-seed=0)")
            if self.held_out < 1:
                raise UserError(f"{where}: held-out count {self.held_out} < 1", "hold out at least one task")
            return
        object.__setattr__(self, "held_out", tuple(self.held_out))
        if self.split_seed is not None:
            raise UserError(f"{where} has both a held-out list and a split seed ({self.split_seed})",
                            "give either held-out=TASK|TASK... or split-seed=S with held-out=COUNT")
        if not self.held_out:
            raise UserError(f"{where} has an empty held-out list", "name at least one task to hold out")
        for t in self.held_out:
            if not isinstance(t, str):
                raise UserError(f"{where}: held-out task {t!r} is not a name", "give dataset names, e.g. digits-pair:0-2")
            if not fnmatch.fnmatchcase(t, self.pattern):
                raise UserError(f"{where}: held-out task {t!r} is unknown: not a task of the family {self.pattern!r}",
                                "name tasks the pattern matches")
            try:
                check_name(t)
            except UserError as e:
                raise UserError(f"{where}: held-out task {t!r} is unknown ({e.message})", e.fix) from None
        dup = sorted({t for t in self.held_out if self.held_out.count(t) > 1})
        if dup:
            raise UserError(f"{where} holds out {dup} more than once", "name each held-out task once")

    @property
    def is_random_split(self) -> bool:
        return isinstance(self.held_out, int)

    # ----- as data ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "pattern": self.pattern}
        if self.is_random_split:
            d.update(split_seed=self.split_seed, held_out=self.held_out)
        else:
            d["held_out"] = list(self.held_out)
        if self.description:
            d["description"] = self.description
        return d

    def to_inline(self) -> str:
        """The `--protocol` argument that parses back to this protocol (a built-in: just its name)."""
        if BUILTINS.get(self.name) == self:
            return self.name
        parts = [f"name={self.name}", f"pattern={self.pattern}"]
        if self.is_random_split:
            parts += [f"split-seed={self.split_seed}", f"held-out={self.held_out}"]
        else:
            parts.append("held-out=" + "|".join(self.held_out))
        if self.description:
            parts.append(f"description={self.description}")
        return ",".join(parts)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "protocol") -> "Protocol":
        if not isinstance(d, Mapping):
            raise UserError(f"{source} is not a table of keys", f"give keys {', '.join(KEYS)}")
        unknown = sorted(set(d) - set(KEYS))
        if unknown:
            raise UserError(f"{source} has unknown key(s) {unknown}", f"allowed keys: {', '.join(KEYS)}")
        for k in ("pattern", "held_out"):
            if k not in d:
                raise UserError(f"{source} has no {k!r}", "give pattern and held_out (a task list, or a count with split_seed)")
        return cls(name=d.get("name", "custom"), pattern=d["pattern"], held_out=d["held_out"],
                   split_seed=d.get("split_seed"), description=d.get("description", ""))

    def to_toml(self) -> str:
        """The protocol as a small TOML file (from_toml reads it back exactly).

        Written by hand: flat keys of strings, integers and one list of strings need no
        TOML writer dependency; json.dumps spells a string as a valid TOML basic string.
        """
        lines = []
        for k, v in self.to_dict().items():
            if isinstance(v, list):
                lines.append(f"{k} = [\n" + "".join(f"    {_toml_str(t)},\n" for t in v) + "]")
            elif isinstance(v, int):
                lines.append(f"{k} = {v}")
            else:
                lines.append(f"{k} = {_toml_str(v)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, source: str = "protocol TOML") -> "Protocol":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{source} is not valid TOML ({e})", "fix the syntax; see docs/generators.md, Protocols") from None
        return cls.from_dict(data, source)


def _toml_str(s: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in s):
        raise UserError(f"protocol text {s!r} holds control characters", "use printable characters only")
    return json.dumps(s, ensure_ascii=False)


# ----- built-ins ------------------------------------------------------------------
_PAIRS_CONSTRAINED = ((0, 2), (0, 6), (1, 3), (1, 7), (2, 3), (2, 4), (3, 8), (4, 9), (5, 8), (6, 8))
# draw_held_out(the 1,022 tasks of zoo/specs/digits-subsets.toml, split_seed=0, count=20), written out
_SUBSETS_HELD_OUT_CODES = (82, 115, 146, 238, 322, 357, 539, 540, 578, 593, 633, 654, 659, 670, 747, 847, 911, 939,
                           968, 1012)

BUILTINS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("digits-pairs", "digits-pair:*", tuple(f"digits-pair:{a}-{b}" for a, b in _PAIRS_CONSTRAINED),
             description="45 digit-pair tasks, 10 held out: drawn with default_rng(1) under two constraints (every "
                         "digit in a held-out pair; each held-out pair's digits in the same label roles among the "
                         "seen pairs); report digits-pairs-random beside it"),
    Protocol("digits-pairs-random", "digits-pair:*", 10, split_seed=0,
             description="45 digit-pair tasks, a random split: 10 held out by default_rng(0)"),
    Protocol("digits-subsets", "digits-subset:*", tuple(f"digits-subset:{c}" for c in _SUBSETS_HELD_OUT_CODES),
             description="1,022 class-subset tasks (RPG's codes), 20 held out: draw_held_out(the spec's tasks, "
                         "split_seed=0, count=20)"),
)}


def parse_protocol(arg: str | Path | Protocol) -> Protocol:
    """A protocol from a built-in name, a TOML file, or inline KEY=VALUE items (see SYNTAX)."""
    if isinstance(arg, Protocol):
        return arg
    syntax = SYNTAX.format(builtins=", ".join(BUILTINS))
    if not isinstance(arg, (str, Path)) or not str(arg).strip():
        raise UserError(f"--protocol {arg!r} is empty", f"give {syntax}")
    text = str(arg).strip()
    if text in BUILTINS:
        return BUILTINS[text]
    path = Path(text)
    if path.is_file():
        return Protocol.from_toml(path.read_text(), source=f"protocol file {text}")
    if "=" in text:
        return parse_inline(text)
    if text.endswith(".toml"):
        raise UserError(f"protocol file {text} does not exist", "give an existing .toml file")
    raise UserError(f"unknown --protocol {text!r}", f"give {syntax}")


_INLINE_KEYS = {"name": "name", "pattern": "pattern", "held-out": "held_out", "held_out": "held_out",
                "split-seed": "split_seed", "split_seed": "split_seed", "description": "description"}


def parse_inline(text: str) -> Protocol:
    """`pattern=P,split-seed=S,held-out=K` or `pattern=P,held-out=T1|T2|...` (optional name=, description=).

    Items split only at a comma followed by a known key and '=', so a task name that holds
    commas (sciml:sine:freq=2,amp=1) stays whole; held-out names are separated by '|'. An
    unknown key is an error (in held-out names, through the task-name check).
    """
    keys = "|".join(re.escape(k) for k in _INLINE_KEYS)
    items = re.split(rf",\s*(?=(?:{keys})\s*=)", text.strip())
    d: dict[str, Any] = {}
    for item in items:
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or k not in _INLINE_KEYS:
            raise UserError(f"--protocol item {item!r} is not KEY=VALUE with KEY in {sorted(set(_INLINE_KEYS))}",
                            "write e.g. pattern=digits-pair:*,split-seed=3,held-out=10")
        key = _INLINE_KEYS[k]
        stray = _stray_key(v, key == "held_out")
        if stray:
            raise UserError(f"--protocol item {stray}=... is not KEY=VALUE with KEY in {sorted(set(_INLINE_KEYS))}",
                            "write e.g. pattern=digits-pair:*,split-seed=3,held-out=10")
        if key in d:
            raise UserError(f"--protocol gives {k} twice", "give each key once")
        d[key] = v
    if "split_seed" in d:
        d["split_seed"] = _inline_int(d["split_seed"], "split-seed")
    if "held_out" in d:
        h = d["held_out"]
        d["held_out"] = _inline_int(h, "held-out") if re.fullmatch(r"[+-]?\d+", h) else \
            tuple(t.strip() for t in h.split("|") if t.strip())
    return Protocol.from_dict(d, source=f"--protocol {text!r}")


def _stray_key(value: str, task_names: bool) -> str | None:
    """A `,word=` in a value that is not a task name's parameter list: an item with a key we do not know.

    In held-out task names a comma may continue a `k=v` parameter list (sciml:sine:freq=2,amp=1):
    allowed where the text before the comma ends in `=VALUE`.
    """
    for part in value.split("|") if task_names else [value]:
        for m in re.finditer(r",\s*([A-Za-z_][\w-]*)\s*=", part):
            if not (task_names and re.search(r"=[^,=]*$", part[:m.start()])):
                return m.group(1)
    return None


def _inline_int(v: str, key: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise UserError(f"--protocol {key}={v!r} is not an integer", f"write e.g. {key}=3") from None


# ----- resolution against a store ---------------------------------------------------
@dataclass(frozen=True)
class Resolution:
    """A protocol applied to a store: its seen and held-out tasks, and each task's finished-model count."""

    protocol: Protocol
    seen: tuple[str, ...]
    held_out: tuple[str, ...]
    models: dict[str, int] = field(default_factory=dict)

    def seen_filter(self, where: str | None = None, params: Mapping[str, Any] | None = None,
                    param: str = "protocol_seen") -> tuple[str, dict[str, Any]]:
        """(condition, params) over the filters pool: `where` (its own `params`) AND the seen tasks, bound as a list."""
        return _task_filter(where, params, param, self.seen)

    def held_out_filter(self, where: str | None = None, params: Mapping[str, Any] | None = None,
                        param: str = "protocol_held_out") -> tuple[str, dict[str, Any]]:
        """(condition, params): `where` AND the held-out tasks."""
        return _task_filter(where, params, param, self.held_out)

    def to_dict(self) -> dict[str, Any]:
        """The record a fitted generator keeps: the protocol and the tasks on each side."""
        return {"protocol": self.protocol.to_dict(), "seen": list(self.seen), "held_out": list(self.held_out)}

    def split(self):
        """The split as a fit takes it (`WeightGenerator.fit(..., protocol=resolution.split())`)."""
        from generators.training_set import Split

        return Split(self.protocol.name, self.seen, self.held_out, spec=self.protocol.to_dict())


def _task_filter(where, params, name, tasks) -> tuple[str, dict[str, Any]]:
    bound = dict(params or {})
    return filters.compose(where, filters.in_list("models.dataset", name, tasks, bound)), bound


def store_tasks(store, where: str | None = None, params: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Task -> number of finished models with a checkpoint, over the models `where` (with `params`) selects."""
    bound = dict(params or {})
    bound.setdefault("protocol_done", "done")
    q, bound = filters.model_query(where, "checkpoints.checkpoint_id IS NOT NULL", "models.status = $protocol_done",
                                   columns="DISTINCT models.dataset AS dataset, model_id", order_by=None, params=bound)
    df = store.sql(f"SELECT dataset, count(*) AS n FROM ({q}) GROUP BY dataset ORDER BY dataset", bound)
    return {str(d): int(n) for d, n in zip(df["dataset"], df["n"])}


def resolve(protocol: Protocol | str, store, where: str | None = None,
            params: Mapping[str, Any] | None = None) -> Resolution:
    """Seen and held-out tasks of `protocol` among the tasks the store holds (under `where`, with its `params`).

    Errors (UserError, nothing written): the pattern matches no task; a held-out task has no
    finished zoo model; a split leaves no seen (or no held-out) task.
    """
    p = parse_protocol(protocol)
    held_by_store = store_tasks(store, where, params)
    scope = f"store {getattr(store, 'path', store)}" + (f" under --where {filters.clean(where)!r}" if filters.clean(where) else "")
    family = sorted(t for t in held_by_store if fnmatch.fnmatchcase(t, p.pattern))
    if not family:
        some = ", ".join(sorted(held_by_store)[:5]) or "none"
        raise UserError(f"protocol {p.name!r}: pattern {p.pattern!r} matches no task with finished models in {scope}",
                        f"train the zoo first, or fix the pattern (datasets there: {some})")
    if p.is_random_split:
        held = draw_held_out(family, p.split_seed, p.held_out)
    else:
        missing = [t for t in p.held_out if t not in held_by_store]
        if missing:
            raise UserError(f"protocol {p.name!r}: held-out task(s) {missing} have no finished zoo models in {scope}",
                            "train the zoo on them (wsl zoo train SPEC) or hold out other tasks")
        held = list(p.held_out)
    seen = [t for t in family if t not in set(held)]
    if not seen:
        raise UserError(f"protocol {p.name!r} holds out every task of {p.pattern!r} in {scope}: no seen task is left",
                        "hold out fewer tasks, or train the zoo on more tasks of the family")
    return Resolution(p, tuple(seen), tuple(held), {t: held_by_store[t] for t in family})


# ----- evaluating held-out tasks ----------------------------------------------------
def tasks_seen_by(fit_info: Mapping[str, Any]) -> set[str]:
    """Every task a fitted generator saw: its training conditions, and its protocol record's seen list."""
    seen = set((fit_info or {}).get("conditions") or {})
    record = (fit_info or {}).get("protocol")
    if isinstance(record, Mapping):
        seen |= set(record.get("seen") or ())
    return seen


def check_held_out_unseen(tasks: Iterable[str], fit_info: Mapping[str, Any], generator: str = "the generator") -> None:
    """Refuse (UserError) to evaluate as held out a task the generator was fit on."""
    seen = tasks_seen_by(fit_info)
    bad = [t for t in ([tasks] if isinstance(tasks, str) else tasks) if t in seen]
    if bad:
        raise UserError(f"{generator} was fit on {bad}: a task it saw cannot be evaluated as held out",
                        "evaluate it as a seen task, or fit the generator under a protocol that holds it out")
