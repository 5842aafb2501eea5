"""JSA losses (Eqs. 7-13) against plain NumPy transcriptions of the equations."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avloc.losses import jsa as losses


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x, axis):
  x = x - np.max(x, axis=axis, keepdims=True)
  return x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


def _reference_info_nce(image, audio, tau, exclude):
  """Eq. 7 term by term: -1/B sum_i [log s(i,i)/sum_j s(i,j) + log s(i,i)/sum_j s(j,i)]."""
  cosine = _normalize(image) @ _normalize(audio).T
  batch = len(image)
  total = 0.0
  for i in range(batch):
    row = [np.exp(cosine[i, j] / tau) for j in range(batch) if j == i or not exclude[i, j]]
    col = [np.exp(cosine[j, i] / tau) for j in range(batch) if j == i or not exclude[j, i]]
    positive = np.exp(cosine[i, i] / tau)
    total += np.log(positive / np.sum(row)) + np.log(positive / np.sum(col))
  return -total / batch


def _reference_knn(embeddings, k):
  """Brute force N_k(i): sort by (-cosine, index), keep the first k."""
  normed = _normalize(embeddings.astype(np.float64))
  cosine = normed @ normed.T
  batch = len(embeddings)
  neighbours = np.zeros((batch, batch), bool)
  for i in range(batch):
    order = sorted(range(batch), key=lambda j: (-round(cosine[i, j], 9), j))
    neighbours[i, order[:min(k, batch)]] = True
  return neighbours


def _reference_false_negatives(image, audio, k):
  """Eqs. 12-13: j in R_k(i) iff j, i mutual k-NN by image AND by audio, j != i."""
  nn_image, nn_audio = _reference_knn(image, k), _reference_knn(audio, k)
  batch = len(image)
  result = np.zeros((batch, batch), bool)
  for i in range(batch):
    for j in range(batch):
      result[i, j] = (i != j and nn_image[i, j] and nn_image[j, i]
                      and nn_audio[i, j] and nn_audio[j, i])
  return result


@pytest.mark.parametrize('use_exclude', [False, True])
def test_info_nce_matches_reference(use_exclude):
  rng = np.random.default_rng(0)
  image, audio = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
  exclude = rng.random((6, 6)) < 0.3 if use_exclude else np.zeros((6, 6), bool)
  np.fill_diagonal(exclude, False)
  got = losses.info_nce(jnp.asarray(image), jnp.asarray(audio), 0.5,
                        jnp.asarray(exclude) if use_exclude else None)
  np.testing.assert_allclose(got, _reference_info_nce(image, audio, 0.5, exclude), rtol=1e-5)


def test_info_nce_with_every_negative_excluded_is_zero_with_finite_gradients():
  rng = np.random.default_rng(1)
  image, audio = jnp.asarray(rng.normal(size=(4, 5))), jnp.asarray(rng.normal(size=(4, 5)))
  exclude = jnp.asarray(~np.eye(4, dtype=bool))  # only the positive pairs remain
  loss, grads = jax.value_and_grad(losses.info_nce, argnums=(0, 1))(image, audio, 0.1, exclude)
  assert abs(float(loss)) < 1e-6
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.abs(np.asarray(grad)).max() < 1e-6


@pytest.mark.parametrize('batch,k', [(10, 3), (10, 1), (7, 7), (5, 20)])
def test_k_reciprocal_matches_brute_force(batch, k):
  rng = np.random.default_rng(batch * 100 + k)
  image, audio = rng.normal(size=(batch, 6)), rng.normal(size=(batch, 6))
  got = losses.k_reciprocal_false_negatives(jnp.asarray(image), jnp.asarray(audio), k)
  np.testing.assert_array_equal(got, _reference_false_negatives(image, audio, k))


def test_k_reciprocal_ties_break_towards_lower_index():
  # Integer vectors with exact duplicates: samples 0, 1, 2 are identical in both
  # modalities, 3 and 4 are identical, 5 stands alone. With k = 2 each of 0, 1, 2 keeps
  # {0, 1} (lowest indices among exact ties), so 2 is nobody's neighbour but its own.
  base = np.array([[3, 0, 1], [3, 0, 1], [3, 0, 1], [0, 2, 1], [0, 2, 1], [1, 1, -4]], float)
  got = np.asarray(losses.k_reciprocal_false_negatives(
      jnp.asarray(base), jnp.asarray(base * 2.0), 2))
  np.testing.assert_array_equal(got, _reference_false_negatives(base, base * 2.0, 2))
  assert got[0, 1] and got[1, 0] and not got[0, 2] and not got[2, 0]
  assert got[3, 4] and got[4, 3] and not got[5].any()


def test_k_reciprocal_with_k_at_least_batch_marks_every_other_pair():
  rng = np.random.default_rng(3)
  got = losses.k_reciprocal_false_negatives(
      jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(4, 3))), 50)
  np.testing.assert_array_equal(got, ~np.eye(4, dtype=bool))


def test_k_reciprocal_needs_both_modalities():
  rng = np.random.default_rng(4)
  image = rng.normal(size=(8, 4))
  audio = rng.normal(size=(8, 4))
  image_only = losses.k_reciprocal_false_negatives(jnp.asarray(image), jnp.asarray(image), 3)
  both = losses.k_reciprocal_false_negatives(jnp.asarray(image), jnp.asarray(audio), 3)
  assert np.all(np.asarray(both) <= np.asarray(image_only))
  assert np.asarray(image_only).sum() > np.asarray(both).sum()


def test_attention_matching_is_mse_with_stop_gradient_on_intra_modal():
  rng = np.random.default_rng(5)
  ca_v, ia_v = rng.random((3, 2, 49)), rng.random((3, 2, 49))
  ca_a, ia_a = rng.random((3, 2, 16)), rng.random((3, 2, 16))
  expected = np.mean((ca_v[:, 0] - ia_v[:, 0]) ** 2) + np.mean((ca_a[:, 0] - ia_a[:, 0]) ** 2)
  args = [jnp.asarray(x) for x in (ca_v, ia_v, ca_a, ia_a)]
  np.testing.assert_allclose(losses.attention_matching(*args), expected, rtol=1e-6)
  grads = jax.grad(lambda *a: losses.attention_matching(*a), argnums=(0, 1, 2, 3))(*args)
  assert np.all(np.asarray(grads[1]) == 0) and np.all(np.asarray(grads[3]) == 0)
  assert np.abs(np.asarray(grads[0][:, 0])).sum() > 0
  assert np.all(np.asarray(grads[0][:, 1]) == 0)  # off-target column is not matched


def test_slot_divergence_matches_eq9_for_two_slots():
  rng = np.random.default_rng(6)
  image, audio = rng.normal(size=(5, 2, 7)), rng.normal(size=(5, 2, 7))
  cos = lambda s: np.sum(_normalize(s[:, 0]) * _normalize(s[:, 1]), -1)  # noqa: E731
  expected = np.mean(np.maximum(0, cos(image))) + np.mean(np.maximum(0, cos(audio)))
  np.testing.assert_allclose(
      losses.slot_divergence(jnp.asarray(image), jnp.asarray(audio)), expected, rtol=1e-5)


def test_slot_divergence_counts_every_pair_for_more_slots():
  rng = np.random.default_rng(7)
  slots = rng.normal(size=(2, 4, 5))
  normed = _normalize(slots)
  pairs = [max(0.0, float(normed[b, i] @ normed[b, j]))
           for b in range(2) for i in range(4) for j in range(4) if i != j]
  got = losses.slot_divergence(jnp.asarray(slots), jnp.zeros((2, 4, 5)) + 1.0)
  # Identical audio slots have cosine 1 for every pair -> contributes exactly 1.
  np.testing.assert_allclose(got, np.mean(pairs) + 1.0, rtol=1e-5)


def test_slot_reconstruction_targets_are_stop_gradient():
  rng = np.random.default_rng(8)
  args = [jnp.asarray(rng.normal(size=s)) for s in ((2, 9, 4), (2, 9, 4), (2, 3, 4), (2, 3, 4))]
  expected = (np.mean((args[0] - args[1]) ** 2) + np.mean((args[2] - args[3]) ** 2))
  np.testing.assert_allclose(losses.slot_reconstruction(*args), expected, rtol=1e-6)
  grads = jax.grad(losses.slot_reconstruction, argnums=(0, 1, 2, 3))(*args)
  assert np.all(np.asarray(grads[1]) == 0) and np.all(np.asarray(grads[3]) == 0)
  np.testing.assert_allclose(grads[0], 2 * (args[0] - args[1]) / args[0].size, rtol=1e-5)


def _loss_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      tau=0.1, k=2, lambda_match=100.0, lambda_div=0.1, lambda_recon=0.1, use_match=True,
      use_div=True, use_recon=True, remove_false_negatives=True))
  config.update(overrides)
  return config


def _fake_outputs(seed=9, batch=6):
  rng = np.random.default_rng(seed)
  shapes = dict(image_tokens=(batch, 4, 3), audio_tokens=(batch, 2, 3),
                image_slots=(batch, 2, 3), audio_slots=(batch, 2, 3),
                ia_image=(batch, 2, 4), ca_audio_image=(batch, 2, 4),
                ia_audio=(batch, 2, 2), ca_image_audio=(batch, 2, 2),
                recon_image=(batch, 4, 3), recon_audio=(batch, 2, 3))
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def test_total_loss_is_eq11_weighted_sum_and_switches_drop_terms():
  outputs = _fake_outputs()
  total, metrics = losses.jsa_loss(outputs, _loss_config())
  expected = (metrics['loss_contrastive'] + 100.0 * metrics['loss_match']
              + 0.1 * metrics['loss_div'] + 0.1 * metrics['loss_recon'])
  np.testing.assert_allclose(total, expected, rtol=1e-6)
  only_ctr, metrics = losses.jsa_loss(outputs, _loss_config(
      use_match=False, use_div=False, use_recon=False, remove_false_negatives=False))
  assert set(metrics) == {'loss', 'loss_contrastive'}
  image_targets = outputs['image_slots'][:, 0]
  audio_targets = outputs['audio_slots'][:, 0]
  np.testing.assert_allclose(
      only_ctr, losses.info_nce(image_targets, audio_targets, 0.1), rtol=1e-6)


def test_false_negative_removal_changes_the_contrastive_term():
  outputs = _fake_outputs(batch=8)
  slots = outputs['image_slots']
  # Make samples 0 and 1 near-duplicates in both modalities so they are k-reciprocal.
  outputs['image_slots'] = slots.at[1].set(slots[0] + 1e-3)
  outputs['audio_slots'] = outputs['audio_slots'].at[1].set(outputs['audio_slots'][0] + 1e-3)
  with_removal, metrics = losses.jsa_loss(outputs, _loss_config(k=2))
  without, _ = losses.jsa_loss(outputs, _loss_config(k=2, remove_false_negatives=False))
  assert metrics['false_negatives_per_sample'] > 0
  assert with_removal < without
