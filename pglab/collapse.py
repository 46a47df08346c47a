"""Step-size collapse: decide, from a learning curve, whether a run fell apart.

A policy-gradient run "collapses" when one update (usually a too-large step size
alpha) throws the policy into a region it cannot climb out of. The detector watches
three signals per iteration k and reports the first that fires:

=====================  =====================================================================
reason                 condition
=====================  =====================================================================
``"non_finite"``       (b) the loss, a gradient or a parameter is NaN/inf, or the reported
                       return or entropy is NaN/inf. The run has *diverged*; this fires at
                       once (no window).
``"return_drop"``      (a) the running peak P_k has reached ``min_peak`` and
                       J_j < ``drop_fraction`` * P_j for ``window`` consecutive iterations.
                       P_k = max_{j<=k} Jbar_j is the peak of the trailing mean
                       Jbar_j = mean(J_{j-m+1}, ..., J_j) over m = ``peak_smoothing``
                       iterations (m = 1: the raw peak).
``"entropy_collapse"`` (c) the mean policy entropy H_j < ``entropy_threshold`` (nats) while
                       J_j < ``poor_return``, for ``window`` consecutive iterations: the
                       softmax saturated (its gradient vanishes, so plain gradient ascent
                       cannot leave) before the policy became good.
=====================  =====================================================================

Here J_k is the iteration's return (the batch mean on CartPole, the exact J(theta_k) in a
tabular MDP) and H_k the mean entropy of pi(.|s) over the states the iteration visited.

``CollapseStatus.iteration`` is the *onset*: the first iteration of the window that
triggered (for ``non_finite``, the iteration that produced the non-finite value).
``CollapseStatus.detected_at`` is the iteration at which the detector could first say so
(onset + window - 1 for the windowed rules). Once collapsed, the status never changes.

Defaults are tuned for ``CartPole-v1`` (reward +1 per step, episodes capped at 500):

* The uniform random policy returns 22.1 per episode (standard deviation 11.7, measured
  on 20 000 episodes), so the mean of N = 10 episodes has standard error about 3.7, and
  the 5-iteration trailing mean used for the peak (50 episodes) about 1.7. A peak of 50
  is more than 15 of those standard errors above the uniform policy: noise alone does not
  reach it. ``min_peak = 50`` therefore means "the policy demonstrably learned something",
  and a drop below ``0.5 * 50 = 25`` means "back to random-policy level or worse".
* ``poor_return = 100`` (a fifth of the 500-step cap, between 4 and 5 times random): a
  near-deterministic policy (``entropy_threshold = 0.05`` nats, against log 2 ~ 0.69 for
  the uniform two-action policy) that balances fewer than 100 steps has locked in a bad
  action choice. Saturated softmax policies of this kind are what absurd step sizes
  produce (typically 9-60 steps, with an exactly vanishing gradient). A
  near-deterministic policy returning 500 is a success, not a collapse, which is why (c)
  also asks for a poor return.
* ``window = 10`` iterations: a single bad batch (a one- or two-iteration dip) is noise,
  ten in a row is not.
* ``peak_smoothing = 5``: the maximum of noisy batch means is biased upwards (the best of
  K draws sits about 2-3 standard errors above the mean it came from), which would make
  an ordinary noisy curve look like it fell from a high peak. Taking the peak of a 5-
  iteration trailing mean divides that standard error by sqrt(5). Use 1 when J_k is
  exact (the tabular ascent).

For other problems choose the numbers on the problem's own return scale, e.g. relative to
the uniform policy's return and the optimum (``pglab.ascent.tabular_collapse_config`` does
that for tabular MDPs). The return-drop rule compares against a positive peak, so it only
makes sense for returns that are positive when the policy is good; set
``min_peak = math.inf`` to disable it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

REASONS = ("return_drop", "non_finite", "entropy_collapse")


@dataclass(frozen=True)
class CollapseConfig:
    """Thresholds of the collapse detector (see the module docstring for the rules).

    Attributes:
        drop_fraction: (a) a return below ``drop_fraction`` x peak counts as dropped;
            in (0, 1].
        window: (a), (c) how many consecutive iterations the condition must hold; >= 1.
        peak_smoothing: (a) the peak is the maximum of the trailing mean over this many
            iterations (the peak is undefined until that many have been seen); >= 1.
        min_peak: (a) peaks below this are ignored (a return that never rose cannot
            collapse from a peak); > 0, ``math.inf`` disables (a). CartPole default 50.
        entropy_threshold: (c) mean entropy (nats) below which the policy counts as
            near-deterministic; >= 0.
        poor_return: (c) returns below this count as still poor; ``None`` disables (c).
            CartPole default 100.
        return_window: (a) consecutive iterations the return must stay dropped; ``None``
            (default) uses ``window``. :func:`scale_to_batch_size` sets it for small N,
            where per-iteration returns are noisy; rule (c) keeps ``window``, since the
            policy's entropy is not a noisy batch statistic in the same way.
    """

    drop_fraction: float = 0.5
    window: int = 10
    peak_smoothing: int = 5
    min_peak: float = 50.0
    entropy_threshold: float = 0.05
    poor_return: float | None = 100.0
    return_window: int | None = None

    @property
    def effective_return_window(self) -> int:
        """Window of rule (a): ``return_window``, or ``window`` when that is ``None``."""
        return self.window if self.return_window is None else self.return_window

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and its value."""
        if not (math.isfinite(self.drop_fraction) and 0.0 < self.drop_fraction <= 1.0):
            raise ValueError(f"drop_fraction={self.drop_fraction!r}, expected a number in (0, 1]")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window={self.window!r}, expected an integer >= 1")
        if (
            isinstance(self.peak_smoothing, bool)
            or not isinstance(self.peak_smoothing, int)
            or self.peak_smoothing < 1
        ):
            raise ValueError(f"peak_smoothing={self.peak_smoothing!r}, expected an integer >= 1")
        if math.isnan(self.min_peak) or self.min_peak <= 0.0:
            raise ValueError(
                f"min_peak={self.min_peak!r}, expected a number > 0 (math.inf disables the "
                "return-drop rule)"
            )
        if self.return_window is not None and (
            isinstance(self.return_window, bool)
            or not isinstance(self.return_window, int)
            or self.return_window < 1
        ):
            raise ValueError(
                f"return_window={self.return_window!r}, expected an integer >= 1 or None"
            )
        if not (math.isfinite(self.entropy_threshold) and self.entropy_threshold >= 0.0):
            raise ValueError(
                f"entropy_threshold={self.entropy_threshold!r}, expected a finite number >= 0"
            )
        if self.poor_return is not None and not math.isfinite(self.poor_return):
            raise ValueError(
                f"poor_return={self.poor_return!r}, expected a finite number or None "
                "(None disables the entropy-collapse rule)"
            )


def scale_to_batch_size(
    config: CollapseConfig, n_trajectories: int, calibrated_n: int = 10
) -> CollapseConfig:
    """Stretch the return rule's window and smoothing to span as many episodes as at ``calibrated_n``.

    The defaults are calibrated for batches of N = 10 episodes: a 5-iteration trailing
    mean (50 episodes) for the peak and a 10-iteration window (100 episodes). With smaller
    batches a per-iteration return is much noisier (its standard error grows like
    1/sqrt(N)), so the same iteration counts would flag noise as collapse: N = 1 runs that
    were still learning were flagged as ``return_drop``. For N < ``calibrated_n`` this
    returns a config whose return-drop window and peak smoothing are multiplied by
    ceil(calibrated_n / N); the entropy rule (c) keeps ``window`` (a saturated softmax is
    not a noisy per-batch statistic). For N >= ``calibrated_n`` the config is returned
    unchanged.

        return_window'  = effective_return_window * ceil(calibrated_n / N)
        peak_smoothing' = peak_smoothing * ceil(calibrated_n / N)

    Rule (a) then needs at least peak_smoothing' + return_window' - 1 iterations to fire,
    so short runs with small N should use an env-step budget (as the grid presets do).
    """
    if (
        isinstance(n_trajectories, bool)
        or not isinstance(n_trajectories, int)
        or n_trajectories < 1
    ):
        raise ValueError(f"n_trajectories={n_trajectories!r}, expected an integer >= 1")
    factor = -(-calibrated_n // n_trajectories)  # ceil
    if factor <= 1:
        return config
    return replace(
        config,
        return_window=config.effective_return_window * factor,
        peak_smoothing=config.peak_smoothing * factor,
    )


@dataclass
class CollapseStatus:
    """Outcome of collapse detection.

    Attributes:
        collapsed: whether any rule fired.
        iteration: onset of the collapse (first iteration of the triggering window;
            for ``non_finite`` the iteration that produced the non-finite value).
        reason: ``"return_drop"``, ``"non_finite"`` or ``"entropy_collapse"``; ``None``
            when not collapsed.
        detected_at: iteration at which the rule fired (>= ``iteration``).
    """

    collapsed: bool = False
    iteration: int | None = None
    reason: str | None = None
    detected_at: int | None = None


class CollapseDetector:
    """Streaming collapse detector: feed one iteration at a time with :meth:`update`.

    The first rule to fire is recorded and kept; later updates return the same status.
    Deterministic (no randomness).

    Example:
        >>> detector = CollapseDetector(CollapseConfig(window=2, peak_smoothing=1, min_peak=10.0))
        >>> for k, ret in enumerate([5.0, 20.0, 4.0, 3.0]):
        ...     status = detector.update(k, ret, entropy=0.6, finite=True)
        >>> (status.reason, status.iteration, status.detected_at)
        ('return_drop', 2, 3)
    """

    def __init__(self, config: CollapseConfig | None = None) -> None:
        self.config = config if config is not None else CollapseConfig()
        self.config.validate()
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.peak = -math.inf
        self._recent: deque[float] = deque(maxlen=self.config.peak_smoothing)
        self._drop_start: int | None = None
        self._drop_count = 0
        self._entropy_start: int | None = None
        self._entropy_count = 0
        self._status = CollapseStatus()

    @property
    def status(self) -> CollapseStatus:
        """Current status (a copy)."""
        s = self._status
        return CollapseStatus(s.collapsed, s.iteration, s.reason, s.detected_at)

    def _fire(self, reason: str, onset: int, iteration: int) -> CollapseStatus:
        self._status = CollapseStatus(True, onset, reason, iteration)
        return self.status

    def update(
        self, iteration: int, mean_return: float, entropy: float, finite: bool = True
    ) -> CollapseStatus:
        """Record iteration ``iteration`` and return the status so far.

        Args:
            iteration: index of this iteration (reported back as onset/detection).
            mean_return: J_k, the iteration's return.
            entropy: H_k, mean policy entropy in nats over the visited states.
            finite: ``False`` when the loss, a gradient or a parameter was non-finite.
        """
        if self._status.collapsed:
            return self.status
        cfg = self.config
        mean_return = float(mean_return)
        entropy = float(entropy)
        if not finite or not math.isfinite(mean_return) or not math.isfinite(entropy):
            return self._fire("non_finite", iteration, iteration)

        # (a) return drop: J_k < drop_fraction * P_k, P_k = running peak of the trailing
        # mean over peak_smoothing iterations, P_k >= min_peak.
        self._recent.append(mean_return)
        if len(self._recent) == cfg.peak_smoothing:
            self.peak = max(self.peak, sum(self._recent) / cfg.peak_smoothing)
        dropped = self.peak >= cfg.min_peak and mean_return < cfg.drop_fraction * self.peak
        if dropped:
            if self._drop_count == 0:
                self._drop_start = iteration
            self._drop_count += 1
        else:
            self._drop_count, self._drop_start = 0, None

        # (c) entropy collapse: H_k < entropy_threshold while J_k < poor_return.
        low = (
            cfg.poor_return is not None
            and entropy < cfg.entropy_threshold
            and mean_return < cfg.poor_return
        )
        if low:
            if self._entropy_count == 0:
                self._entropy_start = iteration
            self._entropy_count += 1
        else:
            self._entropy_count, self._entropy_start = 0, None

        # When both fire at the same iteration, the earlier onset wins.
        fired = []
        if self._drop_count >= cfg.effective_return_window:
            fired.append((self._drop_start, "return_drop"))
        if self._entropy_count >= cfg.window:
            fired.append((self._entropy_start, "entropy_collapse"))
        if fired:
            onset, reason = min(fired, key=lambda x: x[0])
            return self._fire(reason, onset, iteration)
        return self.status


def detect_collapse(
    returns: Sequence[float],
    entropies: Sequence[float],
    finite: Sequence[bool] | None = None,
    config: CollapseConfig | None = None,
) -> CollapseStatus:
    """Offline collapse detection over a whole curve (same rules as :class:`CollapseDetector`).

    Args:
        returns: J_k per iteration, length K.
        entropies: H_k per iteration (nats), length K.
        finite: per-iteration finiteness flags, length K; ``None`` means all ``True``.
        config: thresholds; ``None`` uses the CartPole defaults.

    Returns:
        The status after the last iteration; iterations are numbered 0..K-1.
    """
    n = len(returns)
    if len(entropies) != n:
        raise ValueError(f"len(entropies)={len(entropies)}, expected len(returns)={n}")
    if finite is None:
        finite = [True] * n
    elif len(finite) != n:
        raise ValueError(f"len(finite)={len(finite)}, expected len(returns)={n}")
    detector = CollapseDetector(config)
    status = detector.status
    for k in range(n):
        status = detector.update(k, returns[k], entropies[k], bool(finite[k]))
        if status.collapsed:
            break
    return status
