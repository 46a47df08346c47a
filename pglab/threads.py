"""Numbers that do not depend on the thread count.

A multithreaded reduction splits its sum into per-thread partial sums, so the order of the
additions, and with it the last bits of the result, depends on how many threads ran it:
torch's intra-op pool (``torch.set_num_threads``, ``OMP_NUM_THREADS``) for reductions and
MKL's matrix products, OpenBLAS (``OPENBLAS_NUM_THREADS``) for numpy's. Those bits then
travel: a sampled action flips, a bisection takes the other branch, and two launchers that
run the same job with different thread settings store different numbers under the same
job hash.

pglab therefore computes with one thread:

* torch: every public entry point that reduces or multiplies (the exact oracle, the
  tabular estimates and ascent, rollouts, training, gradient quality) runs under
  :func:`thread_invariant`, which sets ``torch.set_num_threads(1)`` for the call and puts
  the caller's setting back afterwards. Measured on the zoo and CartPole, one thread is
  also the fastest (the tensors are small; a second thread costs more than it saves).
* numpy: :mod:`pglab.stats` calls no BLAS/LAPACK routine that threads (``np.einsum``
  instead of ``@``, its own tridiagonalisation for the one eigenvector it needs); the
  samplers use element-wise numpy only. Lock-step's policy forward
  (:meth:`pglab.gym.lockstep.PolicyStack.logits`) is a stacked ``np.matmul``, one OpenBLAS
  gemm per run, which threads on large slices; OpenBLAS splits the output, not the sum,
  so its bits do not depend on the thread count (tested with 1 and 2 threads).

So the ``threads`` setting of an experiment changes neither its numbers nor (beyond the
caller's own work) its speed. ``torch.set_num_threads`` is process-wide: do not run
pglab entry points from several Python threads at once if other threads rely on their
own setting meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["single_thread", "thread_invariant"]

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's intra-op work on one thread inside the block; restore the setting after."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def thread_invariant(function: F) -> F:
    """Decorate ``function`` to run under :func:`single_thread` (results independent of
    the caller's torch thread count)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
