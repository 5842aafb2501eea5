"""Shared pieces of the LVS / EZ-VSL / FNAC fidelity tests: tiny configs, inputs in both
layouts, and the EZ-VSL release's network in torch (FNAC's has the same parameters)."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc import methods
from avloc.data import audio as audio_lib
from avloc.models import dual_encoder
from tests.test_convert import ResNet, assert_close, numpy, randomize

torch = pytest.importorskip('torch')
tnn, F = torch.nn, torch.nn.functional


def tiny_config(method: str):
  """configs/<method>.py:synthetic at 96 px (EZ-VSL: a 3x3 map, LVS: 6x6), 0.5 s clips
  (65 x 126 spectrograms), width 4."""
  config = importlib.import_module(f'configs.{method}').get_config('synthetic')
  config.data.image.update(size=96, train_resize=104)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.data.num_workers = 0
  # The release's network: both trunks at the method's own last stride.
  config.model.update(width=4, dim=16 if config.model.projection else 32,
                      image_last_stride=config.model.audio_last_stride)
  return config


def inputs(config, batch: int = 3, seed: int = 0) -> dict:
  """Random uint8 images and spectrograms (NHWC) and their torch NCHW versions (the
  image normalized as the releases' transforms do)."""
  rng = np.random.default_rng(seed)
  size = config.data.image.size
  freq, frames = audio_lib.spectrogram_shape(config.data.audio)
  image = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
  spectrogram = rng.normal(size=(batch, freq, frames, 1)).astype(np.float32)
  mean, std = np.asarray(config.data.image.mean), np.asarray(config.data.image.std)
  normalized = ((image / 255.0 - mean) / std).astype(np.float32)
  return dict(image=image, spectrogram=spectrogram,
              torch_image=torch.from_numpy(normalized).permute(0, 3, 1, 2),
              torch_spectrogram=torch.from_numpy(spectrogram).permute(0, 3, 1, 2))


class ReleaseEZVSL(tnn.Module):
  """EZ-VSL `model.py`, `EZVSL.__init__` / `forward` (FNAC `model.py`, `FNAC`, adds only
  parameterless dropouts): torchvision ResNet-18s with `avgpool` / `fc` = Identity (so
  `imgnet(image).unflatten(1, (512, 7, 7))` is the trunk's map), a 1-channel audio
  `conv1`, `audnet.avgpool = AdaptiveMaxPool2d((1, 1))`, `img_proj` 1x1 conv and Linear
  `aud_proj`."""

  def __init__(self, width, dim):
    super().__init__()
    self.imgnet = ResNet(width, 'none')
    self.img_proj = tnn.Conv2d(8 * width, dim, 1)
    self.audnet = ResNet(width, 'none', stem='conv1', in_channels=1)
    self.aud_proj = tnn.Linear(8 * width, dim)

  def encode(self, image, audio):
    """-> img [B, D, h, w], aud [B, D]: the projections' outputs, before normalization."""
    img = self.img_proj(self.imgnet.trunk(image))
    aud = self.aud_proj(F.adaptive_max_pool2d(self.audnet.trunk(audio), 1).flatten(1))
    return img, aud


def release_ezvsl(config, seed: int = 0):
  """A randomized `ReleaseEZVSL` for `config`'s model, in eval mode."""
  torch.manual_seed(seed)
  return randomize(ReleaseEZVSL(config.model.width, config.model.dim))


def localize(config, variables, batch) -> dict:
  """The method's `localize` (jitted: faster than op-by-op) on a batch of `inputs`."""
  method = methods.get_method(config.method)
  run = jax.jit(functools.partial(method.localize, method.build_model(config), config=config))
  return jax.device_get(run(variables, batch['image'], batch['spectrogram']))


def encoder_outputs(batch: int, cells: tuple[int, int], dim: int, seed: int,
                    nonnegative: bool = False):
  """Random encoder outputs as torch leaves with gradients: image [B, D, h, w] and audio
  [B, D] (post-ReLU-like when `nonnegative`)."""
  generator = torch.Generator().manual_seed(seed)
  image = torch.randn(batch, dim, *cells, generator=generator)
  audio = torch.randn(batch, dim, generator=generator)
  if nonnegative:
    image, audio = image.relu(), audio.abs()
  return image.requires_grad_(), audio.requires_grad_()


def nhwc(x):
  """torch [B, D, h, w] -> numpy [B, h, w, D]."""
  return x.detach().permute(0, 2, 3, 1).numpy()


def check_loss_and_gradients(config, img, aud, loss, epoch: int = 0) -> dict:
  """Backpropagates the release's `loss`, a torch scalar of the encoder outputs img
  [B, D, h, w] and aud [B, D] (leaves), and compares it and its gradients with respect to
  both with the method's loss of the same outputs (to 1e-4); returns the method's
  metrics."""
  loss.backward()
  method = methods.get_method(config.method)

  def avloc_loss(image_features, audio_features):
    outputs = dual_encoder.audio_visual(image_features, audio_features)
    return method.loss(outputs, config, jnp.int32(epoch))

  (value, metrics), (image_grad, audio_grad) = jax.jit(jax.value_and_grad(
      avloc_loss, argnums=(0, 1), has_aux=True))(nhwc(img), numpy(aud))
  assert_close(value, numpy(loss))
  assert_close(image_grad, nhwc(img.grad))
  assert_close(audio_grad, numpy(aud.grad))
  assert np.abs(image_grad).max() > 0 and np.abs(audio_grad).max() > 0
  return jax.device_get(metrics)
