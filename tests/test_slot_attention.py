"""Joint slot attention and the slot decoders (models/slot_attention.py; JSA Sec. 3.2,
Eqs. 1-6 and 10) against NumPy transcriptions of the equations, and the token masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc.models import slot_attention


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
