r"""Train step throughput, compile time, memory and FLOP utilization; prints a table.

  python benchmarks/train_step.py --config=configs/jsa.py:synthetic --batch_sizes=16,32,64
  python benchmarks/train_step.py --config=configs/jsa.py --batch_sizes=64,256 \
      --dtypes=float32,bfloat16   # the paper model, on an accelerator

The step time is the median of `--repeats` steps after `--warmup` steps (the first steps
after compiling are slower: on 2 CPU cores the first ~1.3x). FLOP utilization = XLA's
FLOP count of one compiled step (its cost analysis) / step time, over a peak: on a GPU or
TPU listed in `common.DEVICE_PEAKS` the chip's dense peak for the dtype (MFU), else (CPU)
the FLOP/s of a large matmul of the same dtype measured in the same run. Where it is
below 50%, the second table times the image and the audio encoder (forward + backward
each) and gives their own utilization, so it says which part dominates and how far it
is from peak. `--changes` adds a table of the step with avloc's CPU speed-ups
(`avloc.platform`, `models/pooling.py`) switched off, its before / after.
"""

import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
from absl import app, flags
from ml_collections import config_flags

from avloc import methods, platform

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['16', '32', '64'], 'Global batch sizes.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'Compute dtypes (train.compute_dtype).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed steps per setting (median).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_CHANGES = flags.DEFINE_bool(
    'changes', False, "On the CPU, float32: also time the step with avloc's CPU speed-ups "
    'switched off (each alone and both), interleaved with the default step.')


def encoder_costs(config, setup) -> dict[str, tuple[float, float]]:
  """(seconds, FLOPs) of forward + backward of each encoder alone on the benchmark batch."""
  model = methods.get_method(config.method).build_model(config)
  variables = {'params': setup.state.params, 'batch_stats': setup.state.batch_stats}
  costs = {}
  for name, field, inputs in (('image encoder', 'image_encoder', setup.batch['image']),
                              ('audio encoder', 'audio_encoder', setup.batch['spectrogram'])):
    gradient = common.encoder_gradient(model, variables, field)
    costs[name] = (common.timed(gradient, setup.state.params, inputs, repeats=_REPEATS.value),
                   common.compiled_flops(gradient, setup.state.params, inputs))
  return costs


def main(argv):
  del argv
  print(common.machine())
  rows, breakdown, changes = [], [], []
  for dtype in _DTYPES.value:
    config = _CONFIG.value.copy_and_resolve_references()
    config.train.compute_dtype = dtype
    peak, peak_kind = common.peak_flops(dtype)
    for batch_size in map(int, _BATCH_SIZES.value):
      setup = common.train_setup(config, batch_size)
      state, step = setup.state, setup.step
      start = time.perf_counter()
      state, metrics = step(state, setup.batch)
      jax.block_until_ready(metrics)
      compile_seconds = time.perf_counter() - start
      flops = common.compiled_flops(step, state, setup.batch)
      old_leaf = jax.tree_util.tree_leaves(state.params)[0]
      compiled = common.TrainSetup(setup.mesh, state, step, setup.batch)
      train_step = common.TrainStepCall(compiled)
      calls = {'step': train_step}
      if _CHANGES.value and dtype == 'float32' and jax.default_backend() == 'cpu':
        calls.update(common.cpu_speedups_off(config, compiled))
      timings = common.interleaved(calls, _REPEATS.value, warmup=_WARMUP.value)
      seconds = timings['step'].wall
      for name, timing in timings.items():
        if name != 'step':
          changes.append([batch_size, name, f'{batch_size / timing.wall:.1f}',
                          f'{batch_size / seconds:.1f}', f'{timing.wall / seconds:.2f}x',
                          f'{timing.cpu / timings["step"].cpu:.2f}x'])
      state = train_step.state
      recompiled = step._cache_size() != 1  # pylint: disable=protected-access
      utilization = flops / seconds / peak
      rows.append([dtype, batch_size, f'{compile_seconds:.1f}', f'{seconds:.3f}',
                   f'{batch_size / seconds:.1f}', f'{flops / 1e9:.1f}',
                   f'{flops / seconds / 1e9:.1f}', f'{peak / 1e9:.0f}',
                   f'{100 * utilization:.0f}% ({peak_kind})', f'{common.peak_host_memory_gib():.2f}',
                   f'{common.device_memory_gib():.2f}',
                   'no' if recompiled else 'yes', 'yes' if old_leaf.is_deleted() else 'no'])
      if utilization < 0.5:
        costs = encoder_costs(config, common.TrainSetup(setup.mesh, state, step, setup.batch))
        breakdown.append([dtype, batch_size, *(
            cell for cost, cost_flops in costs.values()
            for cell in (f'{cost:.3f} ({100 * cost / seconds:.0f}%)',
                         f'{100 * cost_flops / cost / peak:.0f}%'))])
  common.print_table(
      f'Train step, {_CONFIG.value.method} ({jax.device_count()} device(s), '
      f'{platform.describe()}); {common.load_average()}',
      ['dtype', 'batch', 'compile s', 'step s', 'samples/s', 'GFLOP/step', 'GFLOP/s',
       'peak GFLOP/s', 'utilization', 'host GiB', 'device GiB', 'one compile', 'donated'],
      rows)
  if changes:
    common.print_table(
        f'CPU speed-ups switched off ({common.load_average()}): samples/s without them '
        '(before) and with them (after, the default step), interleaved',
        ['batch', 'switched off', 'before samples/s', 'after samples/s', 'gain',
         'CPU-time gain'], changes)
  if breakdown:
    common.print_table(
        'Each encoder alone, forward + backward (separately compiled, so the parts need not '
        'add up to the step): seconds (share of the step) and utilization',
        ['dtype', 'batch', 'image encoder s', 'image util.', 'audio encoder s', 'audio util.'],
        breakdown)


if __name__ == '__main__':
  app.run(main)
