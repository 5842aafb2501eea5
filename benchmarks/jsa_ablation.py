r"""JSA Table 5 on the synthetic benchmark: the loss ablations, trained and evaluated in one
run, over one seed or several; prints the tables.

  python benchmarks/jsa_ablation.py --workdir=/tmp/jsa_ablation
  python benchmarks/jsa_ablation.py --seeds=0,1,2 --workdir=/tmp/jsa_ablation
  python benchmarks/jsa_ablation.py --variants=full,no_match --workdir=... \
      --config.train.epochs=2

Every variant trains `configs/jsa.py:synthetic` (override any field with --config.*) with
one switch of Table 5 turned off: L_match, L_div, L_recon or the false-negative removal
(Sec. 3.4), once per seed (`config.train.seed`: initialization, masking and data order),
then evaluates its last checkpoint on the config's test splits; runs go to
<workdir>/<variant>/seed<seed>. Columns: AP50, AUC and mean cIoU of the IQR map (the
paper's reported map) and of the cross-modal map `ca`, per split, as 'mean (min-max)'
over the seeds, and the minutes per run. With the full method among the variants, a
second table gives each other variant's difference from it, paired by seed: how much it
lowers the IQR map's AP50 and cIoU, and on how many seeds. Seeds moved the full method's
500-step AP50 by tens of points (docs/learning.md, "Seeds and data order"), so an
ordering of the variants holds only where it holds seed by seed.
"""

import os
import statistics
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
from absl import app, flags
from ml_collections import config_flags

from avloc import config as config_lib, experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Runs go to <workdir>/<variant>/seed<seed>.',
                               required=True)
# Variant -> the `config.loss` switch it turns off (None: the full method).
VARIANTS = {
    'full': None,
    'no_match': 'use_match',
    'no_div': 'use_div',
    'no_recon': 'use_recon',
    'no_fn_removal': 'remove_false_negatives',
}
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), f'Of {list(VARIANTS)}.')
_SEEDS = flags.DEFINE_list('seeds', [], "config.train.seed of each run of every variant; "
                           "default: the config's own.")
_METRICS = ('ap50', 'auc', 'ciou')
_MAPS = ('iqr', 'ca')


def variant_config(name: str, seed: int):
  """The config of variant `name` (see VARIANTS) trained with `seed`."""
  config = _CONFIG.value.copy_and_resolve_references()
  if VARIANTS[name]:
    config.loss[VARIANTS[name]] = False
  config.train.seed = seed
  return config


def run_variant(name: str, seed: int) -> tuple[dict, float]:
  """Trains and evaluates one variant with one seed; returns its metrics and wall seconds."""
  config = variant_config(name, seed)
  workdir = os.path.join(_WORKDIR.value, name, f'seed{seed}')
  start = time.perf_counter()
  experiment.run(config, workdir, mode='train', log=lambda _: None)
  metrics = experiment.run(config, workdir, mode='eval', log=lambda _: None,
                           checkpoint=os.path.join(workdir, 'checkpoints'))
  return metrics, time.perf_counter() - start


def main(argv):
  del argv
  unknown = sorted(set(_VARIANTS.value) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f'--variants: unknown {unknown}; choose from {list(VARIANTS)}')
  seeds = common.parse_seeds(_SEEDS.value) or [_CONFIG.value.train.seed]
  print(common.machine())
  splits = config_lib.eval_splits(_CONFIG.value)
  runs = {}  # variant -> [(metrics, seconds)], one per seed in `seeds` order
  for name in _VARIANTS.value:
    for seed in seeds:
      metrics, seconds = run_variant(name, seed)
      runs.setdefault(name, []).append((metrics, seconds))
      print(f'{name}, seed {seed}: done in {seconds / 60:.1f} min', flush=True)

  def values(name, key):
    return [metrics[key] for metrics, _ in runs[name]]

  rows = [[name] + [common.over_seeds(values(name, f'{split}/{map_name}/{metric}'))
                    for split in splits for map_name in _MAPS for metric in _METRICS]
          + [f'{statistics.fmean(seconds for _, seconds in runs[name]) / 60:.1f}']
          for name in runs]
  header = ['variant'] + [f'{split.removeprefix("synthetic_")} {map_name} {metric}'
                          for split in splits for map_name in _MAPS
                          for metric in _METRICS] + ['minutes']
  common.print_table(f'JSA Table 5 ablations (percent; {common.seeds_caption(seeds)})',
                     header, rows)
  others = [name for name in runs if name != 'full']
  if 'full' in runs and others:
    keys = [f'{split}/iqr/{metric}' for split in splits for metric in ('ap50', 'ciou')]
    common.print_table(
        f'Each ablation against the full method, paired by seed (percentage points, mean over '
        f'seeds {seeds})',
        ['variant'] + [key.removeprefix('synthetic_').replace('/', ' ') for key in keys],
        [[name] + [common.against_reference(values(name, key), values('full', key))
                   for key in keys] for name in others])


if __name__ == '__main__':
  app.run(main)
