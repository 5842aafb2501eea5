"""ResNet-18 trunk and the image / audio encoders built on it (JSA Sec. 3.1, Sec. 4.1).

The trunk is torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2], BatchNorm) in NHWC with
the same explicit paddings, so torchvision and official-release weights load exactly
(avloc/weights.py). `width` scales every stage (64 is the paper's network).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from avloc.constants import IMAGENET_MEAN, IMAGENET_STD
from avloc.models import pooling

# torchvision's BatchNorm2d: momentum 0.1 (flax: 0.9 for the running average), eps 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5


def _conv(features, kernel, stride, padding, dtype, name, use_bias=False):
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), use_bias=use_bias, dtype=dtype,
      kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'), name=name,
  )


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

  features: int
  stride: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda name, **kw: nn.BatchNorm(  # noqa: E731
        use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
        dtype=self.dtype, name=name, **kw)
    residual = x
    y = _conv(self.features, 3, self.stride, 1, self.dtype, 'conv1')(x)
    y = nn.relu(norm('bn1')(y))
    y = _conv(self.features, 3, 1, 1, self.dtype, 'conv2')(y)
    y = norm('bn2')(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      residual = _conv(self.features, 1, self.stride, 0, self.dtype, 'downsample_conv')(x)
      residual = norm('downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNet18(nn.Module):
  """ResNet-18 without its classifier: [B, H, W, C_in] -> [B, H/32, W/32, 8 * width].

  `stem_pool=False` drops the 3x3 max-pool after the stem (stride 16 instead of 32),
  for CPU-sized inputs that keep the paper's 7x7 feature map at 112 px.
  `last_stride=1` keeps the last stage at the third stage's resolution (stride 16: a
  14x14 map at 224 px), as LVS's `models/base_models.py` builds `layer4`.
  """

  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stem_pool: bool = True
  last_stride: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.width, 7, 2, 3, self.dtype, 'conv1')(x.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                     dtype=self.dtype, name='bn1')(x)
    x = nn.relu(x)
    if self.stem_pool:
      x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    last = len(self.stage_sizes) - 1
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 1
        if stage > 0 and block == 0:
          stride = self.last_stride if stage == last else 2
        x = BasicBlock(self.width * 2**stage, stride, self.dtype,
                       name=f'layer{stage + 1}_{block}')(x, train)
    return x


def normalize_pixels(image, mean, std):
  """uint8 [B, H, W, 3] -> float32, scaled to [0, 1] and normalized by `mean` / `std`
  (torchvision's ToTensor + Normalize)."""
  return (image.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def _project(x, dim, projection, dtype):
  """The encoders' head: a 1x1 conv with bias to `dim` channels (JSA Sec. 4.1), or, with
  `projection=False`, the trunk's post-ReLU output itself (LVS and the NoPrior release:
  features >= 0, so their cosines are >= 0); then `dim` must be the trunk's 8 * width."""
  if projection:
    return _conv(dim, 1, 1, 0, dtype, 'projection', use_bias=True)(x)
  if x.shape[-1] != dim:
    raise ValueError(f'without a projection the features are the trunk output '
                     f'({x.shape[-1]} channels = 8 * width), but dim is {dim}')
  return x


def _head(x, dim, projection, dropout, train, dtype):
  """Dropout at rate `dropout` on the head's input when training (FNAC's `img_dropout` /
  `aud_dropout`, `nn.Dropout` before its projections; rng collection 'dropout'), then
  `_project`."""
  x = nn.Dropout(dropout, deterministic=not train)(x)
  return _project(x, dim, projection, dtype)


class ImageEncoder(nn.Module):
  """f_v: uint8 image [B, H, W, 3] -> features [B, h, w, dim] (ResNet-18, then the 1x1
  projection unless `projection=False`, see `_project`; `dropout` before it, `_head`).

  Pixels are normalized here (`normalize_pixels`), so every caller feeds the same uint8
  images.
  """

  dim: int = 512
  width: int = 64
  stem_pool: bool = True
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  dtype: jnp.dtype = jnp.float32
  projection: bool = True
  last_stride: int = 2
  dropout: float = 0.0

  @nn.compact
  def __call__(self, image, train: bool):
    x = normalize_pixels(image, self.mean, self.std)
    x = ResNet18(self.width, stem_pool=self.stem_pool, last_stride=self.last_stride,
                 dtype=self.dtype, name='trunk')(x, train)
    return _head(x, self.dim, self.projection, self.dropout, train, self.dtype)


AUDIO_POOLS = ('frequency_max', 'none', 'max')


class AudioEncoder(nn.Module):
  """f_a: log spectrogram [B, F, T, 1] (frequency on the height axis) -> tokens.

  ResNet-18 with a 1-channel stem trained from scratch, the 1x1 conv projection (with
  bias) unless `projection=False` (see `_project`), `dropout` on the projection's input
  (`_head`), and a pooling:
    'frequency_max': projection, then max over frequency only: [B, t, dim] tokens (JSA:
      257x501 -> t = 16);
    'none': projection, no pooling: the map [B, f, t, dim];
    'max': max over frequency and time first, then the projection of that vector: one
      embedding [B, dim] (EZ-VSL / FNAC `model.py`: `audnet.avgpool =
      AdaptiveMaxPool2d((1, 1))`, then the Linear `aud_proj`, a 1x1 conv here; LVS
      max-pools its trunk output and has no projection).
  """

  dim: int = 512
  width: int = 64
  stem_pool: bool = True
  pool: str = 'frequency_max'
  dtype: jnp.dtype = jnp.float32
  projection: bool = True
  last_stride: int = 2
  dropout: float = 0.0

  @nn.compact
  def __call__(self, spectrogram, train: bool):
    if self.pool not in AUDIO_POOLS:
      raise ValueError(f'AudioEncoder.pool must be one of {AUDIO_POOLS}, got {self.pool!r}')
    x = ResNet18(self.width, stem_pool=self.stem_pool, last_stride=self.last_stride,
                 dtype=self.dtype, name='trunk')(spectrogram, train)
    if self.pool == 'max':
      x = jnp.max(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    x = _head(x, self.dim, self.projection, self.dropout, train, self.dtype)
    if self.pool == 'frequency_max':
      return jnp.max(x, axis=1)
    return x[:, 0, 0] if self.pool == 'max' else x
