"""Map a file's tensor names onto a layout's: identity, `--rename 'REGEX=REPL'` rules, or automatic by order.

Zoos name their tensors after their own module tree (`module_list.0.weight`,
`0.weight`, `fc1.w`), our layouts after ours (`layers.0.weight`). A mapping
is found once per distinct file signature (names + shapes) and applied to
every file that has it:

1. identity, when the file's names are the layout's;
2. rename rules, applied in order with `re.sub` to every name (`REPL` may use
   `\\1`); the renamed names must then be exactly the layout's, and two names
   renamed onto one are an error;
3. automatic: the file's tensors in module order (a torch.save state dict
   keeps it; safetensors names are put in natural order) zipped with the
   layout's tensors in its module's `state_dict()` order, accepted only when
   the counts match and every pair has the same shape and the same last name
   part (weight / bias / running_mean / ...). Integer tensors a layout does
   not name (num_batches_tracked when it keeps no counter) are left out and
   reported; anything else that does not fit is an error naming the first
   mismatch.

Buffers are names like any other: a layout that lists BatchNorm statistics
gets them mapped by the same rules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from store.errors import UserError
from store.layout import ParamLayout, build_architecture


@dataclass(frozen=True)
class RenameRule:
    pattern: re.Pattern
    repl: str
    text: str


def parse_rules(rules: Iterable[str] | str | None) -> list[RenameRule]:
    """'REGEX=REPL' strings (the first '=' splits; REPL may be empty) -> compiled rules."""
    if rules is None:
        return []
    if isinstance(rules, str):
        rules = [rules]
    out = []
    for text in rules:
        if "=" not in text:
            raise UserError(f"--rename {text!r} has no '='", "write it as REGEX=REPL, e.g. --rename '^module_list\\.=layers.'")
        pat, repl = text.split("=", 1)
        try:
            out.append(RenameRule(re.compile(pat), repl, text))
        except re.error as e:
            raise UserError(f"--rename {text!r}: {pat!r} is not a regular expression ({e})", "fix the pattern") from None
    return out


def apply_rules(names: Sequence[str], rules: Sequence[RenameRule], what: str) -> list[str]:
    """Rename every name; a bad replacement or two names onto one is a UserError naming both."""
    out = []
    for n in names:
        new = n
        for r in rules:
            try:
                new = r.pattern.sub(r.repl, new)
            except (re.error, IndexError) as e:
                raise UserError(f"--rename {r.text!r} fails on {n!r} ({e})", "check the groups REPL refers to") from None
        out.append(new)
    seen: dict[str, str] = {}
    for old, new in zip(names, out):
        if new in seen:
            raise UserError(f"--rename maps two tensors of {what} onto one name: {seen[new]!r} and {old!r} -> {new!r}",
                            "make the rules keep names apart (anchor the pattern, keep the index)")
        seen[new] = old
    return out


def module_order(layout: ParamLayout) -> list[str]:
    """The layout's names in its module's state_dict() order (the order files written by torch.save have)."""
    if layout.arch is None:
        return layout.names
    try:
        keys = list(build_architecture(layout.arch).state_dict().keys())
    except UserError:
        return layout.names
    names = set(layout.names)
    ordered = [k for k in keys if k in names]
    return ordered + [n for n in layout.names if n not in set(ordered)]


@dataclass
class NameMap:
    """How one file signature maps onto a layout: {file name: layout name}, how it was found, what was left out."""

    layout: ParamLayout
    names: dict[str, str]
    method: str  # identity | rename | automatic
    ignored: list[str] = field(default_factory=list)
    _take: np.ndarray | None = None  # indices into the file's value buffer, in layout order (None: the buffer as is)

    def as_dict(self) -> dict:
        return {"method": self.method, "names": {k: v for k, v in self.names.items() if k != v} or "identity",
                "ignored": self.ignored}


def find_mapping(names: Sequence[str], shapes: Sequence[tuple], floating: Sequence[bool], layout: ParamLayout,
                 rules: Sequence[RenameRule], what: str) -> NameMap:
    """The mapping from a file with these tensors onto `layout` (UserError naming `what` when there is none)."""
    target = {e.name: e.shape for e in layout.entries}
    shape_of = dict(zip(names, shapes))
    is_float = dict(zip(names, floating))
    if rules:
        renamed = apply_rules(names, rules, what)
        mapping = dict(zip(names, renamed))
        method = "rename"
    else:
        mapping = None
        if set(target) <= set(names) and all(is_float[n] is False for n in set(names) - set(target)):
            mapping = {n: n for n in names if n in target}
            method = "identity"
        else:
            mapping = _automatic(names, shapes, floating, layout, what)
            method = "automatic"
    # every layout tensor exactly once, with its shape; leftovers only integer tensors
    inverse = {v: k for k, v in mapping.items()}
    missing = [n for n in layout.names if n not in inverse]
    extra = [k for k, v in mapping.items() if v not in target]
    bad_extra = [k for k in extra if is_float[k]]
    if missing or bad_extra:
        shown = {k: mapping[k] for k in bad_extra[:4]}
        raise UserError(f"{what}: tensor names do not match layout {layout.layout_id} after {method} mapping: "
                        f"layout tensors with no source {missing[:5]}, source tensors with no place {shown or bad_extra[:5]}",
                        "give --arch of the architecture that wrote the files, or --rename 'REGEX=REPL' rules")
    for src, dst in mapping.items():
        if dst in target and tuple(shape_of[src]) != tuple(target[dst]):
            raise UserError(f"{what}: tensor {src!r} has shape {list(shape_of[src])}, layout tensor {dst!r} expects "
                            f"{list(target[dst])}", "give the --arch (width, depth, channels) the files were trained with")
    ignored = [k for k in names if mapping.get(k) not in target]
    m = NameMap(layout, {k: v for k, v in mapping.items() if v in target}, method, ignored)
    m._take = _gather_index(names, shapes, m.names, layout)
    return m


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _automatic(names, shapes, floating, layout: ParamLayout, what: str) -> dict[str, str]:
    ref = module_order(layout)
    ref_shapes = {e.name: e.shape for e in layout.entries}
    candidates = [list(range(len(names)))]
    ints = [i for i in range(len(names)) if not floating[i]]
    if ints:  # a layout without integer buffers: try again without them
        candidates.append([i for i in range(len(names)) if floating[i]])
    first_error = None
    for idx in candidates:
        if len(idx) != len(ref):
            first_error = first_error or (f"{what} has {len(idx)} tensors, layout {layout.layout_id} has {len(ref)} "
                                          f"({', '.join(ref[:4])}{', ...' if len(ref) > 4 else ''})")
            continue
        bad = next((k for k, (i, r) in enumerate(zip(idx, ref))
                    if tuple(shapes[i]) != tuple(ref_shapes[r]) or _leaf(names[i]) != _leaf(r)), None)
        if bad is None:
            return {names[i]: r for i, r in zip(idx, ref)}
        i, r = idx[bad], ref[bad]
        first_error = first_error or (f"automatic mapping of {what} stops at tensor #{bad} {names[i]!r} {list(shapes[i])}: "
                                      f"the layout has {r!r} {list(ref_shapes[r])} there")
    raise UserError(first_error or f"{what} does not map onto layout {layout.layout_id}",
                    "give --arch of the architecture (and width) that wrote the files, or --rename 'REGEX=REPL' rules "
                    "(docs/store.md, 'Importing zoos')")


def _gather_index(names, shapes, mapping: dict[str, str], layout: ParamLayout) -> np.ndarray | None:
    """Indices into the file's flat buffer giving the layout's flat order; None when it is the buffer as is."""
    starts, o = {}, 0
    for n, s in zip(names, shapes):
        k = int(np.prod(s, dtype=np.int64)) if s else 1
        starts[n] = (o, k)
        o += k
    inverse = {v: k for k, v in mapping.items()}
    pieces, pos, contiguous = [], 0, True
    for e in layout.entries:
        start, k = starts[inverse[e.name]]
        if start != pos:
            contiguous = False
        pieces.append(np.arange(start, start + k, dtype=np.int64))
        pos = start + k
    if contiguous and pos == o:
        return None
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


def flat_values(values: np.ndarray, m: NameMap) -> np.ndarray:
    """A file's value buffer in the layout's flat order."""
    return values if m._take is None else values[m._take]
