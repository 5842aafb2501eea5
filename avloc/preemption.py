"""Preemption (SIGTERM, e.g. a TPU VM or a scheduler reclaiming the machine) as one
decision that every process of a run takes at the same point.

One process: a SIGTERM handler sets a flag that `Guard.check` returns. Several processes
(`jax.distributed`): JAX's preemption sync manager, started by
`jax.distributed.initialize`, catches the SIGTERM of any process and
`multihost_utils.reached_preemption_sync_point` becomes true on every process at the
same call, so all of them save the same step and leave the same evaluation batch (a
flag per process would let them save different steps and then wait for each other
forever). `check` must therefore be called at the same points and in the same order on
every process: after every train step and before every evaluation batch.

A run stopped by a preemption raises `Preempted` after its checkpoint is saved;
`python -m avloc.main` then exits with `EXIT_STATUS`, so a scheduler does not take the
job for finished.
"""

import contextlib
import signal

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): stopped early, re-run the command to resume


class Preempted(Exception):
  """Training or evaluation stopped on a preemption; the message says what was saved."""


class Guard(contextlib.AbstractContextManager):
  """While entered, `check()` says whether the run must stop for a preemption."""

  def __init__(self):
    self.requested = False
    self._calls = 0
    self._previous = None
    # Several processes: JAX's own SIGTERM handler (installed by jax.distributed) must
    # stay in place, a Python handler would replace it.
    self._multihost = jax.process_count() > 1

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def check(self) -> bool:
    """True from the first call after a preemption notice (on every process alike)."""
    self._calls += 1
    if self._multihost and not self.requested:
      self.requested = multihost_utils.reached_preemption_sync_point(self._calls)
    return self.requested

  def __enter__(self):
    if not self._multihost:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if not self._multihost:
      signal.signal(signal.SIGTERM, self._previous)
    return False
