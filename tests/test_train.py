"""Trainer: schedules, data-parallel equivalence, compilation, resume, config errors."""

import importlib
import json
import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from avloc import (checkpointing, config as config_lib, experiment, methods, preemption,
                   sharding, train)
from avloc.data import pipeline
from configs import jsa as jsa_config
from configs import noprior as noprior_config
from tests import linear_method, splits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**train_overrides) -> ml_collections.ConfigDict:
  config = jsa_config.get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.data.num_workers = 0
  config.model.update(dim=16, width=4, mlp_dim=32, iters=2, stem_pool=False, image_last_stride=2)
  config.loss.k = 3
  config.optim.update(learning_rate=1e-3, schedule='cosine', warmup_steps=2)
  config.train.update(batch_size=8, epochs=1, log_every_steps=1, checkpoint_every_steps=2)
  config.train.update(train_overrides)
  config.eval.splits = ''
  config.eval.best_metric = ''
  return config


def test_learning_rate_schedules():
  optim = ml_collections.ConfigDict(config_lib.optim_config('adamw', 1.0, 0.0))
  optim.update(schedule='step', step_gamma=0.5)
  step = train.learning_rate_schedule(optim, steps_per_epoch=10, total_steps=100)
  np.testing.assert_allclose([step(0), step(9), step(10), step(25)], [1, 1, 0.5, 0.25])
  optim.update(schedule='cosine', warmup_steps=10)
  cosine = train.learning_rate_schedule(optim, steps_per_epoch=10, total_steps=110)
  np.testing.assert_allclose([cosine(0), cosine(5), cosine(10), cosine(60), cosine(110)],
                             [0, 0.5, 1, 0.5, 0], atol=1e-6)


def test_adamw_decays_weights_decoupled_and_adam_as_l2():
  optim = config_lib.optim_config('adamw', 0.1, 0.5)
  params = {'w': jnp.ones(3)}
  zero = {'w': jnp.zeros(3)}
  tx = train.make_optimizer(optim, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * 0.5 * np.ones(3), rtol=1e-6)
  # torch Adam(weight_decay=0.5): the gradient becomes 0.5 * w, which Adam's first step
  # normalizes to a step of -lr.
  optim.name = 'adam'
  tx = train.make_optimizer(optim, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * np.ones(3), rtol=1e-5)
  optim.weight_decay = 0.0
  tx = train.make_optimizer(optim, optax.constant_schedule(0.1))
  updates, _ = tx.update(zero, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], 0.0)


def _random_batch(config, batch_size, seed=0):
  shapes = train.input_shapes(config, batch_size, train=True)
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, shapes['image'].shape).astype(np.uint8),
          'spectrogram': rng.normal(size=shapes['spectrogram'].shape).astype(np.float32)}


def _setup(config, devices, tx=None):
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh(devices)
  model = method.build_model(config)
  tx = tx or train.make_optimizer(config.optim,
                                  optax.constant_schedule(config.optim.learning_rate))
  state = train.create_train_state(config, model, tx, mesh)
  return mesh, train.make_train_step(config, model, method, tx, mesh, steps_per_epoch=1), state


def _assert_leaves_close(new, old, reference_new, reference_old, tolerance):
  """The change of every leaf equals the reference change up to `tolerance` times the
  largest reference change of that leaf (sums of many terms that cancel make plain
  relative tolerances meaningless for near-zero entries)."""
  for a, a0, b, b0 in zip(*(jax.tree_util.tree_leaves(t)
                            for t in (new, old, reference_new, reference_old))):
    delta, reference = np.asarray(a) - a0, np.asarray(b) - b0
    np.testing.assert_allclose(delta, reference,
                               atol=tolerance * np.abs(reference).max() + 1e-8)


@pytest.mark.parametrize('method', [
    'linear',  # the sharded step: batch-wide loss, gradient reduction, replicated update
    pytest.param('jsa', marks=pytest.mark.slow)])  # and global BatchNorm statistics: 100 s
def test_four_device_step_equals_one_device_step(method):
  assert jax.device_count() == 4, 'tests/conftest.py sets 4 fake CPU devices'
  if method == 'linear':
    linear_method.register()
    config = linear_method.get_config()
  else:
    config = tiny_config()
  batch = _random_batch(config, 8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    # Plain SGD, so the update is the gradient (Adam's 1 / sqrt(v) would amplify float
    # noise in near-zero gradients).
    mesh, step, state = _setup(config, devices, optax.sgd(1e-3))
    initial = jax.device_get(state)
    state, metrics = step(state, sharding.global_batch(batch, mesh))
    results.append((jax.device_get(metrics), jax.device_get(state), initial))
  (metrics_1, state_1, initial_1), (metrics_4, state_4, initial_4) = results
  for name in metrics_1:
    np.testing.assert_allclose(metrics_4[name], metrics_1[name], rtol=1e-4, atol=1e-6)
  _assert_leaves_close(state_4.params, initial_4.params, state_1.params, initial_1.params,
                       tolerance=1e-3)
  # BatchNorm statistics are global-batch statistics on both meshes.
  _assert_leaves_close(state_4.batch_stats, initial_4.batch_stats, state_1.batch_stats,
                       initial_1.batch_stats, tolerance=1e-4)


def test_noprior_max_pooled_audio_trains_with_finite_gradients_on_four_devices():
  """NoPrior with the release's max-pooled l_a, data-parallel, at the suite's XLA:CPU
  optimization level 0: jnp.max's gradient (which divides by the number of cells equal
  to the maximum, compared in a second pass) gave a NaN gradient at the second step
  here; pooling.global_max_pool's cannot."""
  config = noprior_config.get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5)
  config.model.update(dim=32, width=4, audio_pool='max')
  mesh, step, state = _setup(config, jax.devices())
  for seed in range(2):
    state, metrics = step(state, sharding.global_batch(_random_batch(config, 8, seed), mesh))
    assert np.isfinite(jax.device_get(metrics['grad_norm'])), f'step {seed + 1}'


class _DropoutProbe(nn.Module):
  """One parameter vector through FNAC's kind of dropout (rate 0.5)."""

  @nn.compact
  def __call__(self, image, spectrogram, train: bool = True):
    del image, spectrogram
    weights = self.param('w', nn.initializers.ones, (32,))
    return {'dropped': nn.Dropout(0.5, deterministic=not train)(weights)}


def test_loss_sees_the_epoch_and_a_fresh_dropout_mask_every_step():
  config = tiny_config()

  def loss(outputs, config, epoch):
    del config
    return jnp.mean(outputs['dropped']), {'epoch': epoch, 'kept': outputs['dropped'] != 0}

  probe = methods.Method('probe', lambda config: _DropoutProbe(), loss, None, None, None)
  mesh = sharding.make_mesh(jax.devices()[:1])
  tx = optax.sgd(0.0)
  state = train.create_train_state(config, probe.build_model(config), tx, mesh)
  step = train.make_train_step(config, probe.build_model(config), probe, tx, mesh,
                               steps_per_epoch=3)
  batch = sharding.global_batch(_random_batch(config, 8), mesh)
  epochs, masks = [], set()
  for _ in range(7):
    state, metrics = step(state, batch)
    epochs.append(int(metrics['epoch']))
    masks.add(np.asarray(metrics['kept']).tobytes())
  assert epochs == [0, 0, 0, 1, 1, 1, 2]  # FNAC's warm-up counts these
  assert len(masks) == 7


def test_train_step_compiles_once_and_donates_the_state():
  config = tiny_config()
  # The optimizer of the test above: the session's compilation cache already holds it.
  mesh, step, state = _setup(config, jax.devices(), optax.sgd(1e-3))
  for seed in range(3):
    old_params = state.params
    state, _ = step(state, sharding.global_batch(_random_batch(config, 8, seed), mesh))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert all(x.is_deleted() for x in jax.tree_util.tree_leaves(old_params))
  assert int(state.step) == 3


def _sigterm():
  os.kill(os.getpid(), signal.SIGTERM)


def train_run(config, workdir, split_dir, fault_at=None, fault=_sigterm, log=lambda _: None):
  """Runs train.train; `fault()` (default: SIGTERM to itself, like a preemption) runs when
  the input pipeline is asked for batch `fault_at`."""
  original = pipeline.train_dataset

  def faulty_dataset(*args, **kwargs):
    dataset = original(*args, **kwargs)
    return dataset if fault_at is None else _Faulty(dataset, fault_at, fault)

  pipeline.train_dataset = faulty_dataset
  try:
    return train.train(config, workdir, {config.data.train_split: split_dir}, log=log)
  finally:
    pipeline.train_dataset = original


class _Faulty:
  """Wraps a dataset; its iterator calls `fault()` when asked for batch n."""

  def __init__(self, dataset, n, fault):
    self.dataset, self.n, self.fault = dataset, n, fault

  def __iter__(self):
    return _FaultyIterator(iter(self.dataset), self.n, self.fault)


class _FaultyIterator:

  def __init__(self, iterator, n, fault):
    self.iterator, self.n, self.fault, self.count = iterator, n, fault, 0

  def __next__(self):
    self.count += 1
    if self.count == self.n:
      self.fault()
    return next(self.iterator)

  # The bytes protocol that grain's checkpoint handler uses for non-Grain iterators.
  def get_state(self) -> bytes:
    return json.dumps(self.iterator.get_state()).encode()

  def set_state(self, state: bytes):
    self.iterator.set_state(json.loads(state))

  def start_prefetch(self):
    self.iterator.start_prefetch()

  def close(self):
    self.iterator.close()


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r}


@pytest.mark.parametrize('method', [
    'linear',  # the trainer's state, iterator and checkpoints with a model that compiles fast
    pytest.param('jsa', marks=pytest.mark.slow)])  # with BatchNorm and JSA's mask keys: 130 s
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, method):
  split_dir = splits.write_split(tmp_path / 'data' / 'synthetic_train', num_examples=48,
                                 image_size=40, audio_seconds=0.5)
  if method == 'linear':
    linear_method.register()
    config = linear_method.get_config()
    config.train.max_steps = 5
  else:
    config = tiny_config(max_steps=5)
  # Checkpoints at 2, 4 and 5; SIGTERM at 3.
  reference = train_run(config, str(tmp_path / 'reference'), split_dir)
  resumed_dir = str(tmp_path / 'resumed')
  with pytest.raises(preemption.Preempted, match='saved a checkpoint at step 3;'):
    train_run(config, resumed_dir, split_dir, fault_at=3)
  assert sorted(os.listdir(os.path.join(resumed_dir, 'checkpoints'))) == ['2', '3']
  resumed = train_run(config, resumed_dir, split_dir)
  assert int(resumed.step) == 5
  assert sorted(os.listdir(os.path.join(resumed_dir, 'checkpoints')))[-2:] == ['4', '5']
  assert _losses(resumed_dir) == pytest.approx(_losses(str(tmp_path / 'reference')), rel=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed.params)),
                  jax.tree_util.tree_leaves(jax.device_get(reference.params))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  # --mode=eval --checkpoint may name the training checkpoint directory: its latest step.
  _, latest = checkpointing.load_inference(os.path.join(resumed_dir, checkpointing.TRAIN_DIR))
  jax.tree_util.tree_map(np.testing.assert_array_equal, latest['params'],
                         jax.device_get(resumed.params))


@pytest.mark.parametrize('field,value,message', [
    ('loss.tau', -1.0, r'config\.loss\.tau must be > 0, got -1\.0'),
    ('model.mask_ratio', 1.5, r'config\.model\.mask_ratio must be in \[0, 1\), got 1\.5'),
    ('optim.name', 'sgd', r"config\.optim\.name must be 'adam' or 'adamw', got 'sgd'"),
    ('train.batch_size', 0, r'config\.train\.batch_size must be > 0, got 0'),
    ('eval.threshold_protocol', 'otsu', r'config\.eval\.threshold_protocol must be'),
    ('eval.num_workers', -1, r'config\.eval\.num_workers must be >= 0, got -1'),
])
def test_bad_config_values_fail_naming_the_field(tmp_path, field, value, message):
  config = tiny_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    experiment.run(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run')  # nothing is created before the checks


def test_evaluation_takes_the_architecture_from_the_checkpoint_and_inference_knobs_from_the_flags():
  config = jsa_config.get_config('synthetic')
  config.model.infer_sharpening = 0.3
  saved = jsa_config.get_config('synthetic').to_dict()
  saved['model'].update(dim=64, infer_sharpening=1.0)
  logs = []
  merged = config_lib.with_saved_model(config, saved, log=logs.append)
  assert merged.model.dim == 64 and merged.model.infer_sharpening == 0.3
  assert merged.train.batch_size == config.train.batch_size
  assert [line for line in logs if 'dim' in line] and not [
      line for line in logs if 'infer_sharpening' in line]


def test_a_checkpoint_config_older_than_a_model_field_fails_naming_the_field():
  config = noprior_config.get_config('synthetic')
  saved = noprior_config.get_config('synthetic').to_dict()
  del saved['model']['audio_pool'], saved['model']['osc_image_gradient']
  merged = config_lib.with_saved_model(config, saved, log=lambda _: None)
  with pytest.raises(config_lib.ConfigError,
                     match=r'config.model has no audio_pool, osc_image_gradient, .*NoPrior'):
    methods.get_method('noprior').build_model(merged)


def test_unwritable_workdir_fails_with_a_clear_message(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(PermissionError, match=r'--workdir .*file/run is not writable'):
    experiment.check_workdir(str(blocker / 'run'))


@pytest.mark.parametrize('split,converter', [('vggsound_144k', 'vggsound'),
                                             ('vggsound_duet', 'music')])
def test_missing_prepared_split_names_the_path_and_the_converter(tmp_path, split, converter):
  config = tiny_config()
  config.data.root = str(tmp_path)
  config.data.train_split = split
  with pytest.raises(FileNotFoundError, match=rf"prepared split '{split}' not found at "
                     rf".*{split}: convert it first \(python -m data_prep\.{converter} "):
    experiment.run(config, str(tmp_path / 'run'))


def test_command_line_rejects_unknown_keys_and_bad_values(tmp_path):
  def main(*args):
    return subprocess.run(
        [sys.executable, '-m', 'avloc.main', '--config=configs/jsa.py:synthetic',
         f'--workdir={tmp_path}/run', *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, check=False)
  # One line naming the field, with ml_collections' suggestion, and nothing written.
  unknown = main('--config.loss.lamda_div=0.1')
  assert unknown.returncode == 1 and unknown.stderr.splitlines() == [
      "avloc.main: --config.loss.lamda_div: config.loss has no field 'lamda_div'; "
      'did you mean --config.loss.lambda_div?']
  bad = main('--config.loss.k=0')
  assert bad.returncode == 1 and bad.stderr.splitlines()[-1:] == [
      'avloc.main: config.loss.k must be >= 1, got 0']
  assert not os.path.exists(tmp_path / 'run')


def _tiny(method: str) -> ml_collections.ConfigDict:
  """configs/<method>.py:synthetic at 32 px, 0.5 s clips and width 4."""
  if method == 'jsa':
    return tiny_config(batch_size=8)
  config = importlib.import_module(f'configs.{method}').get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.data.num_workers = 0
  config.model.update(width=4, dim=16 if config.model.projection else 32, stem_pool=False,
                      image_last_stride=2)
  config.train.batch_size = 8
  if method == 'fnac':
    # Dropout 0.9 on 32 channels zeroes whole cells (0.9^32 = 3 % of them), and a zero
    # cell's normalization has the gradient 1 / eps (torch's too): 1e12-sized steps that
    # say nothing of bfloat16. The paper's 512 channels never drop a whole cell.
    config.model.image_dropout = 0.5
  return config


# Each method's pair of compilations takes 1-2 minutes on 2 cores: `pytest -m slow`.
@pytest.mark.parametrize('method', [
    pytest.param(method, marks=pytest.mark.slow)
    for method in ('jsa', 'noprior', 'lvs', 'ezvsl', 'fnac')])
def test_bfloat16_training_stays_finite_and_close_to_float32(method):
  """`train.compute_dtype=bfloat16`: three steps from the same float32 parameters on the
  same batches give finite losses within 5 % of float32's and gradient norms within 15 %
  (bfloat16 keeps 8 bits of mantissa; the contrastive losses divide cosines by tau =
  0.03; a small learning rate keeps the two runs together over the steps). Measured on
  2 cores: at most 2.9 % (EZ-VSL's first loss) and 11 % (JSA's third gradient norm)."""
  results = {}
  for dtype in ('float32', 'bfloat16'):
    config = _tiny(method)
    config.train.compute_dtype = dtype
    config.optim.update(learning_rate=1e-4, warmup_steps=0, schedule='constant')
    mesh, step, state = _setup(config, jax.devices()[:1])
    results[dtype] = [jax.device_get(state.params)]
    for seed in range(3):
      state, metrics = step(state, sharding.global_batch(_random_batch(config, 8, seed), mesh))
      results[dtype].append(jax.device_get(metrics))
  jax.tree_util.tree_map(np.testing.assert_array_equal, results['float32'][0],
                         results['bfloat16'][0])  # the same float32 parameters
  for full, half in zip(results['float32'][1:], results['bfloat16'][1:]):
    for name in full:
      if name.startswith('loss') or name == 'grad_norm':
        assert np.isfinite(full[name]) and np.isfinite(half[name]), (name, full, half)
        np.testing.assert_allclose(half[name], full[name], err_msg=name,
                                   rtol=0.15 if name == 'grad_norm' else 0.05, atol=0.01)
