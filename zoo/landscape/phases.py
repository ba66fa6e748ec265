"""Phase labels of the loss-landscape taxonomy of Yang et al. (2021), with explicit thresholds.

The paper describes the phases qualitatively:

    phase  training loss  Hessian  mode connectivity  CKA
    I      high           large    mc < 0             -
    II     high           -        mc > 0             -
    III    low            small    mc < 0             -
    IV-A   low            small    mc ~ 0             low
    IV-B   low            small    mc ~ 0             high

No public code fixes the cut-offs, so ours are parameters (`Thresholds`),
stored as JSON next to every label. The rule, in order:

    1. poorly trained (train_loss > loss):
         mc >  mc_tol                          -> II
         mc < -mc_tol                          -> I
         |mc| <= mc_tol or mc unknown          -> I if hessian_trace > hessian_trace else II
    2. well trained (train_loss <= loss):
         mc < -mc_tol                          -> III
         otherwise (mc ~ 0, or mc > mc_tol)    -> IV-B if cka >= cka else IV-A
         mc or CKA unknown (no seed pairs)     -> no label (None)

The Hessian separates I (sharp) from II only where connectivity does not
decide; with low loss the table calls every phase "small Hessian", so it is
not used there. docs/landscape.md gives the reasoning behind the defaults.

Of the values the rule reads, only the Hessian trace is a randomized estimate
with a known error (its standard error `hessian_trace_se`); train loss, mc and
CKA are deterministic given the recipe. So a label comes with

    phase_margin     (hessian_trace - thresholds.hessian_trace) / hessian_trace_se
                     where the trace decided the label (I vs II), else NULL
    phase_uncertain  True when the label would change for a trace within
                     `margin_se` standard errors of the estimate (|phase_margin|
                     <= margin_se); False when it would not, or when the trace
                     did not decide; NULL when there is no label, or the trace
                     decided and no standard error is known.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

from store.errors import UserError

PHASES = ("I", "II", "III", "IV-A", "IV-B")
RULE = "yang2021-v1"


@dataclass(frozen=True)
class Thresholds:
    """Cut-offs of the phase rule (module docstring). Units: nats, nats, trace units, CKA in [0, 1]."""

    loss: float = 0.1  # train loss above this: poorly trained (I, II)
    mc_tol: float = 0.05  # |mc| at most this: mc ~ 0 (well connected)
    hessian_trace: float = 50.0  # trace above this: sharp (I rather than II when mc ~ 0)
    cka: float = 0.9  # CKA at least this: IV-B (similar models), below: IV-A
    cka_metric: str = "cka_logits"  # which CKA column the rule reads: cka_logits | cka_hidden
    margin_se: float = 2.0  # a label is uncertain when the trace is within this many standard errors of its cut-off

    def __post_init__(self):
        for name in ("loss", "mc_tol", "hessian_trace", "cka", "margin_se"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise UserError(f"phase threshold {name}={v!r}", f"give a finite number >= 0 for {name}")
        if self.cka_metric not in ("cka_logits", "cka_hidden"):
            raise UserError(f"phase threshold cka_metric={self.cka_metric!r}", "use 'cka_logits' or 'cka_hidden'")

    def to_dict(self) -> dict[str, Any]:
        return {"rule": RULE, **asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Thresholds":
        d = {k: v for k, v in dict(d).items() if k != "rule"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown phase thresholds {unknown}", f"use: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def parse(cls, text: str | None) -> "Thresholds":
        """From JSON ('{"loss": 0.2}') or k=v pairs ('loss=0.2,cka=0.8'); missing keys keep defaults."""
        if not text:
            return cls()
        text = text.strip()
        if text.startswith("{"):
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"phase thresholds are not valid JSON ({e})", 'write e.g. \'{"loss": 0.2}\'') from None
        else:
            d = {}
            for item in filter(None, (s.strip() for s in text.split(","))):
                k, eq, v = item.partition("=")
                if not eq:
                    raise UserError(f"phase threshold {item!r} is not k=v", "write e.g. loss=0.2,cka=0.8")
                try:
                    d[k.strip()] = v.strip() if k.strip() == "cka_metric" else float(v)
                except ValueError:
                    raise UserError(f"phase threshold {item!r} is not a number", "write e.g. loss=0.2") from None
        return cls.from_dict(d)


def _num(row: Mapping[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def phase_of(row: Mapping[str, Any], th: Thresholds = Thresholds()) -> str | None:
    """The phase of one metrics row (keys train_loss, hessian_trace, mode_connectivity, cka_logits/cka_hidden)."""
    loss = _num(row, "train_loss")
    if loss is None:
        return None
    mc = _num(row, "mode_connectivity")
    if loss > th.loss:
        if mc is not None and mc > th.mc_tol:
            return "II"
        if mc is not None and mc < -th.mc_tol:
            return "I"
        trace = _num(row, "hessian_trace")
        if trace is None:
            return None
        return "I" if trace > th.hessian_trace else "II"
    if mc is None:
        return None
    if mc < -th.mc_tol:
        return "III"
    cka = _num(row, th.cka_metric)
    if cka is None:
        return None
    return "IV-B" if cka >= th.cka else "IV-A"


def label_phases(rows: Iterable[Mapping[str, Any]], th: Thresholds = Thresholds()) -> list[str | None]:
    return [phase_of(r, th) for r in rows]


def trace_decides(row: Mapping[str, Any], th: Thresholds = Thresholds()) -> bool:
    """Whether the label depends on the Hessian trace (it changes between a trace of -inf and +inf)."""
    lo = phase_of({**row, "hessian_trace": -math.inf}, th)
    hi = phase_of({**row, "hessian_trace": math.inf}, th)
    return lo != hi


def phase_margin(row: Mapping[str, Any], th: Thresholds = Thresholds()) -> float | None:
    """Distance of the trace from its cut-off in standard errors, where the trace decided the label (else None).

    +-inf for an exact trace (standard error 0) off the cut-off; None without a standard error.
    """
    trace, se = _num(row, "hessian_trace"), _num(row, "hessian_trace_se")
    if trace is None or se is None or se < 0 or not trace_decides(row, th):
        return None
    d = trace - th.hessian_trace
    if se == 0:
        return 0.0 if d == 0 else math.copysign(math.inf, d)
    return d / se


def phase_uncertain(row: Mapping[str, Any], th: Thresholds = Thresholds()) -> bool | None:
    """True when a trace within `margin_se` standard errors could change the label (module docstring)."""
    if phase_of(row, th) is None:
        return None
    if not trace_decides(row, th):
        return False
    m = phase_margin(row, th)
    return None if m is None else bool(abs(m) <= th.margin_se)


def label(row: Mapping[str, Any], th: Thresholds = Thresholds()) -> dict[str, Any]:
    """{phase, phase_margin, phase_uncertain} of one metrics row: the columns a landscape row stores."""
    return {"phase": phase_of(row, th), "phase_margin": phase_margin(row, th), "phase_uncertain": phase_uncertain(row, th)}
