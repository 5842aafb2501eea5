"""avloc.models.pooling: the max-pool and its windowed gradient against XLA's and a NumPy
reference (each window's cotangent to its first maximal input, row-major)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc.models import pooling

# (window, strides, padding, height, width): the ResNet stem's 3x3 / 2 / 1 first.
CASES = [
    ((3, 3), (2, 2), ((1, 1), (1, 1)), 11, 12),
    ((2, 2), (2, 2), ((0, 0), (0, 0)), 9, 8),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), 7, 7),
    ((3, 2), (3, 2), ((0, 1), (1, 0)), 10, 9),
    ((5, 5), (2, 2), ((2, 2), (2, 2)), 13, 11),
    ((2, 3), (3, 1), ((0, 0), (1, 1)), 8, 6),
]


def reference(x, cotangent, window, strides, padding):
  """NumPy: y and dL/dx, the first maximum of each window in row-major order."""
  x = np.asarray(x, np.float64)
  padded = np.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
  batch, out_h, out_w, channels = cotangent.shape
  y = np.empty(cotangent.shape)
  grad = np.zeros(padded.shape)
  for b, i, j, c in itertools.product(range(batch), range(out_h), range(out_w),
                                      range(channels)):
    rows, cols = i * strides[0], j * strides[1]
    patch = padded[b, rows:rows + window[0], cols:cols + window[1], c]
    first = np.argmax(patch)  # first maximum, row-major
    y[b, i, j, c] = patch.flat[first]
    grad[b, rows + first // window[1], cols + first % window[1], c] += cotangent[b, i, j, c]
  top, left = padding[0][0], padding[1][0]
  return y, grad[:, top:top + x.shape[1], left:left + x.shape[2]]


def _value_and_grad(x, cotangent, case, windowed):
  window, strides, padding = case[:3]

  def value_and_grad(x, cotangent):
    y, vjp = jax.vjp(lambda x: pooling.max_pool(x, window, strides, padding), x)
    return y, vjp(cotangent)[0]
  with pooling.windowed_gradient(windowed):
    return jax.jit(value_and_grad)(x, cotangent)


@pytest.mark.parametrize('case', CASES)
def test_windowed_gradient_matches_reference_and_xla(case):
  rng = np.random.default_rng(0)
  height, width = case[3:]
  # Rounded values make ties within windows common; ReLU zeros too.
  x = np.maximum(np.round(rng.normal(size=(2, height, width, 3)), 1), 0).astype(np.float32)
  out_shape = jax.eval_shape(lambda x: pooling.max_pool(x, *case[:3]), x).shape
  cotangent = rng.normal(size=out_shape).astype(np.float32)
  y_ref, grad_ref = reference(x, cotangent, *case[:3])
  y, grad = _value_and_grad(x, cotangent, case, windowed=True)
  y_xla, grad_xla = _value_and_grad(x, cotangent, case, windowed=False)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(y_xla, y_ref)
  np.testing.assert_allclose(grad, grad_ref, rtol=0, atol=1e-6)
  # The same selection and the same order of summation as XLA's select-and-scatter.
  np.testing.assert_array_equal(grad, grad_xla)


def test_windowed_gradient_in_bfloat16_and_under_jit():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.bfloat16)
  case = CASES[0]

  @jax.jit
  def grad(x):
    return jax.grad(lambda x: jnp.sum(pooling.max_pool(x, *case[:3]).astype(jnp.float32) ** 2))(x)

  with pooling.windowed_gradient(True):
    windowed = grad(x)
  grad.clear_cache()  # trace again with XLA's gradient
  with pooling.windowed_gradient(False):
    xla = grad(x)
  assert windowed.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(windowed, np.float32), np.asarray(xla, np.float32))


def test_platform_choice():
  """The windowed gradient is the default on the CPU only; the context manager switches."""
  assert pooling.WINDOWED_GRADIENT_PLATFORMS == ('cpu',)
  x = jnp.zeros((1, 4, 4, 1))
  pool = lambda x: pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))  # noqa: E731
  for enabled in (True, False):
    with pooling.windowed_gradient(enabled):
      text = jax.jit(jax.grad(lambda x: jnp.sum(pool(x)))).lower(x).as_text()
    assert ('select_and_scatter' in text or 'scatter' in text) != enabled
  assert pooling.WINDOWED_GRADIENT_PLATFORMS == ('cpu',)


def test_global_max_pool_value_and_gradient_to_the_first_maximum():
  """Values of np.max; each channel's cotangent to its first maximal cell (row-major),
  also among ties (post-ReLU inputs rounded to 0.1 tie often)."""
  rng = np.random.default_rng(3)
  x = np.maximum(np.round(rng.normal(size=(3, 4, 5, 6)), 1), 0).astype(np.float32)
  cotangent = rng.normal(size=(3, 6)).astype(np.float32)
  y, vjp = jax.vjp(pooling.global_max_pool, jnp.asarray(x))
  np.testing.assert_array_equal(y, x.max(axis=(1, 2)))
  cells = x.reshape(3, 20, 6)
  assert ((cells == cells.max(axis=1, keepdims=True)).sum(axis=1) > 1).any(), 'no ties'
  expected = np.zeros_like(cells)
  for b in range(3):
    for c in range(6):
      expected[b, np.argmax(cells[b, :, c]), c] = cotangent[b, c]
  np.testing.assert_array_equal(vjp(jnp.asarray(cotangent))[0], expected.reshape(x.shape))
