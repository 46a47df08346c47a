"""pglab.collapse: the detector on synthetic learning curves whose verdict is known.

Every curve below is built by hand, so the expected reason and onset iteration follow
directly from the rules in the module docstring (no statistics involved).
"""

from __future__ import annotations

import math

import pytest

from pglab.collapse import CollapseConfig, CollapseDetector, CollapseStatus, detect_collapse

# peak_smoothing=1 (raw peak) keeps the hand-built curves easy to read; smoothing has its
# own test below.
CFG = CollapseConfig(
    drop_fraction=0.5, window=5, peak_smoothing=1, min_peak=50.0, entropy_threshold=0.05
)
HIGH_ENTROPY = 0.6


def _flat(n: int, value: float = HIGH_ENTROPY) -> list[float]:
    return [value] * n


def test_rise_then_drop_and_stay_collapses_at_onset():
    # rises to a peak of 200 at iteration 9, then falls to 30 < 0.5 * 200 from iteration 12 on
    returns = [20.0 + 20.0 * k for k in range(10)] + [150.0, 120.0] + [30.0] * 8
    status = detect_collapse(returns, _flat(len(returns)), config=CFG)
    assert status == CollapseStatus(True, 12, "return_drop", 12 + CFG.window - 1)


def test_dip_shorter_than_window_is_not_a_collapse():
    dip = [30.0] * (CFG.window - 1)  # one iteration short of the window
    returns = [20.0, 80.0, 150.0, 200.0] + dip + [190.0, 210.0] + dip + [220.0]
    status = detect_collapse(returns, _flat(len(returns)), config=CFG)
    assert status == CollapseStatus(False, None, None, None)


def test_peak_below_min_peak_is_ignored():
    # 40 -> 10 is a 75% drop, but a peak of 40 < min_peak = 50 never counted as learning
    returns = [20.0, 40.0] + [10.0] * 20
    assert not detect_collapse(returns, _flat(len(returns)), config=CFG).collapsed


def test_peak_smoothing_ignores_a_single_lucky_batch():
    # A flat curve at 60 with one lucky batch of 200: the raw peak 200 would make every
    # later 60 look like a drop below 100; the 5-iteration trailing mean peaks at
    # (4 * 60 + 200) / 5 = 88, so the drop line is 44 and 60 is not a drop.
    returns = [60.0] * 10 + [200.0] + [60.0] * 20
    raw = detect_collapse(returns, _flat(len(returns)), config=CFG)
    assert (raw.reason, raw.iteration) == ("return_drop", 11)
    smoothed = CollapseConfig(window=5, peak_smoothing=5, min_peak=50.0)
    assert not detect_collapse(returns, _flat(len(returns)), config=smoothed).collapsed
    # ... while a real collapse from a sustained plateau is still caught
    returns = [60.0] * 5 + [200.0] * 10 + [30.0] * 10
    status = detect_collapse(returns, _flat(len(returns)), config=smoothed)
    assert (status.reason, status.iteration) == ("return_drop", 15)


def test_non_finite_fires_immediately_from_flag_or_values():
    returns = [20.0, 30.0, 40.0, 50.0]
    status = detect_collapse(returns, _flat(4), finite=[True, True, False, True], config=CFG)
    assert status == CollapseStatus(True, 2, "non_finite", 2)
    status = detect_collapse([20.0, math.nan, 40.0], _flat(3), config=CFG)
    assert (status.reason, status.iteration) == ("non_finite", 1)
    status = detect_collapse([20.0, 30.0, 40.0], [0.6, 0.6, math.inf], config=CFG)
    assert (status.reason, status.iteration) == ("non_finite", 2)


def test_low_entropy_with_poor_return_is_entropy_collapse():
    # entropy falls below 0.05 nats from iteration 3 while the return stays ~ 9 (< 100)
    returns = [22.0, 15.0, 10.0] + [9.0] * 10
    entropies = [0.69, 0.3, 0.1] + [0.01] * 10
    status = detect_collapse(returns, entropies, config=CFG)
    assert status == CollapseStatus(True, 3, "entropy_collapse", 3 + CFG.window - 1)


def test_low_entropy_with_good_return_is_success_not_collapse():
    returns = [22.0, 100.0, 300.0] + [500.0] * 12
    entropies = [0.69, 0.3, 0.1] + [0.001] * 12
    assert not detect_collapse(returns, entropies, config=CFG).collapsed


def test_poor_return_none_disables_entropy_rule():
    config = CollapseConfig(window=3, poor_return=None)
    assert not detect_collapse([9.0] * 10, [0.0] * 10, config=config).collapsed


def test_streaming_detector_keeps_first_collapse_and_matches_offline():
    returns = [20.0, 100.0, 200.0] + [30.0] * 6 + [math.nan, 9.0]
    entropies = _flat(len(returns))
    detector = CollapseDetector(CFG)
    seen = [
        detector.update(k, r, h, True)
        for k, (r, h) in enumerate(zip(returns, entropies, strict=True))
    ]
    flags = [s.collapsed for s in seen]
    first = CFG.window - 1 + 3  # onset 3, confirmed window - 1 iterations later
    assert flags == [False] * first + [True] * (len(returns) - first)
    # the later NaN does not overwrite the first recorded reason
    assert seen[-1] == CollapseStatus(True, 3, "return_drop", first)
    assert detect_collapse(returns, entropies, config=CFG) == seen[-1]
    detector.reset()
    assert not detector.status.collapsed


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_fraction": 0.0}, "drop_fraction=0.0"),
        ({"drop_fraction": 1.5}, "drop_fraction=1.5"),
        ({"drop_fraction": math.nan}, "drop_fraction=nan"),
        ({"window": 0}, "window=0"),
        ({"window": 2.5}, "window=2.5"),
        ({"peak_smoothing": 0}, "peak_smoothing=0"),
        ({"min_peak": 0.0}, "min_peak=0.0"),
        ({"min_peak": math.nan}, "min_peak=nan"),
        ({"entropy_threshold": -0.1}, "entropy_threshold=-0.1"),
        ({"poor_return": math.inf}, "poor_return=inf"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CollapseConfig(**kwargs)


def test_detect_collapse_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="len\\(entropies\\)=2"):
        detect_collapse([1.0, 2.0, 3.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="len\\(finite\\)=1"):
        detect_collapse([1.0, 2.0], [0.5, 0.5], finite=[True])


def test_scaling_to_small_batches_spans_the_same_number_of_episodes():
    from pglab.collapse import scale_to_batch_size

    base = CollapseConfig()
    assert scale_to_batch_size(base, 10) == base and scale_to_batch_size(base, 50) == base
    one = scale_to_batch_size(base, 1)
    assert (one.effective_return_window, one.peak_smoothing) == (100, 50)
    assert one.window == base.window  # the entropy rule keeps its window
    three = scale_to_batch_size(base, 3)  # ceil(10 / 3) = 4
    assert (three.effective_return_window, three.peak_smoothing) == (40, 20)
    with pytest.raises(ValueError, match="n_trajectories=0"):
        scale_to_batch_size(base, 0)


def test_scaled_config_still_detects_entropy_collapse_within_the_plain_window():
    """N = 1 stretches only the return rule: a saturated, poor policy is still caught."""
    from pglab.collapse import scale_to_batch_size

    config = scale_to_batch_size(CollapseConfig(), 1)
    returns = [20.0] * 20 + [9.0] * 30
    entropies = [0.6] * 20 + [0.0] * 30
    status = detect_collapse(returns, entropies, config=config)
    assert (status.reason, status.iteration) == ("entropy_collapse", 20)
