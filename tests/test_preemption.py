"""Preemption notices (avloc/preemption.py) in one process: SIGTERM sets the flag that
`Guard.check` returns, and the previous handler is back after the guard. Several
processes (JAX's preemption sync point): tests/test_faults.py."""

import os
import signal

from avloc import preemption


def test_sigterm_inside_the_guard_is_a_preemption_and_the_handler_is_restored():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.Guard() as guard:
    assert not guard.check()
    os.kill(os.getpid(), signal.SIGTERM)  # delivered before kill returns (own process)
    assert guard.check() and guard.check()  # stays set
  assert signal.getsignal(signal.SIGTERM) == previous


def test_exit_status_is_ex_tempfail():
  assert preemption.EXIT_STATUS == 75
  assert issubclass(preemption.Preempted, Exception)
