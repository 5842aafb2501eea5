r"""JSA Table 5 on the synthetic benchmark: the loss ablations, trained and evaluated in one
run; prints one table.

  python benchmarks/jsa_ablation.py --workdir=/tmp/jsa_ablation
  python benchmarks/jsa_ablation.py --variants=full,no_match --workdir=... \
      --config.train.epochs=2

Every variant trains `configs/jsa.py:synthetic` (override any field with --config.*) with
one switch of Table 5 turned off: L_match, L_div, L_recon or the false-negative removal
(Sec. 3.4), then evaluates its last checkpoint on the config's test splits. Columns: AP50,
AUC and mean cIoU of the IQR map (the paper's reported map) and of the cross-modal map
`ca`, per split, and the wall time of the variant.
"""

import os
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
from absl import app, flags
from ml_collections import config_flags

from avloc import config as config_lib, experiment

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/jsa.py:synthetic', 'Config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'One subdirectory per variant.', required=True)
# Variant -> the `config.loss` switch it turns off (None: the full method).
VARIANTS = {
    'full': None,
    'no_match': 'use_match',
    'no_div': 'use_div',
    'no_recon': 'use_recon',
    'no_fn_removal': 'remove_false_negatives',
}
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), f'Of {list(VARIANTS)}.')


def run_variant(name: str) -> tuple[dict, float]:
  """Trains and evaluates one variant; returns its metrics and wall seconds."""
  config = _CONFIG.value.copy_and_resolve_references()
  if VARIANTS[name]:
    config.loss[VARIANTS[name]] = False
  workdir = os.path.join(_WORKDIR.value, name)
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
  print(common.machine())
  splits = config_lib.eval_splits(_CONFIG.value)
  rows = []
  for name in _VARIANTS.value:
    metrics, seconds = run_variant(name)
    row = [name]
    for split in splits:
      for variant in ('iqr', 'ca'):
        row += [f'{100 * metrics[f"{split}/{variant}/{m}"]:.1f}' for m in ('ap50', 'auc', 'ciou')]
    rows.append(row + [f'{seconds / 60:.1f}'])
    print(f'{name}: done in {seconds / 60:.1f} min', flush=True)
  header = ['variant'] + [f'{split.removeprefix("synthetic_")} {variant} {m}'
                          for split in splits for variant in ('iqr', 'ca')
                          for m in ('ap50', 'auc', 'ciou')] + ['minutes']
  common.print_table('JSA Table 5 ablations (percent)', header, rows)


if __name__ == '__main__':
  app.run(main)
