"""benchmarks/jsa_ablation.py and compare_methods.py over several seeds, with training and
evaluation stubbed out: which configs they train where, and the cells of their tables.
In subprocesses: the scripts define absl flags that other modules define too."""

import os

from tests.benchmark_scripts import printed_table, run_stubbed

# experiment.run replaced by a stub that records each call and scores a variant's IQR
# AP50 on every split as below (fractions); the other metrics 0.5.
_SCRIPT = '''
import json, runpy, sys
sys.path.insert(0, 'benchmarks')
from avloc import config as config_lib, experiment
AP50 = {'full': [0.2, 0.4, 0.6], 'no_div': [0.3, 0.3, 0.3]}
calls = []

def run(config, workdir, mode, log, checkpoint=''):
  variant = 'full' if config.loss.use_div else 'no_div'
  calls.append([mode, workdir, config.train.seed, variant, config.loss.use_match])
  if mode == 'train':
    return {}
  return {f'{split}/{map_name}/{metric}':
          AP50[variant][config.train.seed] if (map_name, metric) == ('iqr', 'ap50') else 0.5
          for split in config_lib.eval_splits(config) for map_name in ('iqr', 'ca')
          for metric in ('ap50', 'auc', 'ciou')}

experiment.run = run
sys.argv = ['jsa_ablation.py', '--workdir=' + sys.argv[1], '--variants=full,no_div',
            '--seeds=0,1,2']
try:
  runpy.run_path('benchmarks/jsa_ablation.py', run_name='__main__')
finally:
  print('CALLS ' + json.dumps(calls))
'''


def test_every_variant_trains_once_per_seed_and_is_paired_with_the_full_run_by_seed(tmp_path):
  calls, lines = run_stubbed(_SCRIPT, str(tmp_path))
  trained = [(os.path.relpath(workdir, tmp_path), seed, variant, use_match)
             for mode, workdir, seed, variant, use_match in calls if mode == 'train']
  assert trained == [(os.path.join(variant, f'seed{seed}'), seed, variant, True)
                     for variant in ('full', 'no_div') for seed in (0, 1, 2)]
  assert [call[:3] for call in calls if call[0] == 'eval'] == [
      ['eval', os.path.join(str(tmp_path), variant, f'seed{seed}'), seed]
      for variant in ('full', 'no_div') for seed in (0, 1, 2)]

  def row(title, variant):
    return printed_table(lines, title)[1][variant]

  table = 'JSA Table 5 ablations (percent; mean (min-max) over seeds [0, 1, 2])'
  assert row(table, 'full')['alone iqr ap50'] == '40.0 (20.0-60.0)'
  assert row(table, 'no_div')['test iqr ap50'] == '30.0 (30.0-30.0)'
  assert row(table, 'full')['alone ca ciou'] == '50.0 (50.0-50.0)'
  # no_div - full, seed by seed: +10, -10, -30 points.
  paired = row('Each ablation against the full method, paired by seed', 'no_div')
  assert paired['alone iqr ap50'] == paired['test iqr ap50'] == '-10.0 (below at 2 of 3)'
  assert paired['alone iqr ciou'] == '+0.0 (below at 0 of 3)'


# compare_methods.run replaced by a stub that records its calls and returns one run's values.
_COMPARE = '''
import importlib.util, json, sys
sys.path.insert(0, 'benchmarks')
from absl import flags
spec = importlib.util.spec_from_file_location('compare_methods', 'benchmarks/compare_methods.py')
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)
calls = []

def run(name, workdir, seed):
  calls.append([name, workdir, seed])
  return {'method [map]': f'{name} [av]', 'binarize': 'minmax', 'steps': 5,
          'AP50': 0.1 * (seed + 1), 'AUC': 0.5, 'cIoU': 0.5, 'swapped cIoU': 0.25,
          'corr': 0.9, 'a2i R@1': None, 'i2a R@1': None, 'wall s': 10.0 * (seed + 1),
          'steps/s': float('nan') if seed == 2 else 1.0 + seed, 'params': 1234}

compare.run = run
flags.FLAGS(['compare_methods.py', '--methods=ezvsl,lvs', '--workdir=' + sys.argv[1]]
            + sys.argv[2:])
compare.main(None)
print('CALLS ' + json.dumps(calls))
'''


def _compare(tmp_path, *flags):
  calls, lines = run_stubbed(_COMPARE, str(tmp_path), *flags)
  return (calls, *printed_table(lines, 'synthetic_test:'))


def test_compare_methods_trains_each_method_once_per_seed_and_averages(tmp_path):
  calls, title, rows = _compare(tmp_path, '--seeds=0,1,2')
  assert calls == [[name, os.path.join(str(tmp_path), name, f'seed{seed}'), seed]
                   for name in ('ezvsl', 'lvs') for seed in (0, 1, 2)]
  assert title.endswith('(percent; mean (min-max) over seeds [0, 1, 2])')
  row = rows['ezvsl [av]']
  assert row['AP50'] == '20.00 (10.00-30.00)' and row['cIoU'] == '50.00 (50.00-50.00)'
  assert row['a2i R@1'] == '-'
  assert row['wall s'] == '20' and row['steps/s'] == '1.50'  # seed 2 logged once: left out


def test_compare_methods_without_seeds_runs_each_config_s_own(tmp_path):
  calls, title, rows = _compare(tmp_path / 'run')
  assert calls == [[name, os.path.join(str(tmp_path / 'run'), name, 'seed0'), 0]
                   for name in ('ezvsl', 'lvs')]  # both configs' train.seed is 0
  assert title.endswith("(percent; each config's seed)")
  assert rows['lvs [av]']['AP50'] == '10.00'
