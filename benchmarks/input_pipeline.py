r"""Input pipeline throughput against the train step's consumption rate, and a whole
evaluation per number of evaluation workers; prints two tables.

  python benchmarks/input_pipeline.py --config=configs/jsa.py:synthetic --workers=0,1,2
  python benchmarks/input_pipeline.py --config=configs/noprior.py:synthetic --eval_workers=0,2

Reads the config's training split (the synthetic one is generated on first use) through
`avloc.data.pipeline.train_dataset` with each number of Grain worker processes, and
times the jitted train step on batches of the same shape in the same run. The pipeline
keeps up when its samples/s is at least the step's (the target is 2x). The second table
times `Evaluator.evaluate` on the config's evaluation splits (the model after the timed
steps, every row a training run's evaluation prints) with each `eval.num_workers`, in alternating
rounds, and gives each count's time over the first count's.
"""

import tempfile
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from avloc import config as config_lib, evaluate, experiment
from avloc.data import pipeline, workers

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'Grain worker process counts.')
_BATCHES = flags.DEFINE_integer('batches', 20, 'Timed batches per setting.')
_EVAL_WORKERS = flags.DEFINE_list('eval_workers', ['0', '2'],
                                  'eval.num_workers counts to time a whole evaluation with.')
_EVAL_ROUNDS = flags.DEFINE_integer('eval_rounds', 2, 'Evaluations per count (median).')


def pipeline_rate(config, split_dir: str, num_workers: int) -> tuple[float, float]:
  """(seconds to the first batch, samples/s over the next `batches` batches)."""
  config.data.num_workers = num_workers
  batch_size = config.train.batch_size
  start = time.perf_counter()
  iterator = iter(pipeline.train_dataset(config, split_dir, seed=0, process_index=0,
                                         process_count=1, global_batch_size=batch_size))
  try:
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(iterator)
    return first, _BATCHES.value * batch_size / (time.perf_counter() - start)
  finally:
    workers.close(iterator)


def evaluation_times(config, variables) -> dict[int, float]:
  """{eval.num_workers: median seconds of one `Evaluator.evaluate`}, rounds alternating
  between the counts so that drifts in machine speed hit each alike."""
  split_dirs = experiment.resolve_splits(config, config_lib.eval_splits(config))
  times = {int(count): [] for count in _EVAL_WORKERS.value}
  for _ in range(_EVAL_ROUNDS.value):
    for count in times:
      config.eval.num_workers = count
      with tempfile.TemporaryDirectory() as workdir:
        evaluator = evaluate.Evaluator(config, split_dirs, workdir, log=lambda _: None)
        start = time.perf_counter()
        evaluator.evaluate(variables, step=None, writer=None)
        times[count].append(time.perf_counter() - start)
  return {count: float(np.median(seconds)) for count, seconds in times.items()}


def main(argv):
  del argv
  config = _CONFIG.value.copy_and_resolve_references()
  print(common.machine())
  split_dir = experiment.resolve_splits(config, [config.data.train_split])[
      config.data.train_split]
  batch_size = config.train.batch_size
  setup = common.train_setup(config, batch_size)
  state, metrics = setup.step(setup.state, setup.batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(3):
    state, metrics = setup.step(state, setup.batch)
  jax.block_until_ready(metrics)
  consumed = 3 * batch_size / (time.perf_counter() - start)
  rows = [['train step', '-', '-', f'{consumed:.0f}', '1.00']]
  for count in map(int, _WORKERS.value):
    first, rate = pipeline_rate(config, split_dir, count)
    rows.append(['pipeline', count, f'{first:.1f}', f'{rate:.0f}', f'{rate / consumed:.2f}'])
  common.print_table(
      f'Input pipeline vs train step, {config.method}, batch {batch_size}, image '
      f'{config.data.image.size}, audio {config.data.audio.seconds} s',
      ['what', 'workers', 'first batch s', 'samples/s', 'x step rate'], rows)
  if _EVAL_WORKERS.value:
    times = evaluation_times(config, state.variables)
    first = next(iter(times.values()))
    common.print_table(
        f'Evaluation of {config.eval.splits} ({config.method}), median of '
        f'{_EVAL_ROUNDS.value}; {common.load_average()}',
        ['eval workers', 'seconds', 'x first'],
        [[count, f'{seconds:.1f}', f'{seconds / first:.2f}']
         for count, seconds in times.items()])


if __name__ == '__main__':
  app.run(main)
