"""Named MDPs: small hand-checkable ones, classic hard-exploration ones, random ones, and
the gymnasium toy-text environments.

``make(name, **kwargs)`` builds one by registry name; ``available()`` lists the names.
Every constructor's docstring is the specification of its MDP: states, actions,
transitions, rewards, start, episode end, horizon, and why it is worth studying.

All constructors return a validated :class:`~pglab.tabular.mdp.TabularMDP` (float64 tensors).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pglab import checks
from pglab.tabular.mdp import TabularMDP

__all__ = [
    "available",
    "chain",
    "cliffwalking",
    "file",
    "frozenlake",
    "garnet",
    "gridworld",
    "make",
    "short_corridor",
    "taxi",
    "two_state",
]


# ---------------------------------------------------------------------------------------
# Hand-checkable
# ---------------------------------------------------------------------------------------
def two_state(
    horizon: int = 3,
    gamma: float = 1.0,
    stay_reward: float = 1.0,
    far_reward: float = 2.0,
) -> TabularMDP:
    """Two states, two actions: take a small reward now, or walk away for a bigger one.

    ==========  ============================================================================
    States      ``0 = start``, ``1 = far``
    Actions     ``0 = stay``, ``1 = go``
    Start       ``start`` with probability 1
    Episode     exactly ``horizon`` decisions (no terminal states)
    ==========  ============================================================================

    Transitions and rewards (deterministic):

    =========  ========  ===========  ================
    state      action    next state   reward
    =========  ========  ===========  ================
    start      stay      start        ``stay_reward``
    start      go        far          0
    far        stay      far          ``far_reward``
    far        go        far          0
    =========  ========  ===========  ================

    Closed form. Write ``p = pi(stay | start)``, ``q = pi(stay | far)``, ``r1 =
    stay_reward``, ``r2 = far_reward``. The agent is still at ``start`` at time ``t`` with
    probability ``p^t``, so::

        J = sum_{t=0}^{T-1} gamma^t [ p^t p r1 + (1 - p^t) q r2 ]
        dJ/dtheta[start, stay] = -dJ/dtheta[start, go]
                               = p (1 - p) sum_t gamma^t [ (t+1) p^t r1 - t p^(t-1) q r2 ]
        dJ/dtheta[far, stay]   = -dJ/dtheta[far, go]
                               = q (1 - q) sum_t gamma^t (1 - p^t) r2

    With the defaults (``T = 3``, ``gamma = 1``, ``r1 = 1``, ``r2 = 2``) and uniform
    logits: ``J = 2.125``, ``dJ/dtheta = [[0.1875, -0.1875], [0.625, -0.625]]``, and the
    optimum ``J* = 4`` (go, then stay).

    Why: small enough to check every number by hand, yet it has the basic tension of RL:
    the immediate reward of ``stay`` competes with the delayed, larger reward behind
    ``go``. At the uniform policy the gradient in ``start`` points towards the myopic
    ``stay``.
    """
    horizon = checks.positive_int("horizon", horizon)
    stay_reward = checks.real("stay_reward", stay_reward)
    far_reward = checks.real("far_reward", far_reward)
    transitions = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # start: stay -> start, go -> far
            [[0.0, 1.0], [0.0, 1.0]],  # far:   stay -> far,   go -> far
        ],
        dtype=torch.float64,
    )
    rewards = torch.tensor([[stay_reward, 0.0], [far_reward, 0.0]], dtype=torch.float64)
    return TabularMDP(
        transitions=transitions,
        rewards=rewards,
        initial=[1.0, 0.0],
        horizon=horizon,
        gamma=gamma,
        name="two_state",
        state_names=("start", "far"),
        action_names=("stay", "go"),
    )


# ---------------------------------------------------------------------------------------
# Hard exploration
# ---------------------------------------------------------------------------------------
def chain(
    n_states: int = 5,
    slip: float = 0.2,
    small_reward: float = 2.0,
    big_reward: float = 10.0,
    horizon: int = 20,
    gamma: float = 1.0,
) -> TabularMDP:
    """The "NChain" of Strens (2000): a small sure reward near the start, a big one far away.

    ==========  ============================================================================
    States      ``0 .. n_states-1`` along a line; ``0`` is the start, ``n_states-1`` the end
    Actions     ``0 = left`` (back to the start), ``1 = right`` (one step along the chain)
    Start       state 0 with probability 1
    Episode     exactly ``horizon`` decisions (no terminal states)
    ==========  ============================================================================

    Dynamics. The *executed* action equals the chosen one with probability ``1 - slip``
    and is the other action with probability ``slip``. The executed action decides both
    the move and the reward:

    ==================  ===============================  ==================================
    executed action     next state                       reward
    ==================  ===============================  ==================================
    left                0                                ``small_reward``
    right               ``min(s + 1, n_states - 1)``     ``big_reward`` if ``s = n-1``
                                                         else 0
    ==================  ===============================  ==================================

    so ``r(s, a) = (1 - slip) R(s, a) + slip R(s, other action)``. The next state tells
    which action was executed (left lands in 0, right never does), so a sampled step is
    paid the executed action's reward, ``R(s, a, s') = R(s, executed(s, s'))``
    (``transition_rewards``), and ``r(s, a)`` is its expectation.

    Why: the myopic best action in every state but the last is ``left`` (``small_reward``
    now), while the optimal policy walks right for ``n_states - 1`` unrewarded steps to
    collect ``big_reward`` at every following step. A near-uniform policy seldom reaches
    the end (it must pick ``right`` many times in a row, and each slip resets it), so
    sampled gradients mostly see the small reward: a classic test of exploration and of
    gradient variance.
    """
    n_states = checks.integer("n_states", n_states, minimum=2)
    slip = checks.probability("slip", slip)
    small_reward = checks.real("small_reward", small_reward)
    big_reward = checks.real("big_reward", big_reward)
    horizon = checks.positive_int("horizon", horizon)

    left, right = 0, 1
    states = np.arange(n_states)
    move = np.zeros((n_states, 2, n_states))  # move[s, executed, s']
    move[states, left, 0] = 1.0
    move[states, right, np.minimum(states + 1, n_states - 1)] = 1.0
    pay = np.zeros((n_states, 2))  # pay[s, executed]
    pay[:, left] = small_reward
    pay[n_states - 1, right] = big_reward
    # executed = chosen w.p. 1 - slip, the other action w.p. slip
    swapped_move = move[:, ::-1, :]
    swapped_pay = pay[:, ::-1]
    transitions = (1.0 - slip) * move + slip * swapped_move
    rewards = (1.0 - slip) * pay + slip * swapped_pay
    # R(s, a, s') = pay[s, e] for the executed e with move[s, e, s'] = 1 (the two moves of
    # a state land in different states), whatever the chosen a
    paid_on_landing = (move * pay[:, :, None]).sum(axis=1)  # [S, S']
    transition_rewards = np.broadcast_to(paid_on_landing[:, None, :], move.shape).copy()
    initial = np.zeros(n_states)
    initial[0] = 1.0
    return TabularMDP(
        transitions=transitions,
        rewards=rewards,
        initial=initial,
        horizon=horizon,
        gamma=gamma,
        name="chain",
        action_names=("left", "right"),
        transition_rewards=transition_rewards,
    )


def gridworld(
    size: int = 4,
    slip: float = 0.1,
    pit: bool = True,
    goal_reward: float = 1.0,
    pit_reward: float = -1.0,
    step_reward: float = 0.0,
    horizon: int | None = None,
    gamma: float = 1.0,
) -> TabularMDP:
    """A ``size x size`` grid: walk from the top-left corner to a goal, avoiding a pit.

    ==========  ============================================================================
    States      cell ``(row, col)`` is state ``row * size + col``; row 0 is the top
    Actions     ``0 = left``, ``1 = down``, ``2 = right``, ``3 = up`` (FrozenLake order)
    Start       ``(0, 0)`` with probability 1
    Goal        ``(size-1, size-1)``: terminal
    Pit         ``(size-2, size-2)`` if ``pit`` (needs ``size >= 3``): terminal
    Horizon     ``horizon``, default ``4 * size`` decisions
    ==========  ============================================================================

    Dynamics. The agent moves in the chosen direction with probability ``1 - slip`` and
    in each of the two perpendicular directions with probability ``slip / 2``. A move into
    the outer wall leaves it where it is.

    Rewards, paid on the step that enters a cell (``r(s, a)`` is their expectation):

    ===================  ==================================
    entering             reward
    ===================  ==================================
    the goal             ``goal_reward + step_reward``
    the pit              ``pit_reward + step_reward``
    any other cell       ``step_reward``
    ===================  ==================================

    Episode end: on entering the goal or the pit (absorbing, zero reward afterwards), or
    after ``horizon`` decisions.

    Why: the pit sits diagonally next to the goal, so both last steps into the goal
    (down from ``(size-2, size-1)``, right from ``(size-1, size-2)``) risk slipping into
    it with probability ``slip / 2``; the policy must trade path length against risk, and
    terminal states make trajectories of random length.
    """
    size = checks.integer("size", size, minimum=2)
    slip = checks.probability("slip", slip)
    goal_reward = checks.real("goal_reward", goal_reward)
    pit_reward = checks.real("pit_reward", pit_reward)
    step_reward = checks.real("step_reward", step_reward)
    pit = checks.boolean("pit", pit)
    if pit and size < 3:
        raise checks.ConfigError(
            f"size must be >= 3 when pit=True (the pit needs a cell), got {size}"
        )
    horizon = 4 * size if horizon is None else checks.positive_int("horizon", horizon)

    n_states, n_actions = size * size, 4
    deltas = {0: (0, -1), 1: (1, 0), 2: (0, 1), 3: (-1, 0)}  # left, down, right, up
    goal = n_states - 1
    pit_state = (size - 2) * size + (size - 2) if pit else None
    terminal = np.zeros(n_states, dtype=bool)
    terminal[goal] = True
    if pit_state is not None:
        terminal[pit_state] = True

    entering = np.full(n_states, step_reward)  # reward for entering s'
    entering[goal] += goal_reward
    if pit_state is not None:
        entering[pit_state] += pit_reward

    transitions = np.zeros((n_states, n_actions, n_states))
    for row in range(size):
        for col in range(size):
            s = row * size + col
            if terminal[s]:
                transitions[s, :, s] = 1.0
                continue
            for a in range(n_actions):
                outcomes = ((a, 1.0 - slip), ((a + 1) % 4, slip / 2), ((a - 1) % 4, slip / 2))
                for direction, prob in outcomes:
                    d_row, d_col = deltas[direction]
                    new_row = min(max(row + d_row, 0), size - 1)
                    new_col = min(max(col + d_col, 0), size - 1)
                    transitions[s, a, new_row * size + new_col] += prob
    reward_tensor = np.broadcast_to(entering, (n_states, n_actions, n_states)).copy()
    reward_tensor[terminal] = 0.0
    initial = np.zeros(n_states)
    initial[0] = 1.0
    return TabularMDP(
        transitions=transitions,
        rewards=reward_tensor,
        initial=initial,
        horizon=horizon,
        gamma=gamma,
        terminal=terminal,
        name="gridworld",
        action_names=("left", "down", "right", "up"),
    )


# ---------------------------------------------------------------------------------------
# Random
# ---------------------------------------------------------------------------------------
def garnet(
    n_states: int = 20,
    n_actions: int = 4,
    branching: int = 3,
    seed: int = 0,
    horizon: int = 50,
    gamma: float = 1.0,
) -> TabularMDP:
    """A Garnet ("generic average reward non-stationary environment test-bench") random MDP.

    Garnets (Archibald, McKinnon and Thomas, 1995; used by Bhatnagar et al., 2009) are
    random MDPs with a controlled number of successors per state-action pair.

    ==========  ============================================================================
    States      ``0 .. n_states-1``
    Actions     ``0 .. n_actions-1``
    Start       uniform over all states, ``rho(s) = 1 / n_states``
    Episode     exactly ``horizon`` decisions (no terminal states)
    ==========  ============================================================================

    For every ``(s, a)``, independently:

    * ``branching`` distinct next states, drawn uniformly without replacement;
    * their probabilities are the gaps between ``branching - 1`` sorted ``U(0, 1)`` cut
      points of ``[0, 1]`` (a uniform draw from the probability simplex, Dirichlet(1));
    * the reward ``r(s, a) ~ U(0, 1)``.

    Seeding: one ``torch.Generator`` seeded with ``seed``, so the same arguments always
    give the same MDP, independent of global RNG state.

    Why: an unstructured family with no special symmetry, used to check estimators and
    the oracle on "typical" MDPs; ``branching`` controls how stochastic it is
    (``branching = 1`` is deterministic).
    """
    n_states = checks.positive_int("n_states", n_states)
    n_actions = checks.positive_int("n_actions", n_actions)
    branching = checks.positive_int("branching", branching)
    if branching > n_states:
        raise checks.ConfigError(f"branching must be <= n_states = {n_states}, got {branching}")
    horizon = checks.positive_int("horizon", horizon)
    seed = checks.seed("seed", seed)

    generator = torch.Generator().manual_seed(seed)
    shape = (n_states, n_actions)
    # branching distinct successors: the first `branching` entries of a random permutation
    successors = torch.rand(*shape, n_states, generator=generator, dtype=torch.float64)
    successors = successors.argsort(dim=-1)[..., :branching]  # [S, A, b]
    cuts = torch.rand(*shape, branching - 1, generator=generator, dtype=torch.float64)
    cuts = torch.sort(cuts, dim=-1).values
    zeros = torch.zeros(*shape, 1, dtype=torch.float64)
    ones = torch.ones(*shape, 1, dtype=torch.float64)
    probabilities = torch.diff(torch.cat([zeros, cuts, ones], dim=-1), dim=-1)  # [S, A, b]
    transitions = torch.zeros(*shape, n_states, dtype=torch.float64)
    transitions.scatter_(-1, successors, probabilities)
    rewards = torch.rand(*shape, generator=generator, dtype=torch.float64)
    initial = torch.full((n_states,), 1.0 / n_states, dtype=torch.float64)
    return TabularMDP(
        transitions=transitions,
        rewards=rewards,
        initial=initial,
        horizon=horizon,
        gamma=gamma,
        name=f"garnet(S={n_states},A={n_actions},b={branching},seed={seed})",
    )


# ---------------------------------------------------------------------------------------
# gymnasium toy text
# ---------------------------------------------------------------------------------------
def frozenlake(
    map_name: str = "4x4",
    is_slippery: bool = True,
    horizon: int | None = None,
    gamma: float = 1.0,
) -> TabularMDP:
    """gymnasium's FrozenLake: cross a frozen lake from S to G without falling into a hole.

    =============  =========================================================================
    States         ``16`` (4x4) or ``64`` (8x8) cells, ``row * ncol + col``
    Actions        ``0 = left``, ``1 = down``, ``2 = right``, ``3 = up``
    Transitions    slippery: the intended direction and both perpendicular ones, 1/3 each;
                   otherwise deterministic; walls keep the agent in place
    Rewards        1 for entering G, else 0
    Start          the S cell (state 0)
    Terminal       holes H and the goal G (absorbing, zero reward in gymnasium's model
                   already, so they are marked terminal; no state is added)
    Horizon        default: the registry's time limit, 100 for ``"FrozenLake-v1"`` (4x4)
                   and 200 for ``"FrozenLake8x8-v1"`` (8x8)
    =============  =========================================================================

    With ``gamma = 1``, ``J`` is the probability of reaching G within the horizon.
    gymnasium's registry quotes the optimum as 0.74 (4x4) and 0.91 (8x8) for the
    slippery lakes; the deterministic lakes have ``J* = 1``.

    Why: sparse reward, random-length episodes, and (slippery) heavy stochasticity: a
    standard small benchmark with a known optimum.
    """
    env_ids = {"4x4": "FrozenLake-v1", "8x8": "FrozenLake8x8-v1"}
    checks.one_of("map_name", map_name, tuple(env_ids))
    checks.boolean("is_slippery", is_slippery)
    env_id = env_ids[map_name]
    name = env_id if is_slippery else f"{env_id}(is_slippery=False)"
    return TabularMDP.from_gymnasium(
        env_id, horizon=horizon, gamma=gamma, name=name, is_slippery=is_slippery
    )


def cliffwalking(
    is_slippery: bool = False,
    horizon: int = 100,
    gamma: float = 1.0,
) -> TabularMDP:
    """gymnasium's CliffWalking-v1 (Sutton and Barto, Example 6.6): a 4x12 grid with a cliff.

    =============  =========================================================================
    States         48 cells ``row * 12 + col`` plus **state 48, an added terminal state**
    Actions        ``0 = up``, ``1 = right``, ``2 = down``, ``3 = left``
    Transitions    deterministic (slippery: intended or either perpendicular, 1/3 each);
                   stepping onto the cliff ``(3, 1..10)`` returns the agent to the start
    Rewards        -1 per step, -100 for stepping onto the cliff
    Start          ``(3, 0)`` = state 36 (gymnasium's ``initial_state_distrib``)
    Terminal       entering the goal ``(3, 11)`` ends the episode. gymnasium's model gives
                   the goal cell ordinary dynamics, so the terminating step is routed to the
                   added absorbing state 48 (see ``TabularMDP.from_gymnasium``)
    Horizon        ``horizon`` (default 100): gymnasium registers no time limit
    =============  =========================================================================

    With ``gamma = 1`` and ``horizon >= 13`` the optimal return is ``-13`` (up, eleven
    times right, down).

    Why: a safe-but-long versus short-but-risky path; the cliff makes the returns of
    exploratory policies strongly negative and high-variance.
    """
    checks.boolean("is_slippery", is_slippery)
    name = "CliffWalking-v1" if not is_slippery else "CliffWalkingSlippery-v1"
    return TabularMDP.from_gymnasium(
        "CliffWalking-v1", horizon=horizon, gamma=gamma, name=name, is_slippery=is_slippery
    )


def taxi(
    is_rainy: bool = False,
    horizon: int | None = None,
    gamma: float = 1.0,
) -> TabularMDP:
    """gymnasium's Taxi-v4 (Dietterich, 2000): pick up a passenger and drop them off.

    =============  =========================================================================
    States         500 = 25 taxi cells x 5 passenger places (4 pads or in the taxi) x 4
                   destinations, encoded as in gymnasium, plus **state 500, an added
                   terminal state**
    Actions        ``0 = south``, ``1 = north``, ``2 = east``, ``3 = west``, ``4 = pickup``,
                   ``5 = drop off``
    Transitions    deterministic moves, blocked by walls (``is_rainy``: intended direction
                   w.p. 0.8, each lateral direction w.p. 0.1)
    Rewards        -1 per step; +20 for a correct drop-off; -10 for an illegal pickup or
                   drop-off
    Start          gymnasium's ``initial_state_distrib``: uniform over the 300 states with
                   the passenger waiting on a pad other than the destination
    Terminal       the correct drop-off ends the episode. The landing states still have
                   ordinary dynamics in gymnasium's model, so that step is routed to the
                   added absorbing state 500
    Horizon        default 200 (the registry's time limit)
    =============  =========================================================================

    gymnasium 1.4 retired ``Taxi-v3`` (``gymnasium.make`` raises ``DeprecatedEnv``);
    ``Taxi-v4`` has the same deterministic dynamics and fixes the rainy variant. The
    registry quotes the optimal average return as 8.46 (``gamma = 1``). The
    ``fickle_passenger`` option is not offered: it depends on hidden state outside ``P``.

    Why: the largest zoo MDP (``S = 501``, ``A = 6``), with a long-delayed reward and many
    punishing actions; it checks that the oracle and samplers scale.
    """
    checks.boolean("is_rainy", is_rainy)
    name = "Taxi-v4" if not is_rainy else "Taxi-v4(is_rainy=True)"
    return TabularMDP.from_gymnasium(
        "Taxi-v4", horizon=horizon, gamma=gamma, name=name, is_rainy=is_rainy
    )


def short_corridor(horizon: int = 200, gamma: float = 1.0) -> TabularMDP:
    """Sutton & Barto's short corridor with switched actions (Example 13.1), with features.

    States: ``0, 1, 2`` along a corridor and ``3 = goal`` (terminal); start in 0.
    Actions: ``0 = left``, ``1 = right``; in state 1 they are swapped (right moves back to
    0, left on to 2); left in 0 hits the wall; right in 2 reaches the goal. Reward ``-1``
    per step until the goal; the episode ends there or after ``horizon`` decisions.
    Features: ``phi(s, right) = [1, 0]``, ``phi(s, left) = [0, 1]`` in every state
    (``mdp.features`` ``[4, 2, 2]``), so every state has the same policy
    ``p = pi(right) = sigmoid(theta_0 - theta_1)``.

    Why: the agent cannot tell the states apart, and every deterministic policy never
    reaches the goal; the best policy is stochastic, ``p* = 2 - sqrt(2)`` with value
    ``-(6 + 4 sqrt(2)) = -11.657`` (matched to 6.6e-9 at the default horizon 200), a case
    only a policy sharing parameters across states can express. ``tabular_ascent``
    ascends ``theta [2]``; the exact oracle's "stationary optimum" (best tabular policy,
    which tells the states apart: ``-3``) is not reachable with these features. The
    specification and the closed form live in :func:`pglab.tabular.features.short_corridor`.
    """
    from pglab.tabular import features as feature_policies  # features imports this module's MDP

    mdp, _ = feature_policies.short_corridor(horizon=horizon, gamma=gamma)
    return mdp


def file(path: str | Path) -> TabularMDP:
    """Load an MDP from a ``.yaml`` or ``.npz`` file; see ``TabularMDP.from_file``."""
    return TabularMDP.from_file(path)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., TabularMDP]] = {
    "two_state": two_state,
    "chain": chain,
    "gridworld": gridworld,
    "garnet": garnet,
    "frozenlake": frozenlake,
    "cliffwalking": cliffwalking,
    "taxi": taxi,
    "short_corridor": short_corridor,
    "file": file,
}


def available() -> list[str]:
    """Registry names accepted by :func:`make`, in a stable order."""
    return list(_REGISTRY)


def make(name: str, **kwargs: Any) -> TabularMDP:
    """Build the named MDP, e.g. ``make("garnet", n_states=20, seed=3)``.

    Raises:
        ValueError: for an unknown name (listing the known ones) or an argument the
            constructor does not take (listing the ones it does).
    """
    checks.one_of("MDP", name, available())
    constructor = _REGISTRY[name]
    signature = inspect.signature(constructor)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise checks.ConfigError(
            f"make({name!r}): {error}; {name} takes {list(signature.parameters)}"
        ) from None
    return constructor(**kwargs)
