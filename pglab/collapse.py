"""Step-size collapse: decide, from a learning curve, whether a run is *stuck*.

A policy-gradient run "collapses" when an update (usually a too-large step size alpha)
throws the policy into a region it cannot climb out of: the softmax saturates on a bad
action choice, its gradient vanishes, and plain gradient ascent stays there. The
detector therefore asks, at every iteration k, whether the run is stuck *now*, over a
trailing window of the last ``window_episodes`` episodes (in episodes, not iterations, so
that it means the same at every batch size N):

=====================  =====================================================================
reason                 condition at iteration k
=====================  =====================================================================
``"stuck"``            over the trailing window W_k (the fewest latest iterations holding
                       at least ``window_episodes`` episodes), the episode-weighted mean
                       return Rbar_k <= ``poor_return`` AND the mean policy entropy
                       Hbar_k < ``entropy_threshold`` (near-deterministic on the states it
                       visits). Both are window means, so one noisy batch does not decide.
``"non_finite"``       the loss, a gradient or a parameter is NaN/inf, or the reported
                       return or entropy is NaN/inf. The run has *diverged*; this fires at
                       once and is final.
=====================  =====================================================================

Here J_k is the iteration's return (the batch mean of N episodes on CartPole, the exact
J(theta_k) in a tabular MDP, fed with ``n_episodes=1``) and H_k the mean entropy of
pi(.|s) over the states the iteration visited.

The verdict is the status at the *latest* iteration: a "stuck" that later stops holding
(the run climbs out) is cleared, so the final status of a run says whether it ended
stuck. ``non_finite`` is never cleared. :class:`CollapseStatus` also records the history:
``first_onset`` (the first stuck stretch's onset, kept even if the run recovered),
``stuck_iterations`` (how many iterations were stuck) and ``dips``.

Dips (a transient drop, counted, not a collapse): with the peak P_k = max_{j<=k} Rbar_j
(the windowed mean, so a lucky batch does not make a peak), a dip starts when
P_k >= ``min_peak`` and Rbar_k < ``drop_fraction`` * P_k, and is counted in ``dips`` when
it ends, i.e. when Rbar climbs back to >= ``drop_fraction`` * P. ``dropped`` says whether
the run is inside a dip now (not yet recovered).

Defaults are set for ``CartPole-v1`` (reward +1 per step, episodes capped at 500), from
measured numbers:

* The uniform random policy returns 22.1 per episode (standard deviation 11.7, 20 000
  episodes), so over a 100-episode window its mean has standard error 1.2. A policy stuck
  on a saturated softmax returns 9.2-9.5 (it pushes the cart one way until the pole
  falls; measured on all 22 runs of the validation grid that were stuck at 3B).
  ``poor_return = 30`` is "no better than random play" with room for noise: about 7
  standard errors above the random mean, so a window of random play or worse is poor,
  and a policy that has learned to balance (window returns 50+) is not.
* ``entropy_threshold = 0.05`` nats (log 2 = 0.69 for the uniform two-action policy;
  max_a pi = 0.99 gives 0.056): on average over the window the visited states are
  near-deterministic. At B = 10^5 env steps, the runs stuck at 3B had window-mean
  entropies from 1e-19 to 0.011 (>= 97 % of states with max_a pi >= 0.99); the runs that
  were learning had >= 0.05. No lower threshold separates the two runs that later
  climbed out (0.004 and 0.0006 at B) from runs that stayed stuck (0.011, 0.007, ...):
  climbing out of a saturated softmax is a rare random event, not visible in advance.
* ``window_episodes = 100``: 10 iterations at N = 10, 100 at N = 1, 5 at N = 20. The
  per-batch entropy of a small batch is noisy (a few states); averaging over 100 episodes
  removes the false alarms of a per-batch rule.
* ``drop_fraction = 0.5``, ``min_peak = 50`` (dips only): a windowed peak of 50 is more
  than 20 standard errors above random play, i.e. the policy demonstrably learned.

Validation (``benchmarks/bench_collapse_detector.py``; N in {1, 2, 5, 10, 20} x alpha in
{1e-4, 1e-3, 1e-2} x 3 seeds, raw-return REINFORCE, plain SGD): the verdict at the end of
B = 10^5 env steps against the ground truth "stuck at 3B" (last 100 episodes at 3B:
mean return <= 22.1 and >= 95 % near-deterministic states, or diverged) has precision
P(stuck at 3B | collapsed at B) = 21/23 = 0.91 (95 % Clopper-Pearson CI [0.72, 0.99]) and
recall P(collapsed at B | stuck at B and 3B) = 21/21 = 1.00 ([0.84, 1.00]). The previous
rule ("a >= 50 % drop from the peak at some point", never reset) had precision 22/37 =
0.59 ([0.42, 0.75]) on the same runs.

For other problems choose the numbers on the problem's own return scale
(``pglab.tabular.ascent.tabular_collapse_config`` does that for tabular MDPs, relative to the
uniform policy and the best stationary policy). ``poor_return = None`` disables "stuck";
``min_peak = math.inf`` disables the dip count (e.g. for negative returns).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from pglab import checks

REASONS = ("stuck", "non_finite")


@dataclass(frozen=True)
class CollapseConfig:
    """Thresholds of the collapse detector (see the module docstring for the rules).

    Attributes:
        window_episodes: length of the trailing window in episodes (the window holds the
            fewest latest iterations with at least this many episodes; iterations count
            ``n_episodes`` each); >= 1. The tabular ascent passes ``n_episodes=1``, so
            there it is a window in iterations.
        poor_return: the window's mean return must be <= this to count as stuck;
            ``None`` disables "stuck". CartPole default 30 (random play: 22.1).
        entropy_threshold: the window's mean entropy (nats) must be below this to count
            as near-deterministic; >= 0.
        drop_fraction: dips: a windowed return below ``drop_fraction`` x peak is a dip;
            in (0, 1].
        min_peak: dips: windowed peaks below this are ignored; > 0, ``math.inf``
            disables the dip count. CartPole default 50.
    """

    window_episodes: int = 100
    poor_return: float | None = 30.0
    entropy_threshold: float = 0.05
    drop_fraction: float = 0.5
    min_peak: float = 50.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`pglab.checks.ConfigError` naming the first invalid field and its value."""
        checks.positive_int("window_episodes", self.window_episodes)
        if self.poor_return is not None:  # None disables the stuck rule
            checks.real("poor_return", self.poor_return)
        checks.real("entropy_threshold", self.entropy_threshold, 0.0)
        checks.real("drop_fraction", self.drop_fraction, 0.0, 1.0, low_open=True)
        if self.min_peak != math.inf:  # inf disables the dip count
            checks.positive_real("min_peak", self.min_peak)

    def window_iterations(self, n_episodes: int) -> int:
        """Iterations in a full window when every iteration has ``n_episodes`` episodes:
        ceil(window_episodes / n_episodes)."""
        return -(-self.window_episodes // n_episodes)


@dataclass
class CollapseStatus:
    """Outcome of collapse detection, as of the latest iteration.

    Attributes:
        collapsed: stuck now, or diverged (``non_finite``, final).
        iteration: onset of the current collapse: the first iteration of the trailing
            window at which the current stuck stretch was detected (for ``non_finite``
            the iteration that produced the non-finite value); ``None`` if not collapsed.
        reason: ``"stuck"`` or ``"non_finite"``; ``None`` when not collapsed.
        detected_at: iteration at which the current collapse was detected (>= onset).
        first_onset: onset of the first stuck stretch (or the non-finite iteration), kept
            after a recovery; ``None`` if the run was never stuck.
        stuck_iterations: number of iterations whose status was collapsed.
        dips: number of recovered dips (see the module docstring).
        dropped: inside a dip now (windowed return < drop_fraction x peak).
    """

    collapsed: bool = False
    iteration: int | None = None
    reason: str | None = None
    detected_at: int | None = None
    first_onset: int | None = None
    stuck_iterations: int = 0
    dips: int = 0
    dropped: bool = False


class CollapseDetector:
    """Streaming collapse detector: feed one iteration at a time with :meth:`update`.

    Deterministic (no randomness). The returned status is the verdict as of the latest
    iteration: "stuck" is set and cleared as the window changes, ``non_finite`` is final.

    Example:
        >>> detector = CollapseDetector(CollapseConfig(window_episodes=2, min_peak=10.0))
        >>> for k, ret in enumerate([5.0, 20.0, 20.0, 9.0, 9.0, 9.0, 30.0, 40.0]):
        ...     status = detector.update(k, ret, entropy=0.01 if ret < 10 else 0.6)
        ...     print(k, status.collapsed, status.iteration)
        0 False None
        1 False None
        2 False None
        3 False None
        4 True 3
        5 True 3
        6 False None
        7 False None
        >>> (status.first_onset, status.stuck_iterations, status.dips)
        (3, 2, 1)
    """

    def __init__(self, config: CollapseConfig | None = None) -> None:
        # a CollapseConfig is checked when it is built (and frozen): not again here
        if config is None:
            config = CollapseConfig()
        self.config = checks.instance("config", config, CollapseConfig)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.peak = -math.inf
        # (iteration, n_episodes, n * return, n * entropy) of the trailing window
        self._window: deque[tuple[int, int, float, float]] = deque()
        self._episodes = 0
        self._sum_return = 0.0
        self._sum_entropy = 0.0
        self._status = CollapseStatus()

    @property
    def status(self) -> CollapseStatus:
        """Current status (a copy)."""
        return CollapseStatus(**vars(self._status))

    def window_means(self) -> tuple[float, float] | None:
        """(mean return, mean entropy) over the trailing window, ``None`` until it is full."""
        if self._episodes < self.config.window_episodes:
            return None
        return self._sum_return / self._episodes, self._sum_entropy / self._episodes

    def update(
        self,
        iteration: int,
        mean_return: float,
        entropy: float,
        finite: bool = True,
        n_episodes: int = 1,
    ) -> CollapseStatus:
        """Record iteration ``iteration`` and return the status as of this iteration.

        Args:
            iteration: index of this iteration (reported back as onset/detection).
            mean_return: J_k, the iteration's return (mean over its episodes).
            entropy: H_k, mean policy entropy in nats over the visited states.
            finite: ``False`` when the loss, a gradient or a parameter was non-finite.
            n_episodes: episodes behind this iteration (N on CartPole; 1 for an exact J).
        """
        s = self._status
        if s.reason == "non_finite":
            return self.status
        cfg = self.config
        mean_return, entropy = float(mean_return), float(entropy)
        if not finite or not math.isfinite(mean_return) or not math.isfinite(entropy):
            onset = iteration if s.first_onset is None else s.first_onset
            self._status = CollapseStatus(
                True,
                iteration,
                "non_finite",
                iteration,
                onset,
                s.stuck_iterations + 1,
                s.dips,
                s.dropped,
            )
            return self.status

        # trailing window: the fewest latest iterations with >= window_episodes episodes
        n = int(n_episodes)
        self._window.append((iteration, n, n * mean_return, n * entropy))
        self._episodes += n
        self._sum_return += n * mean_return
        self._sum_entropy += n * entropy
        while self._episodes - self._window[0][1] >= cfg.window_episodes:
            _, n0, r0, h0 = self._window.popleft()
            self._episodes -= n0
            self._sum_return -= r0
            self._sum_entropy -= h0
        means = self.window_means()
        if means is None:
            return self.status
        window_return, window_entropy = means

        # dips: windowed return below drop_fraction x the windowed peak, counted on recovery
        self.peak = max(self.peak, window_return)
        dropped = self.peak >= cfg.min_peak and window_return < cfg.drop_fraction * self.peak
        if s.dropped and not dropped:
            s.dips += 1
        s.dropped = dropped

        stuck = (
            cfg.poor_return is not None
            and window_return <= cfg.poor_return
            and window_entropy < cfg.entropy_threshold
        )
        if stuck:
            if not s.collapsed:  # a new stuck stretch starts: onset = first iteration of W_k
                s.collapsed, s.reason = True, "stuck"
                s.iteration, s.detected_at = self._window[0][0], iteration
                if s.first_onset is None:
                    s.first_onset = s.iteration
            s.stuck_iterations += 1
        elif s.collapsed:  # climbed out: clear the verdict, keep the history
            s.collapsed, s.reason, s.iteration, s.detected_at = False, None, None, None
        return self.status


def detect_collapse(
    returns: Sequence[float],
    entropies: Sequence[float],
    finite: Sequence[bool] | None = None,
    config: CollapseConfig | None = None,
    n_episodes: int = 1,
) -> CollapseStatus:
    """Offline collapse detection over a whole curve (same rules as :class:`CollapseDetector`).

    Args:
        returns: J_k per iteration, length K.
        entropies: H_k per iteration (nats), length K.
        finite: per-iteration finiteness flags, length K; ``None`` means all ``True``.
        config: thresholds; ``None`` uses the CartPole defaults.
        n_episodes: episodes per iteration (N).

    Returns:
        The status after the last iteration (iterations numbered 0..K-1): whether the
        curve *ends* collapsed, plus its history (first onset, stuck iterations, dips).
        Stops early at a non-finite value (final).
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
        status = detector.update(k, returns[k], entropies[k], bool(finite[k]), n_episodes)
        if status.reason == "non_finite":
            break
    return status
