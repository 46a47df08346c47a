"""CartPole's equations of motion for many copies at once, as gymnasium steps them.

Lock-step training (:mod:`pglab.gym.lockstep`) plays every copy's episode starts itself
and never lets the environment reset a copy, so of ``CartPoleVectorEnv.step`` it needs the
dynamics only. Calling the env costs ~70 us a step at 120 copies, half of it in
``action_space.contains``; :class:`CartPoleCopies` does the same arithmetic without it.

State ``s = (x, x_dot, theta, theta_dot)`` ``[4, n]`` float64; with force
F = sign(a - 1/2) f, m = m_c + m_p, and half pole length l:

    temp      = (F + m_p l theta_dot^2 sin theta) / m
    theta_acc = (g sin theta - cos theta temp) / (l (4/3 - m_p cos^2 theta / m))
    x_acc     = temp - m_p l theta_acc cos theta / m

then one Euler (or semi-implicit Euler) step of length tau. The expressions and their
order are gymnasium's (1.x ``CartPoleVectorEnv.step``), so every value is bit-identical to
the env's (``tests/test_cartpole_physics.py`` steps both side by side). A copy terminates
when |x| > 2.4 or |theta| > 12 degrees; the caller counts steps for the time limit.

Copies that no episode uses (padding rows, copies whose episode has ended) keep stepping;
one that terminates there is put back to the zero state so it never overflows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CartPoleCopies"]


class CartPoleCopies:
    """``n`` CartPole copies stepped together with the constants of ``env``.

    ``env`` is the gymnasium ``CartPoleVectorEnv`` (unwrapped) whose constants (masses,
    lengths, force, tau, integrator, thresholds, reward variant) the copies use.
    """

    def __init__(self, env: Any, n: int) -> None:
        self.gravity = env.gravity
        self.masspole = env.masspole
        self.total_mass = env.total_mass
        self.length = env.length
        self.polemass_length = env.polemass_length
        self.force_mag = env.force_mag
        self.tau = env.tau
        self.euler = env.kinematics_integrator == "euler"
        self.x_threshold = env.x_threshold
        self.theta_threshold = env.theta_threshold_radians
        self.sutton_barto = bool(getattr(env, "_sutton_barto_reward", False))
        #: ``[4, n]`` float64; rows x, x_dot, theta, theta_dot. Write starts into columns.
        self.state = np.zeros((4, n), dtype=np.float64)

    def step(
        self, action: np.ndarray, live: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of the first c copies under ``action [c]`` (0 or 1; c is every copy or
        fewer, the rest stand still): ``(obs [c, 4] float32, reward [c] float32,
        terminated [c] bool)``. Copies where ``live [c]`` is False that terminate are reset
        to the zero state (their values are never used). Element-wise arithmetic, so a
        copy's values do not depend on c."""
        c = action.shape[0]
        whole = c == self.state.shape[1]
        x, x_dot, theta, theta_dot = self.state if whole else self.state[:, :c]
        force = np.sign(action - 0.5) * self.force_mag
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        if self.euler:
            x = x + self.tau * x_dot
            x_dot = x_dot + self.tau * xacc
            theta = theta + self.tau * theta_dot
            theta_dot = theta_dot + self.tau * thetaacc
        else:  # semi-implicit Euler
            x_dot = x_dot + self.tau * xacc
            x = x + self.tau * x_dot
            theta_dot = theta_dot + self.tau * thetaacc
            theta = theta + self.tau * theta_dot
        if whole:
            self.state = np.stack((x, x_dot, theta, theta_dot))
        else:
            np.stack((x, x_dot, theta, theta_dot), out=self.state[:, :c])
        terminated = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold)
            | (theta > self.theta_threshold)
        )
        if self.sutton_barto:
            reward = -terminated.astype(np.float32)
        else:
            reward = np.ones(terminated.shape, dtype=np.float32)
        dead = terminated & ~live
        state = self.state if whole else self.state[:, :c]
        if dead.any():
            state[:, dead] = 0.0
        return state.T.astype(np.float32), reward, terminated
