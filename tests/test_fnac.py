"""FNAC against its release (OpenNLPLab/FNAC_AVL `model.py`, `train.py`): the converted
network's map, the loss terms and their gradients with respect to both encoders'
outputs, the warm-up, the feature dropout, checkpoint import. (The trainer's epoch and
dropout stream: tests/test_train.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc import checkpointing, config as config_lib, methods, weights
from avloc.models import resnet
from tests import dual_encoders as common
from tests import exports
from tests.test_convert import assert_close, numpy

torch, F = common.torch, common.F


def release_calculate_loss(img, aud, tau, high_conf_thresh=0.6):
  """Transcription of FNAC `model.py`, `FNAC.calculate_loss` (img [B, D, h, w] and aud
  [B, D] normalized): [loss, fnac_loss1, fnac_loss2, fnac_loss3]."""
  aud_attn = (aud @ aud.transpose(0, 1)) / tau
  img_avg = F.adaptive_avg_pool2d(img, (1, 1))[:, :, 0, 0]
  img_attn = (img_avg @ img_avg.transpose(0, 1)) / tau
  B = img.shape[0]
  Slogits = torch.einsum('nchw,mc->nmhw', img, aud) / tau
  loc_map = Slogits[torch.arange(B), torch.arange(B)]
  loc_map = (loc_map - torch.amin(loc_map, (1, 2), keepdim=True)) / \
      (torch.amax(loc_map, (1, 2), keepdim=True) - torch.amin(loc_map, (1, 2), keepdim=True) + 1e-5)
  frg_feature = img * (loc_map > high_conf_thresh).unsqueeze(1)
  frg_feature = frg_feature.flatten(-2, -1).mean(dim=-1)
  frg_attn = (frg_feature @ frg_feature.transpose(0, 1)) / tau
  logits = Slogits.flatten(-2, -1).max(dim=-1)[0]
  labels = torch.arange(B).long()
  loss = F.cross_entropy(logits, labels) + F.cross_entropy(logits.permute(1, 0), labels)
  fnac_loss1 = F.l1_loss(torch.softmax(aud_attn, dim=1), torch.softmax(logits, dim=1))
  fnac_loss2 = F.l1_loss(torch.softmax(aud_attn, dim=1), torch.softmax(frg_attn, dim=1))
  fnac_loss3 = F.l1_loss(torch.softmax(img_attn, dim=1), torch.softmax(logits, dim=1))
  return [loss, fnac_loss1, fnac_loss2, fnac_loss3]


def release_train_loss(loss, epoch, warmup=5, w1=100, w2=100, w3=100):
  """FNAC `train.py`, `train`: the warm-up switch and the weights of `train_*.sh`."""
  if epoch < warmup:
    return loss[0]
  return loss[0] + w1 * loss[1] + w2 * loss[2] + w3 * loss[3]


@pytest.fixture(scope='module')
def release():
  config = common.tiny_config('fnac')
  net = common.release_ezvsl(config, seed=2)
  return dict(config=config, net=net, state_dict=net.state_dict(),
              variables=weights.ezvsl_from_torch(net.state_dict(), config, kind='fnac'),
              batch=common.inputs(config, seed=2))


def test_localization_map_matches_the_release(release):
  # FNAC.forward in eval mode (dropout off): Savl = Slogits[arange, arange] = cos / tau.
  config, net, batch = release['config'], release['net'], release['batch']
  with torch.no_grad():
    img, aud = net.encode(batch['torch_image'], batch['torch_spectrogram'])
    savl = torch.einsum('nchw,nc->nhw', F.normalize(img, dim=1), F.normalize(aud, dim=1))
  out = common.localize(config, release['variables'], batch)
  assert_close(out['lowres']['av'], numpy(savl))
  assert out['heatmaps']['av'].shape == (3, 96, 96)


@pytest.mark.parametrize('epoch', [4, 5])  # the last warm-up epoch and the first after
def test_loss_terms_and_encoder_gradients_match_the_release(release, epoch):
  config = release['config'].copy_and_resolve_references()
  config.loss.warmup_epochs = 5
  tau = config.loss.tau
  img, aud = common.encoder_outputs(6, (4, 4), 16, seed=3)
  terms = release_calculate_loss(F.normalize(img, dim=1), F.normalize(aud, dim=1), tau)
  total = release_train_loss(terms, epoch)
  metrics = common.check_loss_and_gradients(config, img, aud, total, epoch)
  names = ('loss_contrastive', 'loss_fns_audio', 'loss_tne', 'loss_fns_image')
  for name, expected in zip(names, terms):
    assert_close(metrics[name], numpy(expected))
  assert metrics['loss_tne'] > 0
  assert (epoch < 5) == np.isclose(metrics['loss'], metrics['loss_contrastive'])


def test_dropout_acts_on_the_projection_input_when_training():
  # FNAC model.py: img_dropout on the trunk map before img_proj, aud_dropout on the
  # max-pooled vector before aud_proj; the torch layers scale kept values by 1 / (1 - p).
  image = np.random.default_rng(4).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  spectrogram = np.random.default_rng(5).normal(size=(4, 33, 32, 1)).astype(np.float32)
  for encoder, x in (
      (resnet.ImageEncoder(dim=8, width=4, stem_pool=False, dropout=0.5), image),
      (resnet.AudioEncoder(dim=8, width=4, stem_pool=False, pool='max', dropout=0.5),
       spectrogram)):
    key = jax.random.key(0)
    variables = exports.random_variables(jax.eval_shape(
        functools.partial(encoder.init, train=False), {'params': key}, x))

    @jax.jit
    def train_mode(variables, x, encoder=encoder, key=key):
      out, state = encoder.apply(variables, x, train=True, rngs={'dropout': key},
                                 capture_intermediates=True,
                                 mutable=['intermediates', 'batch_stats'])
      captured = state['intermediates']
      return out, captured['trunk']['__call__'][0], captured['Dropout_0']['__call__'][0]

    out, trunk, dropped = jax.device_get(train_mode(variables, x))
    if isinstance(encoder, resnet.AudioEncoder):  # max-pooled before the dropout
      trunk = np.max(trunk, axis=(1, 2), keepdims=True)
    kept = dropped != 0
    assert 0.3 < kept.mean() < 0.7
    np.testing.assert_allclose(dropped[kept], 2 * trunk[kept], rtol=1e-6)
    projection = variables['params']['projection']
    expected = (np.einsum('bhwc,cd->bhwd', dropped, projection['kernel'][0, 0])
                + projection['bias'])
    assert_close(out, expected.reshape(out.shape))
    # Evaluation (train=False) is unaffected by the rate.
    evaluate = jax.jit(lambda v, x, e: e.apply(v, x, train=False), static_argnums=2)
    np.testing.assert_array_equal(evaluate(variables, x, encoder),
                                  evaluate(variables, x, encoder.clone(dropout=0.0)))


def test_checkpoint_round_trip(release, tmp_path):
  checkpoint = tmp_path / 'best.pth'
  torch.save({'model': release['state_dict'], 'epoch': 30}, checkpoint)
  weights.convert_checkpoint('fnac', str(checkpoint), str(tmp_path / 'out'), release['config'])
  config, variables = checkpointing.load_inference(str(tmp_path / 'out'))
  assert config.method == 'fnac' and config.model.image_dropout == 0.9
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, release['variables'])


def test_config_errors_name_the_field():
  config = common.tiny_config('fnac')
  config.model.image_dropout = 1.0
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.model\.image_dropout must be in \[0, 1\), got 1\.0'):
    config_lib.validate(config, methods.get_method('fnac').check_config)
