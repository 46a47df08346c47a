"""Numbers that do not depend on the thread count.

A multithreaded reduction splits its sum into per-thread partial sums, so the order of the
additions, and with it the last bits of the result, depends on how many threads ran it:
torch's intra-op pool (``torch.set_num_threads``, ``OMP_NUM_THREADS``) for reductions and
MKL's matrix products, OpenBLAS (``OPENBLAS_NUM_THREADS``) for numpy's. Those bits then
travel: a sampled action flips, a bisection takes the other branch, and two launchers that
run the same job with different thread settings store different numbers under the same
job hash.

pglab therefore computes with one thread:

* Every public entry point that reduces or multiplies (the exact oracle, the tabular
  estimates and ascent, rollouts, training, lock-step training and its stacked step,
  gradient quality) runs under :func:`thread_invariant`, which for the call sets torch's
  intra-op pool to one thread (``torch.set_num_threads(1)``) and the BLAS libraries that
  numpy loaded (OpenBLAS) to one thread (``threadpoolctl``), and puts the caller's settings
  back afterwards. Calls nested inside such a call find the settings made and pass
  through (so the many small entry points a training loop calls cost nothing extra).
  Measured on the zoo and CartPole, one thread is also the fastest (the tensors are
  small; a second thread costs more than it saves).
* Why numpy's BLAS too: lock-step training (:mod:`pglab.gym.lockstep`) multiplies with
  ``np.matmul``, one OpenBLAS gemm per run. Its policy forward would not need it (OpenBLAS
  splits those products by output rows), but the stacked step's weight gradients
  (``input^T dL/dz``, a sum over a batch's P rows) come out with other last bits when
  OpenBLAS runs them on two threads (measured here for every P >= 128), and OpenBLAS's
  default thread count is the machine's core count (or what ``OPENBLAS_NUM_THREADS``
  says), so without the limit a run's numbers would depend on the machine and on how a
  SLURM job was sized. ``tests/test_stacked.py`` runs the step with
  ``OPENBLAS_NUM_THREADS`` = 1 and 2 and asserts equal bits.
* :mod:`pglab.stats` (numpy and scipy only, no torch) runs its matrix products, the Gram
  matrix of the centred estimates and the bootstrap's ``counts @ centred``, through the
  BLAS inside :func:`blas_single_thread` (12-13x faster than ``np.einsum``'s own loops on
  Taxi's ``[200, 3006]`` estimates, measured), and computes the one eigenvector it needs
  with its own tridiagonalisation (no threaded LAPACK); the samplers use element-wise
  numpy only.

So the ``threads`` setting of an experiment changes neither its numbers nor (beyond the
caller's own work) its speed. Both settings are process-wide: do not run pglab entry
points from several Python threads at once if other threads rely on their own settings
meanwhile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["blas_single_thread", "single_thread", "thread_invariant"]

F = TypeVar("F", bound=Callable[..., Any])


#: How deep the current thread_invariant / single_thread calls are nested (the outermost
#: one sets and restores the settings; the others find them made).
_depth = 0
#: threadpoolctl's controller of the BLAS libraries loaded (found on first use, ~3 ms).
_blas: Any = None


def _blas_one_thread() -> Any:
    """A context manager that limits the loaded BLAS libraries to one thread."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas")
    return _blas.limit(limits=1)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's intra-op work and numpy's BLAS on one thread inside the block; restore
    the caller's settings after (~15 us; nothing at all inside another such block)."""
    global _depth
    if _depth:
        yield
        return
    import torch  # here, so that pglab.stats can use blas_single_thread without torch

    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    _depth += 1
    try:
        with _blas_one_thread():
            yield
    finally:
        _depth -= 1
        if previous != 1:
            torch.set_num_threads(previous)


@contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run numpy's BLAS on one thread inside the block (torch's pool untouched), and
    restore the caller's setting after; nothing at all inside :func:`single_thread`."""
    if _depth:
        yield
        return
    with _blas_one_thread():
        yield


def thread_invariant(function: F) -> F:
    """Decorate ``function`` to run under :func:`single_thread` (results independent of
    the caller's thread settings)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_thread():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
