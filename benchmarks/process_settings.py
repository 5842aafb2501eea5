r"""avloc's process-wide CPU settings (`avloc.platform`), each switched off, timed in fresh
processes that take turns; prints a table of gains (> 1: the setting makes the step faster).

  python benchmarks/process_settings.py --config=configs/jsa.py:vggsound_144k --batch_size=8
  python benchmarks/process_settings.py --config=configs/jsa.py:synthetic --batch_size=32

These settings hold for a whole process and must be made before jax starts, so unlike
`vs_official.py --changes` they cannot be timed side by side in one process: each of
`--rounds` rounds starts one process per setting, in turn, which times `--steps` train
steps after `--warmup` (the first one compiling) and reports medians. A setting's gain in
a round is its step time over the default's in the same round; the table gives the median
gain over rounds, their range, and page faults per step.
  glibc: one arena for all threads: M_ARENA_MAX=1 set before avloc starts, the rest as
    the default (avloc set it until 2026-12-03, then with asynchronous dispatch: the XLA
    thread pool's scratch allocations share one lock and one fragmented heap);
  asynchronous dispatch: JAX_CPU_ENABLE_ASYNC_DISPATCH=true (the step's buffers are then
    allocated on a thread whose arena maps them anew);
  glibc's defaults, asynchronous dispatch: AVLOC_KEEP_FREED_MEMORY=0.
"""

import ctypes
import os
import statistics
import sys

_ONE_ARENA = 'AVLOC_BENCHMARK_ONE_ARENA'
_M_ARENA_MAX = -8  # malloc.h
if os.environ.get(_ONE_ARENA) == '1':  # this process is the one-arena setting's round
  ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)  # before avloc (imported by common) starts

import common  # sets up the import path; pylint: disable=g-bad-import-order,wrong-import-position
import jax  # noqa: E402  pylint: disable=wrong-import-position
from absl import app, flags  # noqa: E402  pylint: disable=wrong-import-position
from ml_collections import config_flags  # noqa: E402  pylint: disable=wrong-import-position

from avloc import platform  # noqa: E402  pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Global batch size.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of one process per setting.')
_STEPS = flags.DEFINE_integer('steps', 6, 'Timed steps per process (median).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps per process, the first compiling.')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: time the step in this process and '
                           'print one JSON line.')

DEFAULT = 'default'
# Setting switched off -> what the child process's environment gets.
SWITCHED_OFF = {
    'glibc: one arena for all threads': {_ONE_ARENA: '1'},
    'asynchronous dispatch': {'JAX_CPU_ENABLE_ASYNC_DISPATCH': 'true'},
    "glibc's defaults, asynchronous dispatch": {'AVLOC_KEEP_FREED_MEMORY': '0'},
}

def time_step() -> dict:
  """Medians of this process's train step: wall and CPU seconds, minor page faults."""
  config = common.k_within_batch(_CONFIG.value.copy_and_resolve_references(),
                                 _BATCH_SIZE.value)
  setup = common.train_setup(config, _BATCH_SIZE.value)
  timing = common.interleaved({'step': common.TrainStepCall(setup)}, _STEPS.value,
                              warmup=_WARMUP.value)['step']
  return common.timing_result(timing, platform.describe())


def run_child(environ: dict) -> dict:
  """`time_step` in a fresh process with `environ` added to this one's environment."""
  argv = [a for a in sys.argv[1:] if not a.startswith('--child')]
  return common.child_result(__file__, [*argv, '--child'], environ)


def gain_rows(rounds: list[dict[str, dict]]) -> list[list]:
  """Rows of the table from per-round results {setting: time_step's dict}: per setting
  switched off, the median step time over rounds, the default's, the median of the
  per-round gains (its step time / the default's) with their range, the same for CPU time,
  and page faults per step."""
  rows = []
  for name in SWITCHED_OFF:
    gains = [r[name]['wall'] / r[DEFAULT]['wall'] for r in rounds]
    cpu_gains = [r[name]['cpu'] / r[DEFAULT]['cpu'] for r in rounds]
    rows.append([
        name, f'{statistics.median(r[name]["wall"] for r in rounds):.3f}',
        f'{statistics.median(r[DEFAULT]["wall"] for r in rounds):.3f}',
        f'{statistics.median(gains):.2f}x ({min(gains):.2f}-{max(gains):.2f})',
        f'{statistics.median(cpu_gains):.2f}x',
        f'{statistics.median(r[name]["faults"] for r in rounds) / 1e3:.0f}k / '
        f'{statistics.median(r[DEFAULT]["faults"] for r in rounds) / 1e3:.0f}k'])
  return rows


def main(argv):
  del argv
  if _CHILD.value:
    common.print_result(time_step())
    return
  if jax.default_backend() != 'cpu' or not platform.cpu_is_default():
    raise app.UsageError('process_settings.py times avloc\'s CPU settings: run it on a CPU.')
  print(common.machine())
  rounds = []
  for _ in range(_ROUNDS.value):
    rounds.append({name: run_child(environ)
                   for name, environ in {DEFAULT: {}, **SWITCHED_OFF}.items()})
  common.print_table(
      f'avloc\'s process-wide CPU settings, each switched off: {_CONFIG.value.method} train '
      f'step, batch {_BATCH_SIZE.value}, medians of {_STEPS.value} steps per process, '
      f'{_ROUNDS.value} rounds of one process each (default: {rounds[0][DEFAULT]["described"]}'
      f'); {common.load_average()}',
      ['switched off', 'step s', 'default s', 'gain (range)', 'CPU-time gain',
       'page faults / step'], gain_rows(rounds))


if __name__ == '__main__':
  app.run(main)
