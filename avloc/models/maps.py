"""Operations on localization maps: bicubic upsampling and min-max normalization.

The official evaluations (LVS, EZ-VSL, JSA) call PyTorch's
`F.interpolate(mode='bicubic', align_corners=False)`: Keys' cubic kernel with a = -0.75,
half-pixel centres and clamped borders. Bicubic resizing is separable, so it is two
matrix products, `W_h @ map @ W_w^T`, with the interpolation matrices built here once per
shape; this matches PyTorch to float precision (tests/test_maps.py) where
`jax.image.resize` (a = -0.5, antialiasing) would not.
"""

import functools

import jax.numpy as jnp
import numpy as np

_A = -0.75  # PyTorch's bicubic coefficient


def _cubic(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(
      x <= 1, ((_A + 2) * x - (_A + 3)) * x * x + 1,
      np.where(x < 2, ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] matrix resizing a 1-D signal like PyTorch's bicubic mode."""
  scale = in_size / out_size
  centers = (np.arange(out_size) + 0.5) * scale - 0.5
  base = np.floor(centers).astype(np.int64)
  frac = centers - base
  matrix = np.zeros((out_size, in_size), np.float64)
  for tap in range(-1, 3):
    weights = _cubic(frac - tap)
    columns = np.clip(base + tap, 0, in_size - 1)
    np.add.at(matrix, (np.arange(out_size), columns), weights)
  matrix.setflags(write=False)
  return matrix


def upsample_bicubic(maps, size: tuple[int, int]):
  """maps [..., h, w] -> [..., H, W] (jnp or np in, same kind out)."""
  rows = bicubic_matrix(maps.shape[-2], size[0]).astype(np.float32)
  cols = bicubic_matrix(maps.shape[-1], size[1]).astype(np.float32)
  xp = np if isinstance(maps, np.ndarray) else jnp
  return xp.einsum('Hh,...hw,Ww->...HW', rows, maps, cols)


def minmax_normalize(maps, eps=1e-12):
  """Each map [..., H, W] scaled to [0, 1] (jnp); a constant map becomes zeros."""
  low = jnp.min(maps, axis=(-2, -1), keepdims=True)
  high = jnp.max(maps, axis=(-2, -1), keepdims=True)
  return jnp.where(high - low > eps, (maps - low) / jnp.maximum(high - low, eps), 0.0)


def cosine_scores(maps):
  """Cosine maps [..., H, W] -> fixed-scale scores in [0, 1], comparable across images:
  (cos + 1) / 2, which is SLAVC `test.py`'s `min_max_norm(cos / tau, -1 / tau, 1 / tau)`
  (Mo & Morgado, NeurIPS 2022, extended protocol); clipped, so the overshoot of bicubic
  upsampling stays in range (jnp)."""
  return jnp.clip((maps + 1.0) / 2.0, 0.0, 1.0)
