"""End to end through `experiment.run` (what `python -m avloc.main` does): synthetic data
generated, trained, evaluated, exported, re-evaluated from the export; both methods."""

import json
import os

import numpy as np
import pytest

from avloc import experiment
from configs import jsa as jsa_config
from configs import noprior as noprior_config


def _tiny(module, data_root):
  config = module.get_config('synthetic')
  config.data.root = str(data_root)
  config.data.synthetic.update(train_size=16, test_size=6, multi_test_size=4, image_size=32,
                               audio_seconds=0.5)
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5)
  config.data.num_workers = 0
  config.model.update(dim=32, width=4)  # NoPrior: dim = 8 * width (no projection)
  if config.method == 'jsa':
    config.model.update(mlp_dim=32, iters=2)
    config.loss.k = 3
  config.train.update(batch_size=8, max_steps=2, log_every_steps=1)
  if config.method == 'noprior':  # a single-source and a multi-source split
    config.eval.splits = 'synthetic_test,synthetic_duet'
  config.eval.update(batch_size=4, num_visualize=2, best_metric='')  # export the last step
  return config


@pytest.mark.parametrize('module', [jsa_config, noprior_config], ids=['jsa', 'noprior'])
def test_train_and_eval_then_eval_from_the_export(tmp_path, module):
  config = _tiny(module, tmp_path / 'data')
  workdir = str(tmp_path / 'run')
  logs = []
  metrics = experiment.run(config, workdir, log=logs.append)
  splits = [s.strip() for s in config.eval.splits.split(',')]
  for split in splits:
    record = json.load(open(os.path.join(workdir, f'eval_{split}.json')))
    assert [h['model'] for h in record['history']][:2] == ['center prior', f'{config.method} step 0']
    assert os.path.exists(os.path.join(workdir, 'eval', f'{split}_step2.png'))
  assert any('center prior' in line for line in logs)
  if config.method == 'jsa':
    assert {'synthetic_test/ca/ciou', 'synthetic_test/iqr/ap50',
            'synthetic_test/retrieval/a2i_r1'} <= set(metrics)
  else:
    assert {'synthetic_duet/objects/ciou30', 'synthetic_duet/objects/cap',
            'synthetic_duet/objects/count_acc', 'synthetic_test/objects/ap'} <= set(metrics)
  assert all(np.isfinite(v) or k.split('/')[-1].startswith('count_acc_')
             for k, v in metrics.items())
  assert sorted(os.listdir(os.path.join(workdir, 'export'))) == ['2']
  reloaded = experiment.run(config, workdir, mode='eval', log=lambda _: None)
  for key, value in metrics.items():
    if key in reloaded and np.isfinite(value):
      assert reloaded[key] == pytest.approx(value, abs=1e-5), key
