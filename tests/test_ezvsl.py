"""EZ-VSL against its release (stoneMo/EZ-VSL `model.py`): the converted network's map,
the loss and its gradients with respect to both encoders' outputs, checkpoint import."""

import functools

import jax
import numpy as np
import pytest

from avloc import checkpointing, methods, train, weights
from configs import ezvsl as ezvsl_config
from tests import dual_encoders as common
from tests.test_convert import assert_close, numpy

torch, F = common.torch, common.F


def release_max_xmil_loss(img, aud, tau):
  """Transcription of EZ-VSL `model.py`, `EZVSL.max_xmil_loss` (img, aud normalized)."""
  B = img.shape[0]
  Slogits = torch.einsum('nchw,mc->nmhw', img, aud) / tau
  logits = Slogits.flatten(-2, -1).max(dim=-1)[0]
  labels = torch.arange(B).long()
  loss = F.cross_entropy(logits, labels) + F.cross_entropy(logits.permute(1, 0), labels)
  return loss, Slogits


def release_forward(net, image, audio, tau):
  """EZ-VSL `model.py`, `EZVSL.forward`: (loss, Savl [B, h, w])."""
  img, aud = net.encode(image, audio)
  img = F.normalize(img, dim=1)
  aud = F.normalize(aud, dim=1)
  loss, logits = release_max_xmil_loss(img, aud, tau)
  B = img.shape[0]
  return loss, logits[torch.arange(B), torch.arange(B)]


@pytest.fixture(scope='module')
def release():
  config = common.tiny_config('ezvsl')
  net = common.release_ezvsl(config)
  return dict(config=config, net=net, state_dict=net.state_dict(),
              variables=weights.ezvsl_from_torch(net.state_dict(), config),
              batch=common.inputs(config))


def test_localization_map_and_embeddings_match_the_release(release):
  config, net, batch = release['config'], release['net'], release['batch']
  tau = config.loss.tau
  with torch.no_grad():
    _, savl = release_forward(net, batch['torch_image'], batch['torch_spectrogram'], tau)
    img, aud = net.encode(batch['torch_image'], batch['torch_spectrogram'])
    size = config.data.image.size
    upsampled = F.interpolate(savl[:, None], size=(size, size), mode='bicubic',
                              align_corners=False)[:, 0]
  out = common.localize(config, release['variables'], batch)
  assert out['lowres']['av'].shape == (3, 3, 3)
  # avloc's map is the cosine; the release returns it divided by tau.
  assert_close(out['lowres']['av'], numpy(savl) * tau)
  assert_close(out['heatmaps']['av'], numpy(upsampled) * tau)
  np.testing.assert_allclose(out['scores']['av'],
                             np.clip((out['heatmaps']['av'] + 1) / 2, 0, 1), atol=1e-6)
  assert out['scores']['av'].min() >= 0 and out['scores']['av'].max() <= 1
  assert_close(out['audio_embedding'], numpy(F.normalize(aud, dim=1)))
  assert_close(out['image_embedding'], numpy(F.normalize(img, dim=1).mean((2, 3))))


def test_loss_and_encoder_gradients_match_the_release(release):
  config = release['config']
  tau = config.loss.tau
  img, aud = common.encoder_outputs(5, (3, 4), 16, seed=1)
  loss, _ = release_max_xmil_loss(F.normalize(img, dim=1), F.normalize(aud, dim=1), tau)
  common.check_loss_and_gradients(config, img, aud, loss)


def test_paper_model_has_the_parameters_of_jsa_table_7():
  # JSA Table 7: "EZ-VSL 22.87" M parameters (two ResNet-18s and the projections).
  config = ezvsl_config.get_config('vggsound_144k')
  model = methods.get_method('ezvsl').build_model(config)
  shapes = train.input_shapes(config, 1, train=False)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             {'params': jax.random.key(0)}, shapes['image'],
                             shapes['spectrogram'])
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']))
  assert round(count / 1e6, 2) == 22.87


def test_checkpoint_round_trip_and_errors(release, tmp_path):
  checkpoint = tmp_path / 'best.pth'
  # train.py saves {'model': model.state_dict(), ...}, DistributedDataParallel-prefixed.
  torch.save({'model': {'module.' + k: v for k, v in release['state_dict'].items()},
              'epoch': 20}, checkpoint)
  weights.convert_checkpoint('ezvsl', str(checkpoint), str(tmp_path / 'out'), release['config'])
  config, variables = checkpointing.load_inference(str(tmp_path / 'out'))
  assert config.method == 'ezvsl'
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, release['variables'])

  state = {k: numpy(v) for k, v in release['state_dict'].items()}
  state['aud_proj.weight'] = state['aud_proj.weight'][:, :-1]
  with pytest.raises(weights.ConversionError, match=r'audio_encoder/projection/kernel: the '
                     r'model has \(1, 1, 32, 16\), aud_proj\.weight \(16, 31\)'):
    weights.ezvsl_from_torch(state, release['config'])
  with pytest.raises(ValueError, match="a ezvsl checkpoint needs config.method 'ezvsl', got "
                     "'lvs'"):
    weights.ezvsl_from_torch(state, common.tiny_config('lvs'))
  with pytest.raises(ValueError, match=r'needs the config of its architecture '
                     r'\(--config=configs/ezvsl\.py\[:variant\]\)'):
    weights.convert_checkpoint('ezvsl', str(checkpoint), str(tmp_path / 'again'))
