"""pglab.collapse: the detector on synthetic learning curves whose verdict is known.

Every curve below is built by hand, so the expected verdict, onset and counts follow
directly from the rules in the module docstring (no statistics involved). The meaning
tested is "collapsed = stuck NOW" (trailing window of episodes: poor mean return AND
near-deterministic mean entropy), the verdict at the end of a curve is its final status,
and ``non_finite`` is final.
"""

from __future__ import annotations

import math

import pytest

from pglab.collapse import CollapseConfig, CollapseDetector, CollapseStatus, detect_collapse

# a 5-episode window, fed one episode per iteration unless a test says otherwise
CFG = CollapseConfig(
    window_episodes=5, poor_return=30.0, entropy_threshold=0.05, drop_fraction=0.5, min_peak=50.0
)
HIGH_ENTROPY = 0.6
LOW_ENTROPY = 0.001  # a saturated softmax


def _flat(n: int, value: float = HIGH_ENTROPY) -> list[float]:
    return [value] * n


def test_dip_that_recovers_is_not_collapsed_at_the_end_and_is_counted():
    # learns to 200, drops to 40 (< half the windowed peak) for 20 iterations, recovers
    returns = [20.0 + 20.0 * k for k in range(10)] + [40.0] * 20 + [200.0] * 10
    status = detect_collapse(returns, _flat(len(returns)), config=CFG)
    assert not status.collapsed and status.reason is None and status.iteration is None
    assert status.dips == 1 and not status.dropped
    assert status.first_onset is None and status.stuck_iterations == 0


def test_drop_at_the_end_is_a_dip_in_progress_not_a_collapse():
    # the policy still explores (high entropy): dropped, not stuck
    returns = [200.0] * 10 + [20.0] * 10
    status = detect_collapse(returns, _flat(len(returns)), config=CFG)
    assert not status.collapsed and status.dropped and status.dips == 0


def test_stuck_run_is_collapsed_at_the_end_with_its_onset():
    # learns to 200, then a bad step: return 10 with a saturated softmax from iteration 12 on
    returns = [20.0 + 20.0 * k for k in range(10)] + [150.0, 120.0] + [10.0] * 18
    entropies = _flat(12) + _flat(18, LOW_ENTROPY)
    status = detect_collapse(returns, entropies, config=CFG)
    # window mean return <= 30 from the window [13..17] (mean 10; [12..16] too: 10),
    # window mean entropy < 0.05 once the window holds only low-entropy iterations: [12..16]
    assert status == CollapseStatus(
        collapsed=True,
        iteration=12,
        reason="stuck",
        detected_at=16,
        first_onset=12,
        stuck_iterations=30 - 16,
        dips=0,
        dropped=True,
    )


def test_flag_resets_when_the_run_climbs_out():
    """The tabular bandit story: stuck from the start, climbs out, ends good."""
    returns = [10.0] * 20 + [60.0 + 10.0 * k for k in range(15)]
    entropies = _flat(20, LOW_ENTROPY) + _flat(15, 0.3)
    detector = CollapseDetector(CFG)
    flags = [
        detector.update(k, r, h).collapsed
        for k, (r, h) in enumerate(zip(returns, entropies, strict=True))
    ]
    # stuck once the 5-iteration window is full (k = 4) until the window stops being poor
    # and near-deterministic: at k = 20 the window [16..20] has mean entropy 0.0608 > 0.05
    assert flags == [False] * 4 + [True] * 16 + [False] * 15
    status = detector.status
    assert not status.collapsed and status.reason is None and status.iteration is None
    assert status.first_onset == 0 and status.stuck_iterations == 16


def test_noisy_per_batch_entropy_is_not_a_false_alarm():
    """At N = 2, ten consecutive batches can have entropy < 0.05 while the policy is not
    saturated (the old per-batch rule fired here). The 100-episode window averages them:
    mean entropy (40 * 0.3 + 10 * 0.01) / 50 = 0.242."""
    config = CollapseConfig(window_episodes=100)
    returns = [20.0] * 40 + [15.0] * 10 + [40.0] * 50
    entropies = _flat(40, 0.3) + _flat(10, 0.01) + _flat(50, 0.3)
    detector = CollapseDetector(config)
    seen = [
        detector.update(k, r, h, n_episodes=2)
        for k, (r, h) in enumerate(zip(returns, entropies, strict=True))
    ]
    assert not any(s.collapsed for s in seen)
    assert seen[-1].first_onset is None


def test_window_is_in_episodes_so_it_means_the_same_at_every_batch_size():
    config = CollapseConfig()  # 100 episodes
    assert [config.window_iterations(n) for n in (1, 2, 5, 10, 20, 50)] == [100, 50, 20, 10, 5, 2]
    # a run saturated at return 9 from the start is detected once 100 episodes are seen
    for n in (1, 10, 20):
        k_full = config.window_iterations(n)
        status = detect_collapse([9.0] * 150, [0.0] * 150, config=config, n_episodes=n)
        assert status.collapsed and status.reason == "stuck"
        assert (status.iteration, status.detected_at) == (0, k_full - 1)
        assert status.stuck_iterations == 150 - (k_full - 1)


def test_near_deterministic_success_is_not_collapsed():
    # a deterministic policy balancing to the 500 cap: good return, so not stuck
    assert not detect_collapse([500.0] * 30, [0.0] * 30, config=CFG).collapsed


def test_poor_but_exploring_policy_is_not_collapsed():
    # random play: poor return but high entropy; it can still learn
    assert not detect_collapse([22.0] * 30, [0.69] * 30, config=CFG).collapsed


def test_non_finite_values_are_diverged_and_final():
    status = detect_collapse([20.0] * 4, _flat(4), finite=[True, True, False, True], config=CFG)
    assert (status.collapsed, status.reason, status.iteration) == (True, "non_finite", 2)
    status = detect_collapse([20.0, math.nan, 40.0], _flat(3), config=CFG)
    assert (status.reason, status.iteration, status.detected_at) == ("non_finite", 1, 1)
    status = detect_collapse([20.0, 30.0, 40.0], [0.6, 0.6, math.inf], config=CFG)
    assert (status.reason, status.iteration) == ("non_finite", 2)
    # streaming: later finite, good iterations do not clear a divergence
    detector = CollapseDetector(CFG)
    detector.update(0, math.nan, 0.6)
    status = detector.update(1, 500.0, 0.6)
    assert (status.collapsed, status.reason, status.iteration) == (True, "non_finite", 0)


def test_divergence_after_a_stuck_stretch_keeps_the_first_onset():
    returns = [10.0] * 8 + [math.nan]
    status = detect_collapse(returns, _flat(9, LOW_ENTROPY), config=CFG)
    assert (status.reason, status.iteration, status.first_onset) == ("non_finite", 8, 0)


def test_poor_return_none_disables_the_stuck_rule():
    config = CollapseConfig(window_episodes=3, poor_return=None)
    assert not detect_collapse([9.0] * 10, [0.0] * 10, config=config).collapsed


def test_streaming_detector_matches_offline_and_resets():
    returns = [20.0, 100.0, 200.0] + [10.0] * 12 + [300.0] * 8
    entropies = _flat(3) + _flat(12, LOW_ENTROPY) + _flat(8)
    detector = CollapseDetector(CFG)
    for k, (r, h) in enumerate(zip(returns, entropies, strict=True)):
        last = detector.update(k, r, h)
    assert detect_collapse(returns, entropies, config=CFG) == last
    assert not last.collapsed and last.first_onset == 3 and last.dips == 1
    detector.reset()
    assert detector.status == CollapseStatus()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_fraction": 0.0}, r"drop_fraction must be finite and in \(0, 1\], got 0.0"),
        ({"drop_fraction": 1.5}, r"drop_fraction must be finite and in \(0, 1\], got 1.5"),
        ({"drop_fraction": math.nan}, r"drop_fraction must be finite and in \(0, 1\], got nan"),
        ({"window_episodes": 0}, "window_episodes must be a positive integer, got 0"),
        ({"window_episodes": 2.5}, "window_episodes must be a positive integer, got 2.5"),
        ({"min_peak": 0.0}, "min_peak must be finite and > 0, got 0.0"),
        ({"min_peak": math.nan}, "min_peak must be finite and > 0, got nan"),
        ({"entropy_threshold": -0.1}, "entropy_threshold must be finite and >= 0, got -0.1"),
        ({"poor_return": math.inf}, "poor_return must be finite, got inf"),
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
