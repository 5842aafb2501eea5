"""ResNet-18 trunk and the image / audio encoders built on it (JSA Sec. 3.1, Sec. 4.1).

The trunk is torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2], BatchNorm) in NHWC with
the same explicit paddings, so torchvision and official-release weights load exactly
(avloc/convert.py). `width` scales every stage (64 is the paper's network).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

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

  `stem_pool=False` drops the 3x3 max-pool after the stem (stride 16 instead of 32);
  `final_stride=1` keeps the last stage at the resolution of the third (stride 16, as the
  image network of LVS, `models/base_models.py`: 14x14 at 224 px), at a fraction of the
  cost: only the last stage runs on 4x the positions.
  """

  width: int = 64
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  stem_pool: bool = True
  final_stride: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.width, 7, 2, 3, self.dtype, 'conv1')(x.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS,
                     dtype=self.dtype, name='bn1')(x)
    x = nn.relu(x)
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        last_stage = stage == len(self.stage_sizes) - 1
        stride = 1 if stage == 0 or block > 0 else self.final_stride if last_stage else 2
        x = BasicBlock(self.width * 2**stage, stride, self.dtype,
                       name=f'layer{stage + 1}_{block}')(x, train)
    return x


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class ImageEncoder(nn.Module):
  """f_v: uint8 image [B, H, W, 3] -> features [B, h, w, dim] (ResNet-18, then the 1x1
  projection unless `projection=False`, see `_project`; h = H / 32, or H / 16 with
  `final_stride=1` or `stem_pool=False`).

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
  final_stride: int = 2

  @nn.compact
  def __call__(self, image, train: bool):
    x = normalize_pixels(image, self.mean, self.std)
    x = ResNet18(self.width, stem_pool=self.stem_pool, final_stride=self.final_stride,
                 dtype=self.dtype, name='trunk')(x, train)
    return _project(x, self.dim, self.projection, self.dtype)


class AudioEncoder(nn.Module):
  """f_a: log spectrogram [B, F, T, 1] (frequency on the height axis) -> tokens.

  ResNet-18 with a 1-channel stem trained from scratch, then the 1x1 conv projection
  (with bias) unless `projection=False` (see `_project`). `pool='frequency_max'` max-pools the frequency axis only, giving [B, t, dim]
  tokens (JSA: 257x501 -> t = 16); `pool='none'` returns the map [B, f, t, dim].
  """

  dim: int = 512
  width: int = 64
  stem_pool: bool = True
  pool: str = 'frequency_max'
  dtype: jnp.dtype = jnp.float32
  projection: bool = True

  @nn.compact
  def __call__(self, spectrogram, train: bool):
    x = ResNet18(self.width, stem_pool=self.stem_pool, dtype=self.dtype, name='trunk')(
        spectrogram, train)
    x = _project(x, self.dim, self.projection, self.dtype)
    if self.pool == 'frequency_max':
      return jnp.max(x, axis=1)
    if self.pool == 'none':
      return x
    raise ValueError(f"AudioEncoder.pool must be 'frequency_max' or 'none', got {self.pool!r}")
