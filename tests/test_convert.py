"""PyTorch -> Flax conversion: small torch modules with torchvision's and the official JSA
release's parameter layout, random weights, outputs compared after conversion."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from avloc import checkpointing, methods, sharding, train, weights
from avloc.data import audio as audio_lib
from avloc.models import object_prior
from avloc.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet18
from avloc.models.slot_attention import ModalityBranch
from configs import jsa as jsa_config

torch = pytest.importorskip('torch')
tnn, F = torch.nn, torch.nn.functional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A narrow JSA on 64 px images (2 x 2 grid) and 0.5 s clips (65 x 126 -> 4 frames).
OVERRIDES = {
    'data.image.size': 64, 'data.image.train_resize': 72, 'data.audio.seconds': 0.5,
    'data.audio.n_fft': 128, 'data.audio.win_length': 128, 'data.audio.hop_length': 64,
    'model.dim': 16, 'model.width': 4, 'model.mlp_dim': 32, 'model.iters': 2,
    'model.stem_pool': True, 'model.image_last_stride': 2, 'model.infer_sharpening': 0.5,
}


def small_config():
  config = jsa_config.get_config('synthetic')
  for field, value in OVERRIDES.items():
    *parents, name = field.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def stride32(n):
  """Output size of the ResNet-18 (stem, max-pool and three stride-2 stages) for n."""
  for _ in range(5):
    n = -(-n // 2)
  return n


class Block(tnn.Module):
  """torchvision's BasicBlock."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(cout)
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                       tnn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(tnn.Module):
  """ResNet-18 with torchvision's names and `width`; head 'fc' (torchvision), 'image'
  (JSA release imgnet: `proj` 1x1 conv), 'audio' (JSA release audnet: stem `conv1_1`,
  `proj.0` 1x1 conv, max over frequency) or 'none' (torchvision's with `fc = Identity`).
  `stem` and `in_channels` name and size the stem conv (default: the head's);
  `last_stride` is layer4's stride (1 in LVS's `base_models.py`)."""

  def __init__(self, width, head, dim=0, stem=None, in_channels=None, last_stride=2):
    super().__init__()
    self.stem = stem or ('conv1_1' if head == 'audio' else 'conv1')
    in_channels = in_channels or (1 if head == 'audio' else 3)
    setattr(self, self.stem, tnn.Conv2d(in_channels, width, 7, 2, 3, bias=False))
    self.bn1 = tnn.BatchNorm2d(width)
    cin = width
    for stage in range(4):
      cout = width * 2**stage
      stride = (last_stride if stage == 3 else 2) if stage else 1
      setattr(self, f'layer{stage + 1}',
              tnn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
      cin = cout
    if head == 'fc':
      self.fc = tnn.Linear(cin, 10)
    elif head == 'image':
      self.proj = tnn.Conv2d(cin, dim, 1)
    elif head == 'audio':
      self.proj = tnn.Sequential(tnn.Conv2d(cin, dim, 1), tnn.AdaptiveMaxPool2d((1, None)),
                                 tnn.Flatten(2))

  def trunk(self, x):
    x = F.max_pool2d(F.relu(self.bn1(getattr(self, self.stem)(x))), 3, 2, 1)
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
    return x

  def forward(self, x):
    return self.proj(self.trunk(x))


class SlotAttention(tnn.Module):
  """The release's SlotAttention parameters, evaluation mode (no masking)."""

  def __init__(self, dim, mlp_dim, num_slots, iters):
    super().__init__()
    self.scale, self.iters = dim**-0.5, iters
    self.slots = tnn.Parameter(torch.randn(1, num_slots, dim))
    self.mask_token_img = tnn.Parameter(torch.randn(1, 1, dim))
    self.mask_token_aud = tnn.Parameter(torch.randn(1, 1, dim))
    for m in ('img', 'aud'):
      for p in 'qkv':
        setattr(self, f'{m}_to_{p}', tnn.Linear(dim, dim))
      setattr(self, f'{m}_gru', tnn.GRUCell(dim, dim))
      setattr(self, f'{m}_mlp',
              tnn.Sequential(tnn.Linear(dim, mlp_dim), tnn.ReLU(), tnn.Linear(mlp_dim, dim)))
      for n in ('input', 'slots', 'pre_ff'):
        setattr(self, f'{m}_norm_{n}', tnn.LayerNorm(dim))

  def module(self, m, name):
    return getattr(self, f'{m}_{name}')

  def attend(self, q, k, sharpening=1.0):
    attn = (torch.einsum('bid,bjd->bij', q, k) * self.scale * sharpening).softmax(1) + 1e-8
    return attn / attn.sum(-1, keepdim=True)

  def update(self, m, slots, updates):
    """GRU(updates, slots) + MLP(LN(.)): [B, S, D] -> [B, S, D]."""
    b, s, d = slots.shape
    slots = self.module(m, 'gru')(updates.reshape(-1, d), slots.reshape(-1, d)).reshape(b, s, d)
    return slots + self.module(m, 'mlp')(self.module(m, 'norm_pre_ff')(slots))

  def forward(self, img, aud):
    out = {}
    for m, x in (('img', img), ('aud', aud)):
      x = self.module(m, 'norm_input')(x)
      k, v = self.module(m, 'to_k')(x), self.module(m, 'to_v')(x)
      slots = self.slots.expand(x.shape[0], -1, -1)
      for _ in range(self.iters):
        q = self.module(m, 'to_q')(self.module(m, 'norm_slots')(slots))
        slots = self.update(m, slots, torch.einsum('bjd,bij->bid', v, self.attend(q, k)))
      out.update({f'{m}_k': k, f'{m}_q': q, f'{m}_slots': slots})
    return out


class Decoder(tnn.Module):
  """The release's MlpDecoder: broadcast slots + (col, row) embedding, MLP, alpha mix."""

  def __init__(self, height, width, dim):
    super().__init__()
    self.height, self.width = height, width
    self.pos_emb = tnn.Module()
    self.pos_emb.row_embed = tnn.Embedding(height, dim // 2)
    self.pos_emb.col_embed = tnn.Embedding(width, dim // 2)
    self.mlp = tnn.Sequential(tnn.Linear(dim, dim), tnn.ReLU(), tnn.Linear(dim, dim), tnn.ReLU(),
                              tnn.Linear(dim, dim), tnn.ReLU(), tnn.Linear(dim, dim + 1))

  def forward(self, slots):
    h, w = self.height, self.width
    cols = self.pos_emb.col_embed.weight[None].expand(h, w, -1)
    rows = self.pos_emb.row_embed.weight[:, None].expand(h, w, -1)
    x = self.mlp(slots[:, :, None] + torch.cat([cols, rows], -1).reshape(h * w, -1))
    alpha = x[..., -1].softmax(1)
    return torch.einsum('bsnd,bsn->bnd', x[..., :-1], alpha), alpha


class ReleaseJSA(tnn.Module):
  """The release's `mymodel` parameter layout."""

  def __init__(self, model, image_grid, audio_frames):
    super().__init__()
    self.imgnet = ResNet(model.width, 'image', model.dim)
    self.audnet = ResNet(model.width, 'audio', model.dim)
    self.slot_attn = SlotAttention(model.dim, model.mlp_dim,
                                   model.num_target + model.num_offtarget, model.iters)
    self.img_decoder = Decoder(*image_grid, model.dim)
    self.aud_decoder = Decoder(1, audio_frames, model.dim)


def randomize(module):
  """Release-like conv init and non-trivial normalization parameters and statistics."""
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, tnn.Conv2d):
        tnn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, tnn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.num_batches_tracked.fill_(7)
      elif isinstance(m, tnn.LayerNorm):
        m.weight.normal_(1.0, 0.2)
        m.bias.normal_(0.0, 0.2)
  return module.eval()


def numpy(x):
  return x.detach().numpy()


def assert_close(actual, expected, tolerance=1e-4):
  expected = np.asarray(expected)
  np.testing.assert_allclose(np.asarray(actual), expected,
                             atol=tolerance * max(np.abs(expected).max(), 1.0), rtol=tolerance)


@pytest.fixture(scope='module')
def release():
  """Config, torch model, converted variables and inputs (numpy NHWC and torch NCHW)."""
  torch.manual_seed(0)
  config = small_config()
  freq, frames = audio_lib.spectrogram_shape(config.data.audio)
  size = config.data.image.size
  net = randomize(ReleaseJSA(config.model, (stride32(size),) * 2, stride32(frames)))
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  spectrogram = rng.normal(size=(2, freq, frames, 1)).astype(np.float32)
  mean, std = np.asarray(config.data.image.mean), np.asarray(config.data.image.std)
  torch_image = torch.from_numpy(((image / 255.0 - mean) / std).astype(np.float32))
  return dict(
      config=config, net=net, state_dict=net.state_dict(),
      variables=weights.jsa_from_torch(net.state_dict(), config),
      model=methods.get_method('jsa').build_model(config), image=image,
      spectrogram=spectrogram, torch_image=torch_image.permute(0, 3, 1, 2),
      torch_spectrogram=torch.from_numpy(spectrogram).permute(0, 3, 1, 2))


def test_trunk_matches_torchvision_resnet18():
  torch.manual_seed(1)
  net = randomize(ResNet(4, 'fc'))
  variables = weights.image_trunk_from_torchvision(net.state_dict())
  x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  expected = numpy(net.trunk(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
  actual = ResNet18(width=4).apply(variables, x, train=False)
  assert actual.shape == expected.shape == (2, 2, 2, 32)
  assert_close(actual, expected)


def test_object_prior_matches_ezvsl_saliency():
  # EZ-VSL / JSA release: torchvision ResNet-18 with avgpool = Identity and fc = Unflatten +
  # NormReducer(dim=1) (mean |x| over channels), bicubically upsampled to the image.
  torch.manual_seed(2)
  net = randomize(ResNet(4, 'fc'))
  image = np.random.default_rng(2).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
  normalized = (image / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
  features = net.trunk(torch.from_numpy(normalized.astype(np.float32)).permute(0, 3, 1, 2))
  saliency = features.abs().mean(1, keepdim=True)
  expected = F.interpolate(saliency, size=(96, 80), mode='bicubic', align_corners=False)
  actual = object_prior.object_prior_maps(
      weights.image_trunk_from_torchvision(net.state_dict()), image)
  assert actual.shape == (2, 96, 80) and saliency.shape[2:] == (3, 3)
  assert_close(actual, numpy(expected)[:, 0])


def test_encoder_tokens_match(release):
  net, model = release['net'], release['model']
  outputs = model.apply(release['variables'], release['image'], release['spectrogram'],
                        train=False)
  with torch.no_grad():
    image = net.imgnet(release['torch_image'])  # [B, D, h, w]
    audio = net.audnet(release['torch_spectrogram'])  # [B, D, t]
  assert_close(outputs['image_tokens'], numpy(image.flatten(2).transpose(1, 2)))
  assert_close(outputs['audio_tokens'], numpy(audio.transpose(1, 2)))


def test_gru_and_one_iteration_update(release):
  net, config = release['net'], release['config']
  dim = config.model.dim
  rng = np.random.default_rng(2)
  slots, updates = (rng.normal(size=(2, 2, dim)).astype(np.float32) for _ in range(2))
  for torch_name, flax_name in (('img', 'image'), ('aud', 'audio')):
    params = release['variables']['params']['slot_attention'][flax_name]
    with torch.no_grad():
      gru = net.slot_attn.module(torch_name, 'gru')(
          torch.from_numpy(updates[0]), torch.from_numpy(slots[0]))
      update = net.slot_attn.update(torch_name, torch.from_numpy(slots),
                                    torch.from_numpy(updates))
    new, _ = nn.GRUCell(features=dim).apply({'params': params['gru']}, slots[0], updates[0])
    assert_close(new, numpy(gru))
    branch = ModalityBranch(dim, config.model.mlp_dim)
    assert_close(branch.apply({'params': params}, slots, updates, method=branch.update),
                 numpy(update))


def test_slots_attention_maps_and_decoders_match(release):
  net, model = release['net'], release['model']
  outputs = model.apply(release['variables'], release['image'], release['spectrogram'],
                        train=False)
  with torch.no_grad():
    image = net.imgnet(release['torch_image']).flatten(2).transpose(1, 2)
    audio = net.audnet(release['torch_spectrogram']).transpose(1, 2)
    out = net.slot_attn(image, audio)
    attend = net.slot_attn.attend
    expected = dict(
        image_slots=out['img_slots'], audio_slots=out['aud_slots'],
        ia_image=attend(out['img_q'], out['img_k']),
        ca_image_audio=attend(out['img_q'], out['aud_k']),
        ia_audio=attend(out['aud_q'], out['aud_k']),
        ca_audio_image=attend(out['aud_q'], out['img_k']),
        recon_image=net.img_decoder(out['img_slots'])[0],
        recon_audio=net.aud_decoder(out['aud_slots'])[0],
    )
    sharpening = release['config'].model.infer_sharpening
    heatmap = attend(out['aud_q'], out['img_k'], sharpening)[:, 0]
    prior = attend(out['img_q'], out['img_k'], sharpening)[:, 0]
  for name, value in expected.items():
    assert_close(outputs[name], numpy(value), tolerance=2e-4)
  inference = model.apply(release['variables'], release['image'], release['spectrogram'],
                          method=model.localize)
  side = inference['heatmap'].shape[1]
  assert_close(inference['heatmap'], numpy(heatmap).reshape(-1, side, side), tolerance=2e-4)
  assert_close(inference['image_prior'], numpy(prior).reshape(-1, side, side), tolerance=2e-4)
  assert_close(inference['audio_embedding'], numpy(out['aud_slots'][:, 0]), tolerance=2e-4)


def _resnet_state_dict(width=4):
  torch.manual_seed(3)
  return {k: numpy(v) for k, v in randomize(ResNet(width, 'fc')).state_dict().items()}


def test_errors_name_missing_unexpected_and_mismatched_keys(release):
  state = _resnet_state_dict()
  del state['layer2.0.downsample.1.running_var']
  state['layer1.0.extra.weight'] = np.zeros(3, np.float32)
  state['layer3.1.conv2.weight'] = np.zeros((16, 16, 3, 5), np.float32)
  state['conv1.weight'] = np.zeros((4, 147), np.float32)
  with pytest.raises(weights.ConversionError) as error:
    weights.image_trunk_from_torchvision(state)
  message = str(error.value)
  assert 'missing torch keys (1): layer2.0.downsample.1.running_var' in message
  assert 'unexpected torch keys (1): layer1.0.extra.weight' in message
  assert ('shape mismatch: params/layer3_1/conv2/kernel: the model has (3, 3, 16, 16), '
          'layer3.1.conv2.weight (16, 16, 3, 5) gives (3, 5, 16, 16)') in message
  assert ('params/conv1/kernel: the model has (7, 7, 3, 4), conv1.weight (4, 147) does not '
          'convert') in message
  assert 'fc.' not in message and 'num_batches_tracked' not in message

  state = dict(release['state_dict'])
  del state['slot_attn.aud_gru.bias_hh']
  with pytest.raises(weights.ConversionError, match=r'missing torch keys \(1\): '
                     r'slot_attn\.aud_gru\.bias_hh$'):
    weights.jsa_from_torch(state, release['config'])
  wider = release['config'].copy_and_resolve_references()
  wider.model.mlp_dim = 64
  with pytest.raises(weights.ConversionError, match='slot_attention/image/mlp_in/kernel: '
                     r'the model has \(16, 64\), slot_attn\.img_mlp\.0\.weight \(32, 16\)'):
    weights.jsa_from_torch(release['state_dict'], wider)


def run_convert(kind, checkpoint, output, config, overrides):
  """`python -m avloc.convert` in a subprocess, with `--config.<field>=<value>` for each
  override; asserts that it succeeds."""
  result = subprocess.run(
      [sys.executable, '-m', 'avloc.convert', f'--kind={kind}', f'--input={checkpoint}',
       f'--output={output}', f'--config={config}']
      + [f'--config.{field}={value}' for field, value in overrides.items()],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-3000:]


def test_cli_round_trip_and_module_prefix(release, tmp_path):
  checkpoint = tmp_path / 'best.pth'
  torch.save({'model': {'module.' + k: v for k, v in release['state_dict'].items()},
              'epoch': 3}, checkpoint)
  output = tmp_path / 'converted'
  run_convert('jsa', checkpoint, output, 'configs/jsa.py:synthetic', OVERRIDES)
  config, variables = checkpointing.load_inference(str(output))
  assert config.model.to_dict() == release['config'].model.to_dict()
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables, release['variables'])


def test_imagenet_trunk_export_and_train_state_init(tmp_path):
  state = _resnet_state_dict()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / 'resnet18.pth')
  trunk = weights.image_trunk_from_torchvision(state)
  export = weights.convert_checkpoint(
      weights.TRUNK_KIND, str(tmp_path / 'resnet18.pth'), str(tmp_path / 'trunk'))
  assert export == str(tmp_path / 'trunk' / 'export' / '0')
  for source in ('trunk', 'resnet18.pth'):
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           weights.load_image_trunk(str(tmp_path / source)), trunk)
  with pytest.raises(FileExistsError):
    weights.convert_checkpoint(
        weights.TRUNK_KIND, str(tmp_path / 'resnet18.pth'), str(tmp_path / 'trunk'))

  config = small_config()
  config.model_init.image_trunk = str(tmp_path / 'trunk')
  model = methods.get_method('jsa').build_model(config)
  tx = optax.adam(1e-3)
  initial = train.create_train_state(config, model, tx, sharding.make_mesh())
  loaded = jax.device_get({'params': initial.params['image_encoder']['trunk'],
                           'batch_stats': initial.batch_stats['image_encoder']['trunk']})
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, trunk)
  assert set(initial.params) == {'image_encoder', 'audio_encoder', 'slot_attention',
                                 'image_decoder', 'audio_decoder'}

  wide = weights.image_trunk_from_torchvision(_resnet_state_dict(width=8))
  with pytest.raises(weights.ConversionError, match=r'config\.model_init\.image_trunk does '
                     r'not fit the model:\n  shape mismatch: batch_stats/bn1/mean: the model '
                     r'has \(4,\), the trunk gives \(8,\)'):
    weights.merge_image_trunk(initial.params, initial.batch_stats, wide)
