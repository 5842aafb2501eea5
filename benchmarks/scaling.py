r"""Data-parallel scaling of the train step at a fixed per-device batch; prints a table.

  python benchmarks/scaling.py --config=configs/jsa.py:synthetic --devices=1,2,4,8

On CPU each device count runs in its own process with
XLA_FLAGS=--xla_force_host_platform_device_count=N (fake devices sharing the same cores:
the figures show the cost of sharding and collectives, not a speed-up). On a machine with
N accelerators, `--devices` values up to N use the first devices of one process.
"""

import json
import os
import subprocess
import sys
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts.')
_PER_DEVICE_BATCH = flags.DEFINE_integer('per_device_batch', 8, 'Batch per device.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed steps.')
_CHILD = flags.DEFINE_integer('child', 0, 'Internal: measure with this many devices, print JSON.')


def measure(config, num_devices: int) -> dict:
  setup = common.train_setup(config, _PER_DEVICE_BATCH.value * num_devices,
                             devices=jax.devices()[:num_devices])
  state, metrics = setup.step(setup.state, setup.batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_REPEATS.value):
    state, metrics = setup.step(state, setup.batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / _REPEATS.value
  return {'devices': num_devices, 'step_seconds': seconds,
          'samples_per_second': _PER_DEVICE_BATCH.value * num_devices / seconds}


def run_child(num_devices: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}')
  args = [sys.executable, __file__, f'--child={num_devices}']
  args += [a for a in sys.argv[1:] if not a.startswith('--devices')]
  out = subprocess.run(args, env=env, cwd=common.REPO, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    print(json.dumps(measure(_CONFIG.value, _CHILD.value)))
    return
  counts = [int(d) for d in _DEVICES.value]
  on_cpu = jax.devices()[0].platform == 'cpu'
  if not on_cpu and max(counts) > jax.device_count():
    raise SystemExit(f'--devices asks for {max(counts)} devices; this machine has '
                     f'{jax.device_count()}')
  print(common.machine())
  results = [run_child(n) if on_cpu else measure(_CONFIG.value, n) for n in counts]
  base = results[0]
  rows = [[r['devices'], _PER_DEVICE_BATCH.value * r['devices'], f'{r["step_seconds"]:.3f}',
           f'{r["samples_per_second"]:.1f}',
           f'{r["samples_per_second"] / (base["samples_per_second"] * r["devices"] / base["devices"]):.2f}']
          for r in results]
  common.print_table(
      f'Data-parallel scaling, {_CONFIG.value.method}, {_PER_DEVICE_BATCH.value} per device'
      + (' (fake CPU devices sharing the same cores)' if on_cpu else ''),
      ['devices', 'global batch', 'step s', 'samples/s', 'efficiency vs linear'], rows)


if __name__ == '__main__':
  app.run(main)
