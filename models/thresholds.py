"""Thresholds artifact (``thresholds.json``) I/O and validation, plus the search-stage helpers
``pareto_front``, ``select_thresholds`` and ``calibrate_beta_scale``.

Format (docs/ARCHITECTURE.md): ``{"theta": [L floats], "beta": [L floats],
"temperature": float, "lambda": float, "criterion": "absolute" | "relative",
"reduce_forms": "fast" | "polynomial", "nonlinear": "bolt" | "bumblebee"}`` with ``β_l ≥ θ_l``.

``criterion`` says what θ and β are compared with (``CRITERIA``):

* ``absolute`` (the paper's): the importance score ``S_i`` itself, ``0 ≤ θ_l ≤ 1``. Attention rows
  sum to 1, so real tokens' scores average ``1/c`` with ``c`` the real tokens entering the layer:
  the same θ prunes far more of a long input than of a short one.
* ``relative``: ``c·S_i``, the score relative to uniform attention (mean 1 whatever the length),
  ``θ_l ≥ 0``. A θ learned at one length means the same at another.

``reduce_forms`` names Π_reduce's low-group non-linearities (``models.approx.REDUCE_FORMS``), the
forms the model was fine-tuned with and the secure run must use (``fast`` unless told otherwise);
``nonlinear`` the family of every token's high forms (``models.approx.FAMILIES``), likewise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from models.approx import DEFAULT_FAMILY, DEFAULT_REDUCE_FORMS, family_of

CRITERIA = ("absolute", "relative")


@dataclass
class ThresholdsArtifact:
    """Per-layer pruning (``theta``) and reduction (``beta``) thresholds, ``L`` floats each."""

    theta: list[float]
    beta: list[float]
    temperature: float = 1e-3
    lambda_: float = 0.0
    criterion: str = "absolute"
    reduce_forms: str = DEFAULT_REDUCE_FORMS
    nonlinear: str = DEFAULT_FAMILY

    def to_dict(self) -> dict[str, Any]:
        """JSON dict with the contract's keys (``lambda``, not ``lambda_``)."""
        return {"theta": [float(x) for x in self.theta], "beta": [float(x) for x in self.beta],
                "temperature": float(self.temperature), "lambda": float(self.lambda_),
                "criterion": self.criterion, "reduce_forms": self.reduce_forms, "nonlinear": self.nonlinear}

    @classmethod
    def from_dict(cls, d: dict[str, Any], layers: int | None = None) -> "ThresholdsArtifact":
        """Parse and validate (see :func:`validate_thresholds`). ``nonlinear`` may be absent: files
        written before non-linearity families were BOLT's."""
        missing = [k for k in ("theta", "beta", "temperature", "lambda", "criterion", "reduce_forms") if k not in d]
        if missing:
            raise ValueError(f"thresholds: missing key(s) {missing}; got keys {sorted(d)}")
        a = cls([float(x) for x in d["theta"]], [float(x) for x in d["beta"]],
                float(d["temperature"]), float(d["lambda"]), str(d["criterion"]), str(d["reduce_forms"]),
                str(d.get("nonlinear", DEFAULT_FAMILY)))
        validate_thresholds(a, layers)
        return a


def validate_thresholds(a: ThresholdsArtifact, layers: int | None = None) -> None:
    """Raise ``ValueError`` naming the offending value unless ``criterion`` is one of ``CRITERIA``,
    ``0 ≤ θ ≤ 1`` (absolute) or ``θ ≥ 0`` (relative), ``β ≥ θ``, finite, ``len(θ) == len(β) ==
    layers`` (when given) and ``temperature > 0``."""
    if a.criterion not in CRITERIA:
        raise ValueError(f"thresholds: criterion={a.criterion!r}; expected one of {list(CRITERIA)}")
    try:                                        # the family's low forms are a subset of REDUCE_FORMS
        family_of(a.nonlinear, a.reduce_forms)
    except ValueError as err:
        raise ValueError(f"thresholds: {err}") from None
    top = 1.0 if a.criterion == "absolute" else math.inf
    if len(a.theta) != len(a.beta):
        raise ValueError(f"thresholds: len(theta)={len(a.theta)} != len(beta)={len(a.beta)}")
    if layers is not None and len(a.theta) != layers:
        raise ValueError(f"thresholds: {len(a.theta)} values but the model has {layers} layers")
    for l, (t, b) in enumerate(zip(a.theta, a.beta)):
        if not (math.isfinite(t) and 0.0 <= t <= top):
            raise ValueError(f"thresholds: theta[{l}]={t} outside [0, {top:g}] ({a.criterion} criterion)")
        if not (math.isfinite(b) and b >= t):
            raise ValueError(f"thresholds: beta[{l}]={b} < theta[{l}]={t} (need beta >= theta)")
    if not (a.temperature > 0):
        raise ValueError(f"thresholds: temperature={a.temperature} must be > 0")


def write_thresholds(path: str | Path, a: ThresholdsArtifact) -> Path:
    """Validate and write ``a`` as JSON to ``path``; returns the path."""
    validate_thresholds(a)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(a.to_dict(), indent=2) + "\n")
    return p


def read_thresholds(path: str | Path, layers: int | None = None) -> ThresholdsArtifact:
    """Read and validate a ``thresholds.json``; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"thresholds file not found: {p}")
    try:
        return ThresholdsArtifact.from_dict(json.loads(p.read_text()), layers)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{p}: {e}") from e


@dataclass
class Candidate:
    """One search point: a metric to maximise (e.g. accuracy in %) and a cost to minimise
    (e.g. Σ kept tokens or Σ n²), with its thresholds and free-form extras."""

    metric: float
    cost: float
    thresholds: ThresholdsArtifact | None = None
    name: str = ""
    extra: dict[str, float] = field(default_factory=dict)


def pareto_front(points: Sequence[Candidate]) -> list[Candidate]:
    """Non-dominated candidates (lower cost, higher metric), sorted by increasing cost.

    A point is dominated if another has cost ≤ and metric ≥ with one strict; exact
    duplicates keep the first.
    """
    front: list[Candidate] = []
    for c in sorted(points, key=lambda c: (c.cost, -c.metric)):
        if not front or c.metric > front[-1].metric:
            front.append(c)
    return front


def select_thresholds(
    candidates: Sequence[Candidate], baseline_metric: float, max_drop: float = 0.5
) -> tuple[Candidate, bool]:
    """Cheapest candidate whose metric ≥ ``baseline_metric − max_drop`` (same units, e.g.
    accuracy points); ties on cost go to the higher metric. When none qualifies, the best-metric
    candidate (ties: cheapest). Returns ``(candidate, within_max_drop)``; ``ValueError`` only
    when there are no candidates."""
    if not candidates:
        raise ValueError("select_thresholds: no candidates")
    ok = [c for c in candidates if c.metric >= baseline_metric - max_drop]
    if not ok:
        return max(candidates, key=lambda c: (c.metric, -c.cost)), False
    return min(ok, key=lambda c: (c.cost, -c.metric)), True


def with_beta_scale(a: ThresholdsArtifact, scale: float) -> ThresholdsArtifact:
    """``a`` with ``β_l ← θ_l + scale·(β_l − θ_l)``: scale 0 puts every kept token in the high
    group (Π_reduce then equals Π_prune), 1 is ``a`` itself, above 1 reduces more tokens."""
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"beta scale={scale}: must be finite and >= 0")
    return replace(a, beta=[t + scale * (b - t) for t, b in zip(a.theta, a.beta)])


def calibrate_beta_scale(
    metric_at: Callable[[float], float], reference: float, scales: Sequence[float], max_drop: float
) -> tuple[float, dict[float, float]]:
    """The largest of ``scales`` (see :func:`with_beta_scale`) whose ``metric_at(scale)`` is
    ≥ ``reference − max_drop``: Π_reduce's β on a validation split, given Π_prune's metric of the
    same model as ``reference``, so that the cheaper non-linearities cost at most ``max_drop``
    points. Scales are tried from the largest down, stopping at the first accepted (one
    ``metric_at`` call each); none accepted gives 0 (no token reduced, metric = ``reference``
    by construction, not evaluated). Returns ``(scale, {scale tried: metric})``."""
    if any(not (math.isfinite(s) and s >= 0) for s in scales):
        raise ValueError(f"beta scales={list(scales)}: each must be finite and >= 0")
    tried: dict[float, float] = {}
    for scale in sorted(set(scales), reverse=True):
        if scale == 0:
            break
        tried[scale] = metric_at(scale)
        if tried[scale] >= reference - max_drop:
            return scale, tried
    return 0.0, tried
