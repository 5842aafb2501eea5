"""LVS against its release (hche11/Localizing-Visual-Sounds-the-Hard-Way `model.py`,
`models/base_models.py`): the converted network's map, the tri-map loss and its
gradients with respect to both encoders' outputs, checkpoint import from the command
line. (The loss alone against a NumPy transcription: tests/test_lvs_loss.py.)"""

import jax
import numpy as np
import pytest

from avloc import checkpointing, config as config_lib, methods, weights
from tests import dual_encoders as common
from tests import test_convert
from tests.test_convert import ResNet, assert_close, numpy, randomize

torch, tnn, F = common.torch, common.tnn, common.F


def release_resnet(width, modal):
  """`base_models.resnet18(modal=...)`: layer4 at stride 1, and every net builds all
  three stems (`conv1` RGB, `conv1_a` audio, `conv1_flow`) and `fc`, using one stem."""
  stem = 'conv1_a' if modal == 'audio' else 'conv1'
  net = ResNet(width, 'fc', stem=stem, in_channels=1 if modal == 'audio' else 3,
               last_stride=1)
  for name, channels in (('conv1', 3), ('conv1_a', 1), ('conv1_flow', 6)):
    if name != stem:
      setattr(net, name, tnn.Conv2d(channels, width, 7, 2, 3, bias=False))
  return net


class ReleaseAVENet(tnn.Module):
  """LVS `model.py`, `AVENet` (its parameters: the two ResNets)."""

  def __init__(self, width):
    super().__init__()
    self.imgnet = release_resnet(width, 'vision')
    self.audnet = release_resnet(width, 'audio')


def release_join(img, aud, epsilon, epsilon2, tau=0.03):
  """Transcription of `AVENet.forward` from `# Join them` (tri_map and Neg on, as in
  `test.py`): img [B, C, h, w] and aud [B, C] normalized -> (A [B, 1, h, w], logits)."""
  B = img.shape[0]
  mask = (1 - 100 * torch.eye(B, B))
  A = torch.einsum('ncqa,nchw->nqa', [img, aud.unsqueeze(2).unsqueeze(3)]).unsqueeze(1)
  A0 = torch.einsum('ncqa,ckhw->nkqa', [img, aud.T.unsqueeze(2).unsqueeze(3)])
  Pos = torch.sigmoid((A - epsilon) / tau)
  Pos2 = torch.sigmoid((A - epsilon2) / tau)
  Neg = 1 - Pos2
  Pos_all = torch.sigmoid((A0 - epsilon) / tau)
  sim1 = (Pos * A).view(*A.shape[:2], -1).sum(-1) / (Pos.view(*Pos.shape[:2], -1).sum(-1))
  sim = ((Pos_all * A0).view(*A0.shape[:2], -1).sum(-1)
         / Pos_all.view(*Pos_all.shape[:2], -1).sum(-1)) * mask
  sim2 = (Neg * A).view(*A.shape[:2], -1).sum(-1) / Neg.view(*Neg.shape[:2], -1).sum(-1)
  logits = torch.cat((sim1, sim, sim2), 1) / 0.07
  return A, logits


def release_forward(net, image, audio, epsilon=0.65, epsilon2=0.4):
  """`AVENet.forward` up to the join: ResNet outputs, `self.avgpool` (a max-pool) on
  the audio, `F.normalize` on both."""
  B = image.shape[0]
  img = F.normalize(net.imgnet.trunk(image), dim=1)
  aud = F.adaptive_max_pool2d(net.audnet.trunk(audio), 1).view(B, -1)
  return release_join(img, F.normalize(aud, dim=1), epsilon, epsilon2)


@pytest.fixture(scope='module')
def release():
  config = common.tiny_config('lvs')
  torch.manual_seed(4)
  net = randomize(ReleaseAVENet(config.model.width))
  return dict(config=config, net=net, state_dict=net.state_dict(),
              variables=weights.lvs_from_torch(net.state_dict(), config),
              batch=common.inputs(config, seed=4))


def test_localization_map_matches_the_release(release):
  config, net, batch = release['config'], release['net'], release['batch']
  with torch.no_grad():
    heatmap, _ = release_forward(net, batch['torch_image'], batch['torch_spectrogram'])
  out = common.localize(config, release['variables'], batch)
  # layer4 at stride 1: 96 px -> 6 x 6 cells; post-ReLU features: cosines in [0, 1].
  assert out['lowres']['av'].shape == (3, 6, 6) and out['lowres']['av'].min() >= 0
  assert_close(out['lowres']['av'], numpy(heatmap)[:, 0])


def test_loss_and_encoder_gradients_match_the_release(release):
  config = release['config']
  img, aud = common.encoder_outputs(5, (4, 4), 32, seed=5, nonnegative=True)
  _, logits = release_join(F.normalize(img, dim=1), F.normalize(aud, dim=1),
                           config.loss.epsilon, config.loss.epsilon_negative)
  # No training script in the release: cross-entropy with target 0 on these logits (as
  # the NoPrior release trains the same `lvs` logits).
  loss = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
  common.check_loss_and_gradients(config, img, aud, loss)


def test_cli_imports_the_release_checkpoint(release, tmp_path):
  checkpoint = tmp_path / 'lvs.pth.tar'
  # test.py reads checkpoint['model_state_dict'] of an nn.DataParallel model.
  torch.save({'model_state_dict': {'module.' + k: v for k, v in release['state_dict'].items()}},
             checkpoint)
  overrides = {'data.image.size': 96, 'data.image.train_resize': 104,
               'data.audio.seconds': 0.5, 'data.audio.n_fft': 128,
               'data.audio.win_length': 128, 'data.audio.hop_length': 64,
               'model.width': 4, 'model.dim': 32}
  test_convert.run_convert('lvs', checkpoint, tmp_path / 'out', 'configs/lvs.py:synthetic',
                           overrides)
  config, variables = checkpointing.load_inference(str(tmp_path / 'out'))
  assert config.model.to_dict() == release['config'].model.to_dict()
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, release['variables'])

  state = {k: numpy(v) for k, v in release['state_dict'].items()}
  del state['audnet.layer4.0.downsample.1.running_mean']
  state['imgnet.extra.weight'] = np.zeros(2, np.float32)
  with pytest.raises(weights.ConversionError) as error:
    weights.lvs_from_torch(state, release['config'])
  assert 'missing torch keys (1): audnet.layer4.0.downsample.1.running_mean' in str(error.value)
  assert 'unexpected torch keys (1): imgnet.extra.weight' in str(error.value)


def test_config_errors_name_the_field():
  config = common.tiny_config('lvs')
  check = methods.get_method('lvs').check_config
  config.loss.epsilon_negative = 0.7
  with pytest.raises(config_lib.ConfigError, match=r'config\.loss\.epsilon_negative must be '
                     r'<= loss\.epsilon \(0\.65\), got 0\.7'):
    config_lib.validate(config, check)
  config = common.tiny_config('lvs')
  config.model.dim = 16
  with pytest.raises(config_lib.ConfigError, match=r'config\.model\.dim must be 8 \* '
                     r'model\.width = 32 without a projection, got 16'):
    config_lib.validate(config, check)
