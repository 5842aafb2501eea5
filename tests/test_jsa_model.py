"""JSA model (Secs. 3.1-3.5): shapes, train/eval behaviour, localization maps and IQR.
Slot attention itself (Eqs. 1-6, 10): tests/test_slot_attention.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc.models import jsa


def test_paper_configuration_shapes():
  """224x224 images -> 7x7x512, 257x501 spectrograms -> t = 16 (Sec. 4.1)."""
  model = jsa.JSA()
  image = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.uint8)
  spectrogram = jax.ShapeDtypeStruct((2, 257, 501, 1), jnp.float32)
  rngs = {'params': jax.random.PRNGKey(0), 'mask': jax.random.PRNGKey(1)}
  variables = jax.eval_shape(lambda: model.init(rngs, jnp.zeros(image.shape, jnp.uint8),
                                                jnp.zeros(spectrogram.shape), train=True))
  outputs = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros(image.shape, jnp.uint8), jnp.zeros(spectrogram.shape),
                            train=True, rngs=rngs, mutable=['batch_stats'])[0], variables)
  assert outputs['image_tokens'].shape == (2, 49, 512)
  assert outputs['audio_tokens'].shape == (2, 16, 512)
  assert outputs['image_slots'].shape == outputs['audio_slots'].shape == (2, 2, 512)
  assert outputs['ca_audio_image'].shape == (2, 2, 49)
  assert outputs['ca_image_audio'].shape == (2, 2, 16)
  assert outputs['recon_image'].shape == (2, 49, 512)
  counts = jax.tree_util.tree_map(lambda x: x.size, variables['params'])
  slot_params = sum(jax.tree_util.tree_leaves(counts['slot_attention']))
  decoder_params = sum(jax.tree_util.tree_leaves(counts['image_decoder']))
  # Appendix A: 6.84M for joint slot attention, 1.05M per decoder.
  assert abs(slot_params / 1e6 - 6.84) < 0.01, slot_params
  assert abs(decoder_params / 1e6 - 1.05) < 0.01, decoder_params


@pytest.fixture(scope='module')
def small_model():
  model = jsa.JSA(dim=16, width=4, mlp_dim=32, iters=2, stem_pool=False)
  rng = np.random.default_rng(3)
  image = jnp.asarray(rng.integers(0, 256, (4, 64, 64, 3)), jnp.uint8)
  spectrogram = jnp.asarray(rng.normal(size=(4, 33, 41, 1)), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, image, spectrogram, train=True))(
      {'params': jax.random.PRNGKey(0), 'mask': jax.random.PRNGKey(1)})
  return model, variables, image, spectrogram


@functools.lru_cache(maxsize=None)
def _compiled(model, train):
  """Jitted forward passes, compiled once per model: (train-mode apply, localize)."""
  forward = jax.jit(lambda v, i, s, k: model.apply(
      v, i, s, train=train, rngs={'mask': k}, mutable=['batch_stats']))
  localize = jax.jit(lambda v, i, s: model.apply(v, i, s, method=model.localize))
  return forward, localize


def _forward(model, variables, image, spectrogram, train, key=0):
  """Training-mode forward (train=False: no masking, running BN statistics)."""
  return _compiled(model, train)[0](variables, image, spectrogram, jax.random.PRNGKey(key))


def _localize(model, variables, image, spectrogram):
  return _compiled(model, False)[1](variables, image, spectrogram)


def test_training_forward_is_deterministic_given_the_mask_key(small_model):
  model, variables, image, spectrogram = small_model
  a, b, c = (_forward(model, variables, image, spectrogram, True, key)[0] for key in (5, 5, 6))
  np.testing.assert_array_equal(a['image_slots'], b['image_slots'])
  assert not np.allclose(a['image_slots'], c['image_slots'])


def test_eval_uses_running_statistics_and_no_masking(small_model):
  model, variables, image, spectrogram = small_model
  full = _localize(model, variables, image, spectrogram)
  alone = _localize(model, variables, image[:1], spectrogram[:1])  # ignores the batch
  np.testing.assert_allclose(full['heatmap'][:1], alone['heatmap'], rtol=1e-5, atol=1e-7)
  _, updates = _forward(model, variables, image, spectrogram, True)
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert any(not np.allclose(x, y) for x, y in zip(before, after))  # training updates them
  eval_a = _forward(model, variables, image, spectrogram, False, key=0)[0]
  eval_b = _forward(model, variables, image, spectrogram, False, key=1)[0]
  np.testing.assert_array_equal(eval_a['image_slots'], eval_b['image_slots'])  # no masking
  train_out = _forward(model, variables, image, spectrogram, True)[0]
  assert not np.allclose(train_out['image_slots'], eval_a['image_slots'])


def test_localize_maps_are_target_attention_and_iqr_mixes_them(small_model):
  model, variables, image, spectrogram = small_model
  out = _localize(model, variables, image, spectrogram)
  assert out['heatmap'].shape == (4, 4, 4) and out['image_embedding'].shape == (4, 16)
  np.testing.assert_allclose(np.asarray(out['heatmap']).sum((1, 2)), 1.0, rtol=1e-5)
  eval_out = _forward(model, variables, image, spectrogram, False)[0]
  # With infer_sharpening = 1 the heatmap is ca^{a,v} of the target slot (Sec. 3.5).
  np.testing.assert_allclose(out['heatmap'].reshape(4, -1), eval_out['ca_audio_image'][:, 0],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out['image_embedding'], eval_out['image_slots'][:, 0], rtol=1e-5)
  # The scores are Eq. 3's target-slot probabilities p (the off-target slot gets 1 - p):
  # Eq. 4 normalizes p into the target's map and 1 - p into the off-target's.
  for score, attention in (('heatmap_score', 'ca_audio_image'), ('image_prior_score', 'ia_image')):
    probability = np.asarray(out[score]).reshape(4, -1)
    assert np.all((probability >= 0) & (probability <= 1))
    for slot, p in ((0, probability), (1, 1 - probability)):
      np.testing.assert_allclose(eval_out[attention][:, slot], p / p.sum(1, keepdims=True),
                                 rtol=1e-4, atol=1e-6)
  refined = np.asarray(jsa.iqr(out['heatmap'], out['image_prior'], 0.6))

  def minmax(x):
    low = x.min((1, 2), keepdims=True)
    return (x - low) / (x.max((1, 2), keepdims=True) - low)
  expected = minmax(0.6 * minmax(np.asarray(out['heatmap']))
                    + 0.4 * minmax(np.asarray(out['image_prior'])))
  np.testing.assert_allclose(refined, expected, rtol=1e-5, atol=1e-6)


def test_infer_sharpening_sharpens_the_map(small_model):
  model, variables, image, spectrogram = small_model
  sharp = jsa.JSA(dim=16, width=4, mlp_dim=32, iters=2, stem_pool=False, infer_sharpening=10.0)
  base = _localize(model, variables, image, spectrogram)['heatmap']
  sharpened = _localize(sharp, variables, image, spectrogram)['heatmap']
  assert np.all(np.asarray(sharpened).max((1, 2)) >= np.asarray(base).max((1, 2)) - 1e-6)
  np.testing.assert_allclose(np.asarray(sharpened).sum((1, 2)), 1.0, rtol=1e-5)
