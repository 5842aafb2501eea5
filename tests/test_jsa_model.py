"""JSA model (Secs. 3.1-3.5): shapes, Eqs. 1-6 and 10 against NumPy, masking, train/eval."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc.models import jsa, slot_attention


def _np_layer_norm(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _np_dense(x, p):
  return x @ p['kernel'] + p.get('bias', 0.0)


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _np_gru(h, x, p):
  """PyTorch GRUCell equations; flax folds b_hr, b_hz into the input-side biases."""
  r = _sigmoid(_np_dense(x, p['ir']) + _np_dense(h, p['hr']))
  z = _sigmoid(_np_dense(x, p['iz']) + _np_dense(h, p['hz']))
  n = np.tanh(_np_dense(x, p['in']) + r * _np_dense(h, p['hn']))
  return (1 - z) * n + z * h


def _np_attention(queries, keys, scale, eps):
  """Eqs. 3-4: M = K Q^T / sqrt(d); softmax over slots (j); + eps; normalize over keys."""
  logits = np.einsum('bnd,bsd->bns', keys, queries) * scale  # [B, N, S]
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a = a / a.sum(-1, keepdims=True) + eps
  return np.transpose(a / a.sum(1, keepdims=True), (0, 2, 1))  # A_hat^T [B, S, N]


def _np_branch(params, initial, tokens, iters, eps):
  """One modality of JSA (Eqs. 1-6), written out in NumPy."""
  dim = tokens.shape[-1]
  normed = _np_layer_norm(tokens, params['norm_input'])
  keys, values = _np_dense(normed, params['to_k']), _np_dense(normed, params['to_v'])
  slots = np.broadcast_to(initial, (tokens.shape[0],) + initial.shape)
  for _ in range(iters):
    queries = _np_dense(_np_layer_norm(slots, params['norm_slots']), params['to_q'])
    weights = _np_attention(queries, keys, dim**-0.5, eps)
    slots = _np_gru(slots, np.einsum('bsn,bnd->bsd', weights, values), params['gru'])
    hidden = np.maximum(_np_dense(_np_layer_norm(slots, params['norm_pre_mlp']),
                                  params['mlp_in']), 0)
    slots = slots + _np_dense(hidden, params['mlp_out'])
  return slots, queries, keys


def test_slot_attention_weights_softmax_over_slots_then_mean_over_inputs():
  rng = np.random.default_rng(0)
  queries, keys = rng.normal(size=(2, 3, 8)), rng.normal(size=(2, 10, 8))
  got = np.asarray(slot_attention.slot_attention_weights(
      jnp.asarray(queries), jnp.asarray(keys), 0.3, 1e-8))
  np.testing.assert_allclose(got, _np_attention(queries, keys, 0.3, 1e-8), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got.sum(axis=2), 1.0, rtol=1e-6)  # weighted mean over inputs
  # Before the renormalization, each input's weights sum to 1 over the slots: softmax
  # over the SLOT axis (competition), not over the inputs.
  raw = jax.nn.softmax(jnp.einsum('bsd,bnd->bsn', queries, keys) * 0.3, axis=1)
  np.testing.assert_allclose(np.asarray(raw).sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize('shared', [True, False])
def test_joint_slot_attention_matches_numpy_eqs_1_to_6(shared):
  module = slot_attention.JointSlotAttention(dim=8, mlp_dim=16, iters=3, mask_ratio=0.0,
                                             shared_slots=shared)
  rng = np.random.default_rng(1)
  image_tokens, audio_tokens = rng.normal(size=(2, 6, 8)), rng.normal(size=(2, 4, 8))
  variables = module.init(jax.random.PRNGKey(0), image_tokens, audio_tokens, train=False)
  out = module.apply(variables, image_tokens, audio_tokens, train=False)
  params = jax.tree_util.tree_map(np.asarray, variables['params'])
  init_image = params['initial_slots'] if shared else params['initial_slots_image']
  init_audio = params['initial_slots'] if shared else params['initial_slots_audio']
  for name, tokens, initial in (('image', image_tokens, init_image),
                                ('audio', audio_tokens, init_audio)):
    slots, queries, keys = _np_branch(params[name], initial, tokens, 3, 1e-8)
    np.testing.assert_allclose(out[f'{name}_slots'], slots, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(out[f'{name}_queries'], queries, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(out[f'{name}_keys'], keys, rtol=2e-4, atol=2e-5)
  if shared:
    assert 'initial_slots_image' not in params
  else:
    assert not np.allclose(init_image, init_audio)


def test_masking_replaces_about_mask_ratio_of_tokens_by_the_mask_token():
  module = slot_attention.JointSlotAttention(dim=4, mlp_dim=8, mask_ratio=0.1)
  tokens = jnp.ones((64, 100, 4))
  variables = module.init({'params': jax.random.PRNGKey(0), 'mask': jax.random.PRNGKey(1)},
                          tokens, tokens[:, :10], train=True)
  mask_token = variables['params']['mask_token_image']

  def masked(key):
    return module.apply(variables, tokens, mask_token, rngs={'mask': key},
                        method=lambda m, t, tok: m._mask(t, tok))
  out = np.asarray(masked(jax.random.PRNGKey(2)))
  is_mask = np.all(out == np.asarray(mask_token), axis=-1)
  untouched = np.all(out == 1.0, axis=-1)
  assert np.all(is_mask | untouched)
  assert abs(is_mask.mean() - 0.1) < 0.01  # 6400 tokens: std of the fraction ~0.004
  assert abs(is_mask.mean(1) - 0.1).max() < 0.15  # drawn per token, not per batch
  np.testing.assert_array_equal(out, masked(jax.random.PRNGKey(2)))
  assert not np.array_equal(out, masked(jax.random.PRNGKey(3)))


def test_decoder_is_a_spatial_broadcast_with_alpha_softmax_over_slots():
  decoder = slot_attention.SlotDecoder(out_dim=5, hidden_layers=2)
  slots = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 6)), jnp.float32)
  variables = decoder.init(jax.random.PRNGKey(0), slots, (2, 3))
  recon, alpha = decoder.apply(variables, slots, (2, 3))
  assert recon.shape == (3, 6, 5) and alpha.shape == (3, 2, 6)
  np.testing.assert_allclose(np.asarray(alpha).sum(1), 1.0, rtol=1e-6)
  p = jax.tree_util.tree_map(np.asarray, variables['params'])
  # position (row y, col x) gets [col_embedding[x], row_embedding[y]], row-major order.
  position = np.stack([np.concatenate([p['col_embedding'][x], p['row_embedding'][y]])
                       for y in range(2) for x in range(3)])
  x = np.asarray(slots)[:, :, None, :] + position
  for layer in range(2):
    x = np.maximum(_np_dense(x, p[f'hidden_{layer}']), 0)
  x = _np_dense(x, p['output'])
  logits = x[..., -1]
  weights = np.exp(logits - logits.max(1, keepdims=True))
  weights /= weights.sum(1, keepdims=True)
  np.testing.assert_allclose(alpha, weights, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(recon, np.einsum('bsnd,bsn->bnd', x[..., :-1], weights),
                             rtol=1e-4, atol=1e-5)


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
