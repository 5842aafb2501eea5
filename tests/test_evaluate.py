"""The evaluator against a direct computation: the same batches through the method's
`localize`, scored by hand with the papers' formulas; object-guided localization (OGL);
`--mode=eval` on a named checkpoint."""

import functools
import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from avloc import checkpointing, evaluate, experiment, methods, sharding, train, weights
from avloc.data import pipeline, tfrecord
from avloc.metrics import grounding, localization, retrieval
from avloc.models import object_prior
from avloc.models.resnet import ResNet18
from configs import jsa as jsa_config
from tests import splits

SIZE = 64  # 2 x 2 feature grid
NUM_EXAMPLES = 7  # two batches of 4, the second padded
ALPHA = 0.3


def _config(data_root, trunk_dir=''):
  config = jsa_config.get_config('synthetic')
  config.data.root = str(data_root)
  config.data.image.update(size=SIZE, train_resize=SIZE)
  config.data.audio.update(seconds=1.0)
  config.data.num_workers = 0
  config.model.update(dim=16, width=4, mlp_dim=32, iters=2, image_last_stride=2)
  config.eval.update(splits='boxes', batch_size=4, num_visualize=2, best_metric='')
  config.eval.object_guidance.update(weights=str(trunk_dir), alpha=ALPHA)
  return config


def _variables(config):
  model = methods.get_method('jsa').build_model(config)
  state = train.create_train_state(config, model, optax.sgd(0.1), sharding.make_mesh())
  return model, jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})


def _trunk_export(directory):
  """An ImageNet-trunk export (what `avloc.convert --kind=imagenet_resnet18` writes) with
  random width-4 weights and non-trivial BatchNorm statistics."""
  shapes = jax.eval_shape(functools.partial(ResNet18(width=4).init, train=False),
                          jax.random.PRNGKey(1), np.zeros((1, SIZE, SIZE, 3), np.float32))
  rng = np.random.default_rng(1)
  variables = {
      'params': jax.tree_util.tree_map(
          lambda x: rng.normal(0.0, 0.3, x.shape).astype(np.float32), shapes['params']),
      'batch_stats': jax.tree_util.tree_map(
          lambda x: rng.uniform(0.5, 1.5, x.shape).astype(np.float32), shapes['batch_stats'])}
  exporter = checkpointing.Exporter(str(directory), best_metric='')
  exporter.export(0, variables, ml_collections.ConfigDict({'kind': weights.TRUNK_KIND}), None)
  exporter.close()
  return variables


def _normalized(x):
  return (x - x.min()) / (x.max() - x.min())


def _ciou(heatmap, gt, threshold):
  """cIoU of the release's protocol, written out: min-max, >= threshold."""
  pred = _normalized(heatmap.astype(np.float64)) >= threshold
  return (gt * pred).sum() / (gt.sum() + (pred * (gt == 0)).sum())


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
  root = tmp_path_factory.mktemp('evaluate')
  split = splits.write_split(root / 'data' / 'boxes', NUM_EXAMPLES, image_size=SIZE,
                             gt=tfrecord.GT_BOXES)
  trunk = _trunk_export(root / 'trunk')
  config = _config(root / 'data', root / 'trunk')
  model, variables = _variables(config)
  logs = []
  evaluator = evaluate.Evaluator(config, {'boxes': split}, str(root / 'run'), log=logs.append)
  metrics = evaluator.evaluate(variables, step=3, writer=None)
  return dict(root=root, split=split, trunk=trunk, config=config, model=model,
              variables=variables, evaluator=evaluator, metrics=metrics, logs=logs)


def test_evaluator_scores_equal_a_direct_computation_with_and_without_ogl(evaluated):
  config, model, variables = evaluated['config'], evaluated['model'], evaluated['variables']
  localize = jax.jit(functools.partial(methods.get_method('jsa').localize, model,
                                       config=config))
  prior_maps = jax.jit(object_prior.object_prior_maps)
  cious, embeddings, labels = {}, ([], []), []
  correlations, confidences = {}, {}
  for batch in pipeline.eval_dataset(config, evaluated['split'], batch_size=4):
    outputs = jax.device_get(localize(variables, batch['image'], batch['spectrogram']))
    valid = np.flatnonzero(batch['valid'])
    order = np.arange(4)  # each image with the audio of the next clip of another class
    for k, i in enumerate(valid):
      later = [valid[(k + step) % len(valid)] for step in range(1, len(valid))]
      order[i] = next(j for j in later if batch['label'][j] != batch['label'][i])
    swapped = jax.device_get(localize(variables, batch['image'], batch['spectrogram'][order]))
    prior = np.asarray(prior_maps(evaluated['trunk'], batch['image']))
    for i in valid:
      x0, y0, x1, y1 = (batch['boxes'][i, 0] * SIZE).astype(int)
      gt = np.zeros((SIZE, SIZE))
      gt[y0:y1, x0:x1] = 1
      maps = {'object prior': prior[i]}
      for variant in ('iqr', 'ca'):
        for suffix, out in (('', outputs), (':swap', swapped)):
          heatmap = np.asarray(out['heatmaps'][variant][i], np.float64)
          maps[variant + suffix] = heatmap
          # EZ-VSL / JSA release: normalize(alpha * normalize(av) + (1 - alpha) * normalize(obj))
          maps[variant + '+ogl' + suffix] = _normalized(
              ALPHA * _normalized(heatmap) + (1 - ALPHA) * _normalized(prior[i]))
        for name in (variant, variant + '+ogl'):
          correlations.setdefault(name, []).append(
              np.corrcoef(maps[name].ravel(), maps[name + ':swap'].ravel())[0, 1])
        confidences.setdefault(variant, []).append([  # top quarter of the fixed-scale map
            np.sort(out['scores'][variant][i], axis=None)[-SIZE * SIZE // 4:].mean()
            for out in (outputs, swapped)])
      for name, heatmap in maps.items():
        cious.setdefault(name, []).append(_ciou(heatmap, gt, 0.6))
      embeddings[0].append(outputs['image_embedding'][i])
      embeddings[1].append(outputs['audio_embedding'][i])
      labels.append(batch['label'][i])
  assert len(labels) == NUM_EXAMPLES

  metrics = evaluated['metrics']
  variants = ('iqr', 'ca', 'iqr+ogl', 'ca+ogl')
  assert {k.split('/')[1] for k in metrics} == {
      *variants, *(v + ':swap' for v in variants), 'retrieval'}
  for variant in variants + tuple(v + ':swap' for v in variants):
    expected = np.asarray(cious[variant])
    assert metrics[f'boxes/{variant}/ciou'] == pytest.approx(expected.mean(), abs=1e-6)
    assert metrics[f'boxes/{variant}/ap50'] == pytest.approx(np.mean(expected >= 0.5))
    assert metrics[f'boxes/{variant}/auc'] == pytest.approx(
        localization.success_rate_auc(expected))
  for variant in variants:
    assert metrics[f'boxes/{variant}:swap/corr'] == pytest.approx(
        np.mean(correlations[variant]), abs=1e-5)
  for variant in ('iqr', 'ca'):  # the maps with fixed-scale scores
    matched, other = np.asarray(confidences[variant]).T
    expected = grounding.extended_protocol(cious[variant], matched, other)
    assert {k: metrics[f'boxes/{variant}/{k}'] for k in expected} == pytest.approx(expected)
  assert 'boxes/iqr+ogl/ext_ap' not in metrics
  assert cious['iqr+ogl'] != cious['iqr']  # the prior changes the maps
  assert cious['ca:swap'] != cious['ca']  # so does the audio
  expected_recall = retrieval.recall_at_k(np.stack(embeddings[0]), np.stack(embeddings[1]),
                                          np.asarray(labels), (1, 5))
  assert {k: metrics[f'boxes/retrieval/{k}'] for k in expected_recall} == pytest.approx(
      expected_recall)

  rows = evaluated['evaluator'].rows['boxes']
  assert [label for label, _ in rows] == ['center prior', 'object prior', 'jsa step 3']
  assert rows[1][1]['prior/ciou'] == pytest.approx(np.mean(cious['object prior']), abs=1e-6)


def test_evaluator_writes_the_table_json_csv_and_pictures(evaluated):
  run = evaluated['root'] / 'run'
  table = evaluated['logs'][-1]
  assert table.startswith(f'boxes ({NUM_EXAMPLES} examples, ground truth: boxes)')
  for row in ('center prior', 'object prior', 'jsa step 3 [iqr]', 'jsa step 3 [iqr+ogl]',
              'jsa step 3 [ca+ogl]', 'jsa step 3 [ca, audio swapped]'):
    assert any(line.startswith(row + ' ') for line in table.splitlines()), row
  ciou = evaluated['metrics']['boxes/iqr+ogl/ciou']
  assert f'{100 * ciou:.2f}' in table
  record = json.load(open(run / 'eval_boxes.json'))
  assert record['step'] == 3 and record['metrics']['iqr+ogl/ciou'] == pytest.approx(ciou)
  assert [h['model'] for h in record['history']] == ['center prior', 'object prior',
                                                      'jsa step 3']
  header = open(run / 'eval_boxes.csv').readline().strip().split(',')
  assert header[0] == 'model' and 'iqr+ogl/ap50' in header and 'prior/auc' in header
  assert os.path.getsize(run / 'eval' / 'boxes_step3.png') > 0


def test_object_guidance_needs_a_valid_alpha_and_an_image_trunk(evaluated, tmp_path):
  config = _config(evaluated['root'] / 'data', evaluated['root'] / 'trunk')
  config.eval.object_guidance.alpha = 1.5
  with pytest.raises(ValueError, match=r'config\.eval\.object_guidance\.alpha must be in '
                     r'\[0, 1\], got 1\.5'):
    experiment.run(config, str(tmp_path / 'run'), mode='eval')
  config = _config(evaluated['root'] / 'data', tmp_path / 'missing.pth')
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    evaluate.Evaluator(config, {'boxes': evaluated['split']}, str(tmp_path / 'run'))


def test_eval_mode_scores_a_named_checkpoint(evaluated, tmp_path):
  config = _config(evaluated['root'] / 'data', evaluated['root'] / 'trunk')
  exporter = checkpointing.Exporter(str(tmp_path / 'model'), best_metric='')
  exporter.export(3, evaluated['variables'], config, None)
  exporter.close()
  workdir = str(tmp_path / 'run')  # holds no checkpoint of its own
  metrics = experiment.run(config, workdir, mode='eval', log=lambda _: None,
                           checkpoint=str(tmp_path / 'model' / 'export' / '3'))
  assert metrics == pytest.approx(evaluated['metrics'])
  with pytest.raises(FileNotFoundError, match='holds no avloc checkpoint'):
    experiment.run(config, workdir, mode='eval', log=lambda _: None)
  with pytest.raises(ValueError, match='needs mode eval'):
    experiment.run(config, workdir, mode='train', checkpoint=str(tmp_path / 'model'))


def test_multisource_ground_truth_from_boxes_alone():
  """A multi-source split converted from boxes (no masks, as `data_prep.music` writes
  VGGSound duets) next to one with masks: collate_eval pads the masks to one per clip."""
  size = 8

  def example(boxes, groups, masks):
    return dict(image=np.zeros((size, size, 3), np.uint8), spectrogram=np.zeros((4, 4, 1)),
                index=0, id='clip', valid=True, label=-1, num_sources=max(groups) + 1,
                boxes=np.asarray(boxes, np.float32), box_groups=np.asarray(groups),
                masks=masks, source_labels=np.asarray([-1] * (max(groups) + 1)))

  mask = np.zeros((1, size, size), bool)
  mask[0, :2, :2] = True
  batch = pipeline.collate_eval([
      example([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0, 1], np.zeros((0, size, size), bool)),
      example([[0, 0, 1, 1]], [0], mask)], batch_size=2)
  maps = evaluate.source_maps(tfrecord.GT_MULTISOURCE, batch, 0, size)
  expected = np.zeros((2, size, size))
  expected[0, :4, :4] = expected[1, 4:, 4:] = 1
  np.testing.assert_array_equal(maps, expected)
  np.testing.assert_array_equal(evaluate.source_maps(tfrecord.GT_MULTISOURCE, batch, 1, size),
                                mask.astype(float))
