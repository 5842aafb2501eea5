r"""Every method trained on the synthetic benchmark with the same data and budget, scored
by the same evaluator: one table.

  python benchmarks/compare_methods.py                          # jsa,noprior,ezvsl,lvs,fnac
  python benchmarks/compare_methods.py --methods=ezvsl,lvs --max_steps=20
  python benchmarks/compare_methods.py --seeds=0,1,2         # each score: mean (min-max)

Each method trains from `configs/<method>.py:synthetic`: the same generated clips (4000
for training, 500 for the test), batch 32, 128 px frames, 1 s of audio, width-16
ResNet-18s with D = 128, lr 5e-4 (`avloc.config.cpu_sized`), each with its own loss,
optimizer and schedule; `--max_steps` overrides every config's budget (0 keeps the
configs' epochs). Then the method's primary map is scored on synthetic_test, binarized as
its config says (the `binarize` column): AP50, AUC and mean cIoU; the mean cIoU with
each image's audio swapped for a clip of another class and the correlation of the two
maps (`corr`; 100: the map ignores the audio); and audio-to-image / image-to-audio
Recall@1 where the method gives embeddings (NoPrior does not). `wall s`
is the training's wall time (compilation and input start-up included), `steps/s` the
rate after the first logged interval (compilation excluded; '-' when the run logs only
once), `params` the trainable parameters. With --seeds every method trains once per
seed (`config.train.seed`: initialization, masking and data order), each score is
'mean (min-max)' over the seeds and the times are means.
"""

import importlib
import json
import os
import shutil
import statistics
import tempfile
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import numpy as np
from absl import app, flags, logging

from avloc import config as config_lib, evaluate, experiment, methods, train

_METHODS = flags.DEFINE_list('methods', ['jsa', 'noprior', 'ezvsl', 'lvs', 'fnac'],
                             'Methods to train: configs/<name>.py:synthetic each.')
_MAX_STEPS = flags.DEFINE_integer('max_steps', 0,
                                  'Training steps of every method; 0: the configs\' epochs.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Keeps each run in <workdir>/<method>/seed<seed> '
                               '(must not exist yet); default: a temporary directory, removed.')
_SEEDS = flags.DEFINE_list('seeds', [], "config.train.seed of each method's runs; default: "
                           "one run with each config's own seed.")
TEST_SPLIT = 'synthetic_test'
# (column, metric key under TEST_SPLIT; {map}: the method's primary map) of each score.
_SCORES = (('AP50', '{map}/ap50'), ('AUC', '{map}/auc'), ('cIoU', '{map}/ciou'),
           ('swapped cIoU', '{map}:swap/ciou'), ('corr', '{map}:swap/corr'),
           ('a2i R@1', 'retrieval/a2i_r1'), ('i2a R@1', 'retrieval/i2a_r1'))


def synthetic_config(name: str, max_steps: int):
  """configs/<name>.py:synthetic, evaluated on the single-source test split only."""
  config = importlib.import_module(f'configs.{name}').get_config('synthetic')
  method = methods.get_method(config.method)
  if max_steps:
    config.train.max_steps = max_steps
  config.eval.splits = TEST_SPLIT
  config.eval.best_metric = f'{TEST_SPLIT}/{method.primary_map(config)}/ap50'
  config_lib.validate(config, method.check_config)
  return config


def steady_steps_per_second(workdir: str) -> float:
  """Steps/s between the first and the last logged training step (metrics.jsonl)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  logged = [(r['step'], r['time']) for r in rows if 'train/loss' in r]
  if len(logged) < 2:
    return float('nan')
  (first_step, first_time), (last_step, last_time) = logged[0], logged[-1]
  return (last_step - first_step) / (last_time - first_time)


def run(name: str, workdir: str, seed: int) -> dict:
  """Trains and scores one method with `seed` as config.train.seed: its table's values,
  scores as fractions (None where the method has none)."""
  config = synthetic_config(name, _MAX_STEPS.value)
  config.train.seed = seed
  method = methods.get_method(config.method)
  dirs = experiment.resolve_splits(config, [config.data.train_split, TEST_SPLIT])
  start = time.perf_counter()
  state = train.train(config, workdir, {config.data.train_split: dirs[config.data.train_split]})
  wall = time.perf_counter() - start
  evaluator = evaluate.Evaluator(config, {TEST_SPLIT: dirs[TEST_SPLIT]}, workdir)
  metrics = evaluator.evaluate(state.variables, int(state.step), writer=None)
  primary = method.primary_map(config)
  return {
      'method [map]': f'{name} [{primary}]', 'binarize': config.eval.threshold_protocol,
      'steps': int(state.step),
      **{column: metrics.get(f'{TEST_SPLIT}/{key.format(map=primary)}')
         for column, key in _SCORES},
      'wall s': wall, 'steps/s': steady_steps_per_second(workdir),
      'params': sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params)),
  }


def row(runs: list[dict]) -> list:
  """One method's table row from its runs (one per seed)."""
  first = runs[0]
  rates = [r['steps/s'] for r in runs if not np.isnan(r['steps/s'])]
  return ([first['method [map]'], first['binarize'], first['steps']]
          + [common.over_seeds([r[column] for r in runs], digits=2)
             for column, _ in _SCORES]
          + [f'{statistics.fmean(r["wall s"] for r in runs):.0f}',
             f'{statistics.fmean(rates):.2f}' if rates else '-', f'{first["params"]:,}'])


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # library INFO logs out of the progress lines
    logging.set_verbosity(logging.WARNING)
  seeds = common.parse_seeds(_SEEDS.value)
  print(common.machine())
  root = _WORKDIR.value or tempfile.mkdtemp(prefix='avloc-compare-')
  rows = []
  try:
    for name in _METHODS.value:
      runs = []
      for seed in seeds or [synthetic_config(name, _MAX_STEPS.value).train.seed]:
        workdir = os.path.join(root, name, f'seed{seed}')
        if os.path.exists(workdir):
          raise FileExistsError(f'{workdir} exists (a run there would resume); choose a new '
                                '--workdir')
        runs.append(run(name, workdir, seed))
      rows.append(row(runs))
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(root, ignore_errors=True)
  common.print_table(
      f'{TEST_SPLIT}: the same data and budget for every method (percent; '
      f'{common.seeds_caption(seeds)})',
      ['method [map]', 'binarize', 'steps'] + [column for column, _ in _SCORES]
      + ['wall s', 'steps/s', 'params'], rows)


if __name__ == '__main__':
  app.run(main)
