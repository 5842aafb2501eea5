"""Audio-visual cosine maps (models/similarity.py) against NumPy, and `l2_normalize`'s
gradient, which must stay finite at a zero vector (torch's `F.normalize` backward)."""

import jax
import jax.numpy as jnp
import numpy as np

from avloc.models import similarity


def test_l2_normalize_is_torchs_normalize():
  x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
  x[0, 0] = 0.0
  got = np.asarray(similarity.l2_normalize(jnp.asarray(x)))
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(got, x / np.maximum(norms, 1e-12), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(similarity.l2_normalize(jnp.asarray(x), axis=1)),
                             x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)


def test_l2_normalize_gradient_is_finite_at_zero_and_exact_elsewhere():
  weights = jnp.asarray([0.5, -1.0, 2.0])

  def loss(x):
    return jnp.sum(similarity.l2_normalize(x, eps=1e-6) * weights)

  # At zero: torch's d/dx [x / max(|x|, eps)] = I / eps (its norm backward is 0 there).
  np.testing.assert_allclose(jax.grad(loss)(jnp.zeros(3)), weights / 1e-6, rtol=1e-5)
  x = jnp.asarray([1.0, 2.0, -2.0])  # |x| = 3: d/dx (w . x / |x|) = (w - (w . u) u) / |x|
  u = np.asarray(x) / 3.0
  expected = (np.asarray(weights) - np.dot(weights, u) * u) / 3.0
  np.testing.assert_allclose(jax.grad(loss)(x), expected, rtol=1e-5)


def test_similarity_maps_own_maps_and_max_pooling():
  rng = np.random.default_rng(1)
  cells = rng.normal(size=(3, 4, 5)).astype(np.float32)
  audio = rng.normal(size=(3, 5)).astype(np.float32)
  maps = np.asarray(similarity.similarity_maps(jnp.asarray(cells), jnp.asarray(audio)))
  for n in range(3):
    for m in range(3):
      np.testing.assert_allclose(maps[n, m], cells[n] @ audio[m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(similarity.own_maps(jnp.asarray(maps)),
                             maps[np.arange(3), np.arange(3)], rtol=1e-6)
  np.testing.assert_allclose(similarity.max_pooled(jnp.asarray(maps)), maps.max(-1), rtol=1e-6)
