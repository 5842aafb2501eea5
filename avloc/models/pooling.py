"""Max-pooling: windows with a gradient that is cheap on XLA:CPU, and a global max-pool
whose gradient cannot be 0/0.

XLA differentiates a max-pool through a select-and-scatter, which XLA:CPU runs as index
arrays, a multi-output reduce-window and a scatter: for the ResNet stem of the paper's
JSA model that took 0.3-0.5 s of CPU time per train step, about 2.2x torch's max-pool
backward. `max_pool` computes the same gradient from strided slices instead: each
window's cotangent goes to its first maximal input in row-major order (as XLA and torch
choose among ties), gathered per output phase (input position modulo the stride) and
interleaved, all elementwise work that XLA fuses. The forward is XLA's reduce-window.
It is used where XLA's gradient is slow (`WINDOWED_GRADIENT_PLATFORMS`: the CPU); the
gradients are the same, summed in the same order (tests/test_pooling.py).
"""

import contextlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Platforms (jax.default_backend()) on which `max_pool` uses the windowed gradient.
WINDOWED_GRADIENT_PLATFORMS = ('cpu',)


@contextlib.contextmanager
def windowed_gradient(enabled: bool):
  """Within the block, models traced use the windowed gradient on every platform
  (`enabled`) or on none; for benchmarks and tests."""
  global WINDOWED_GRADIENT_PLATFORMS
  saved = WINDOWED_GRADIENT_PLATFORMS
  WINDOWED_GRADIENT_PLATFORMS = (jax.default_backend(),) if enabled else ()
  try:
    yield
  finally:
    WINDOWED_GRADIENT_PLATFORMS = saved


def _reduce_max(x, window, strides, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                           ((0, 0), *padding, (0, 0)))


def max_pool(x, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]]):
  """[B, H, W, C] -> [B, H', W', C]: max over `window` (kh, kw) windows at `strides`,
  the input padded by `padding` ((top, bottom), (left, right)) with -inf; flax's
  `nn.max_pool` with explicit padding."""
  window, strides = tuple(window), tuple(strides)
  padding = tuple(tuple(p) for p in padding)
  if jax.default_backend() in WINDOWED_GRADIENT_PLATFORMS:
    return _windowed_max_pool(x, window, strides, padding)
  return _reduce_max(x, window, strides, padding)


def _forward(x, window, strides, padding):
  y = _reduce_max(x, window, strides, padding)
  return y, (x, y)


def _shift(values, offsets, lengths):
  """values[b, q - t, r - u, c] for q < lengths[0], r < lengths[1]; zero outside."""
  zero = jnp.zeros((), values.dtype)
  return lax.pad(values, zero, ((0, 0, 0),
                                *((t, n - t - m, 0) for t, n, m in
                                  zip(offsets, lengths, values.shape[1:3])),
                                (0, 0, 0)))


def _backward(window, strides, padding, residuals, cotangent):
  """The cotangent of each window to its first maximal input (row-major), as phases.

  With input rows padded, window o covers padded rows s*o + i (i < k); padded row
  r = s*q + a (phase a < s) gets the cotangents of windows o = q - t through offsets
  i = a + s*t. Each phase is a sum of shifted, masked cotangents; the phases are then
  interleaved and the padding cropped.
  """
  x, y = residuals
  batch, height, width, channels = x.shape
  out_h, out_w = y.shape[1:3]
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(y.shape, bool)
  masked = {}
  for i in range(window[0]):
    for j in range(window[1]):
      inputs = lax.slice(padded, (0, i, j, 0),
                         (batch, i + strides[0] * (out_h - 1) + 1,
                          j + strides[1] * (out_w - 1) + 1, channels), (1, *strides, 1))
      hit = (inputs == y) & ~taken
      taken = taken | hit
      masked[i, j] = jnp.where(hit, cotangent, jnp.zeros((), cotangent.dtype))
  phases = [-(-n // s) for n, s in zip(padded.shape[1:3], strides)]  # rows per phase
  rows = []
  for a in range(strides[0]):
    row = []
    for b in range(strides[1]):
      total = jnp.zeros((batch, *phases, channels), cotangent.dtype)
      # Windows in ascending order, as XLA's select-and-scatter adds them.
      for t, i in reversed(list(enumerate(range(a, window[0], strides[0])))):
        for u, j in reversed(list(enumerate(range(b, window[1], strides[1])))):
          total = total + _shift(masked[i, j], (t, u), phases)
      row.append(total)
    rows.append(jnp.stack(row, axis=3))  # [B, Q, R, s_w, C]
  full = jnp.stack(rows, axis=2).reshape(  # [B, Q, s_h, R, s_w, C] -> rows interleaved
      batch, phases[0] * strides[0], phases[1] * strides[1], channels)
  top, left = padding[0][0], padding[1][0]
  return (full[:, top:top + height, left:left + width],)


_windowed_max_pool = jax.custom_vjp(_reduce_max, nondiff_argnums=(1, 2, 3))
_windowed_max_pool.defvjp(_forward, _backward)


def global_max_pool(x):
  """[B, H, W, C] -> [B, C]: the maximum over H and W (torch's AdaptiveMaxPool2d((1, 1))).

  The gradient goes to the first maximal cell of each channel (row-major), as torch
  routes it, chosen by an argmax in the forward pass. `jnp.max`'s gradient instead
  compares the input with the maximum again and divides by the number of equal cells;
  where XLA recomputes the input inside that comparison with other rounding, no cell
  compares equal and the gradient is 0 / 0 = NaN (seen in a data-parallel train step
  compiled by XLA:CPU at optimization level 0: tests/test_train.py).
  """
  batch, height, width, channels = x.shape
  cells = x.reshape(batch, height * width, channels)
  first_max = jnp.argmax(cells, axis=1)
  return jnp.take_along_axis(cells, first_max[:, None, :], axis=1)[:, 0]
