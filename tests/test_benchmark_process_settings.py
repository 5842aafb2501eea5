"""benchmarks/process_settings.py with its child processes stubbed: which environment each
setting's process gets, and the cells of the table. In a subprocess: the script defines
absl flags that other modules define too."""

import os

from tests.benchmark_scripts import printed_table, run_stubbed

# subprocess.run replaced by a stub that records each child's command line and setting
# and answers with step times per (setting, round) as below.
_SCRIPT = '''
import json, runpy, subprocess, sys, types
WALL = {'default': [1.0, 2.0], 'one arena': [1.5, 2.6], 'async': [1.1, 2.4], 'glibc': [2.0, 2.0]}
calls = []

def run(command, env, **kwargs):
  setting = ('one arena' if env.get('AVLOC_BENCHMARK_ONE_ARENA') == '1' else
             'async' if env.get('JAX_CPU_ENABLE_ASYNC_DISPATCH') == 'true' else
             'glibc' if env.get('AVLOC_KEEP_FREED_MEMORY') == '0' else 'default')
  round_ = sum(call[1] == setting for call in calls)
  calls.append([command[2:], setting])
  wall = WALL[setting][round_]
  result = {'wall': wall, 'cpu': 2 * wall, 'faults': 1000.0 * wall, 'described': 'ours'}
  return types.SimpleNamespace(stdout='compiling\\nRESULT ' + json.dumps(result) + '\\n')

subprocess.run = run
sys.argv = ['process_settings.py', '--rounds=2', '--batch_size=4']
sys.path.insert(0, 'benchmarks')
try:
  runpy.run_path('benchmarks/process_settings.py', run_name='__main__')
finally:
  print('CALLS ' + json.dumps(calls))
'''


def test_each_setting_runs_in_its_own_process_per_round_and_gains_are_paired_by_round():
  environ = {k: v for k, v in os.environ.items() if k not in (
      'AVLOC_BENCHMARK_ONE_ARENA', 'JAX_CPU_ENABLE_ASYNC_DISPATCH', 'AVLOC_KEEP_FREED_MEMORY')}
  calls, lines = run_stubbed(_SCRIPT, env=environ)
  assert [setting for _, setting in calls] == ['default', 'one arena', 'async', 'glibc'] * 2
  assert all(argv == ['--rounds=2', '--batch_size=4', '--child'] for argv, _ in calls)
  title, table = printed_table(lines, "avloc's process-wide")
  rows = {name: list(row.values())[1:] for name, row in table.items()}
  # step s (median over rounds), default s, gain (median of per-round ratios, range),
  # CPU-time gain, page faults per step (setting / default).
  assert rows == {
      'glibc: one arena for all threads': ['2.050', '1.500', '1.40x (1.30-1.50)', '1.40x',
                                           '2k / 2k'],
      'asynchronous dispatch': ['1.750', '1.500', '1.15x (1.10-1.20)', '1.15x', '2k / 2k'],
      "glibc's defaults, asynchronous dispatch": ['2.000', '1.500', '1.50x (1.00-2.00)',
                                                  '1.50x', '2k / 2k'],
  }
  assert 'default: ours' in title
