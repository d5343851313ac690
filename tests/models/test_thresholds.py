"""Thresholds artifact validation, pareto front and selection."""
from __future__ import annotations

import json

import pytest

from models.thresholds import (
    Candidate,
    ThresholdsArtifact,
    calibrate_beta_scale,
    pareto_front,
    read_thresholds,
    select_thresholds,
    with_beta_scale,
    write_thresholds,
)


def test_roundtrip_and_keys(tmp_path) -> None:
    a = ThresholdsArtifact([0.0, 0.1], [0.2, 0.1], 1e-3, 0.1)
    p = write_thresholds(tmp_path / "thresholds.json", a)
    assert set(json.loads(p.read_text())) == {"theta", "beta", "temperature", "lambda", "criterion",
                                                "reduce_forms", "nonlinear"}
    assert read_thresholds(p, layers=2) == a


def test_criterion_bounds_and_incomplete_files(tmp_path) -> None:
    relative = ThresholdsArtifact([1.5, 0.0], [2.0, 0.5], criterion="relative")  # c·S averages 1: θ > 1 is fine
    assert read_thresholds(write_thresholds(tmp_path / "r.json", relative)) == relative
    legacy = {"theta": [0.1], "beta": [0.2], "temperature": 1e-3, "lambda": 0.1, "criterion": "absolute",
              "reduce_forms": "fast"}
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in legacy.items() if k != "reduce_forms"}))
    with pytest.raises(ValueError, match=r"old.json: thresholds: missing key\(s\) \['reduce_forms'\]"):
        read_thresholds(tmp_path / "old.json")      # the forms the model was trained with cannot be guessed
    assert ThresholdsArtifact([0.1], [0.2]).reduce_forms == "fast"
    with pytest.raises(ValueError, match="reduce_forms='cubic'"):
        ThresholdsArtifact.from_dict({**legacy, "reduce_forms": "cubic"})
    assert ThresholdsArtifact.from_dict(legacy).nonlinear == "bolt"       # before families: all BOLT's
    with pytest.raises(ValueError, match="nonlinear family 'secdtd'"):
        ThresholdsArtifact.from_dict({**legacy, "nonlinear": "secdtd"})
    with pytest.raises(ValueError, match="reduce_forms='polynomial' with the bumblebee family"):
        ThresholdsArtifact.from_dict({**legacy, "nonlinear": "bumblebee", "reduce_forms": "polynomial"})
    with pytest.raises(ValueError, match="criterion='uniform'"):
        ThresholdsArtifact.from_dict({**legacy, "criterion": "uniform"})
    with pytest.raises(ValueError, match=r"theta\[0\]=-0.1 outside \[0, inf\]"):
        ThresholdsArtifact.from_dict({**legacy, "theta": [-0.1], "criterion": "relative"})


@pytest.mark.parametrize("d,msg", [
    ({"theta": [1.5], "beta": [2.0], "temperature": 1e-3, "lambda": 0.1}, r"theta\[0\]=1.5"),
    ({"theta": [0.2], "beta": [0.1], "temperature": 1e-3, "lambda": 0.1}, r"beta\[0\]=0.1 < theta"),
    ({"theta": [0.1], "beta": [0.1, 0.2], "temperature": 1e-3, "lambda": 0.1}, "len"),
    ({"theta": [0.1], "beta": [0.1], "lambda": 0.1}, "missing key"),
])
def test_validation_errors(tmp_path, d, msg) -> None:
    d = {"criterion": "absolute", "reduce_forms": "fast", **d}
    (tmp_path / "t.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=msg):
        read_thresholds(tmp_path / "t.json")


def test_layer_count_checked(tmp_path) -> None:
    write_thresholds(tmp_path / "t.json", ThresholdsArtifact([0.1], [0.1]))
    with pytest.raises(ValueError, match="1 values but the model has 2 layers"):
        read_thresholds(tmp_path / "t.json", layers=2)


def test_pareto_and_select() -> None:
    pts = [Candidate(90.0, 100, name="a"), Candidate(89.0, 50, name="b"), Candidate(88.0, 60, name="c"),
           Candidate(89.8, 70, name="d"), Candidate(85.0, 10, name="e")]
    assert [c.name for c in pareto_front(pts)] == ["e", "b", "d", "a"]
    assert select_thresholds(pts, baseline_metric=90.0, max_drop=0.5) == (pts[3], True)   # "d"
    assert select_thresholds(pts, baseline_metric=90.0, max_drop=1.0) == (pts[1], True)   # "b"
    assert select_thresholds(pts, baseline_metric=95.0) == (pts[0], False)   # none within: the most accurate
    with pytest.raises(ValueError, match="no candidates"):
        select_thresholds([], baseline_metric=95.0)


def test_beta_scale_moves_beta_between_theta_and_beyond() -> None:
    a = ThresholdsArtifact([0.5, 1.0], [1.5, 1.0], criterion="relative")
    assert with_beta_scale(a, 0).beta == a.theta                      # no token reduced: Π_prune
    assert with_beta_scale(a, 1).beta == a.beta
    assert with_beta_scale(a, 0.5).beta == [1.0, 1.0] and with_beta_scale(a, 2).beta == [2.5, 1.0]
    assert with_beta_scale(a, 0.5).theta == a.theta and a.beta == [1.5, 1.0]   # a itself unchanged
    with pytest.raises(ValueError, match="beta scale=-0.5"):
        with_beta_scale(a, -0.5)


def test_calibration_takes_the_largest_scale_within_the_drop_and_stops_there() -> None:
    val = {2.0: 80.0, 1.0: 84.5, 0.5: 85.0, 0.25: 85.2}
    calls: list[float] = []

    def metric_at(scale: float) -> float:
        calls.append(scale)
        return val[scale]

    assert calibrate_beta_scale(metric_at, 85.0, [0.25, 1.0, 2.0, 0.5], max_drop=0.5) == (1.0, {2.0: 80.0, 1.0: 84.5})
    assert calls == [2.0, 1.0]                                          # largest first, no call past the pick
    calls.clear()
    assert calibrate_beta_scale(metric_at, 85.0, [0.5, 1.0], max_drop=0.0) == (0.5, {1.0: 84.5, 0.5: 85.0})
    calls.clear()
    scale, tried = calibrate_beta_scale(metric_at, 90.0, [0.0, 0.5, 1.0], max_drop=0.3)
    assert scale == 0.0 and tried == {1.0: 84.5, 0.5: 85.0} and 0.0 not in calls   # β = θ is never evaluated
    with pytest.raises(ValueError, match="beta scales"):
        calibrate_beta_scale(metric_at, 85.0, [1.0, float("nan")], max_drop=0.3)
