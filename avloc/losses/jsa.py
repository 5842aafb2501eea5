"""JSA training objectives (JSA Sec. 3.3-3.4, Eqs. 7-13), pure functions of arrays.

Squared errors (Eqs. 8 and 10) are averaged over batch and positions, as the official
release does with `nn.MSELoss()`; the paper's weights (lambda_match = 100,
lambda_recon = 0.1) were tuned for these means, not for sums.
"""

import jax
import jax.numpy as jnp
import ml_collections

from avloc.losses import contrastive
from avloc.models.similarity import l2_normalize


def _nearest_neighbours(embeddings, k):
  """[B, D] -> [B, B] bool, row i marks N_k(i) by cosine similarity.

  Each sample is its own nearest neighbour and counts among its k (as in the official
  release); ties are broken towards the lower index (`jax.lax.top_k`).
  """
  normed = l2_normalize(embeddings)
  similarity = normed @ normed.T
  _, indices = jax.lax.top_k(similarity, k)
  batch = embeddings.shape[0]
  rows = jnp.arange(batch)[:, None]
  return jnp.zeros((batch, batch), bool).at[rows, indices].set(True)


def k_reciprocal_false_negatives(image_targets, audio_targets, k: int):
  """Eqs. 12-13: predicted false negatives R_k(i) = R_k^v(i) ∩ R_k^a(i).

  image_targets, audio_targets [B, D] (the whole global batch) -> [B, B] bool, True at
  (i, j) when j is a k-reciprocal nearest neighbour of i by both the image and the audio
  target slots. The diagonal (the positive pair) is never marked. k is clipped to B.
  """
  batch = image_targets.shape[0]
  k = min(k, batch)
  image_nn = _nearest_neighbours(jax.lax.stop_gradient(image_targets), k)
  audio_nn = _nearest_neighbours(jax.lax.stop_gradient(audio_targets), k)
  reciprocal = (image_nn & image_nn.T) & (audio_nn & audio_nn.T)
  return reciprocal & ~jnp.eye(batch, dtype=bool)


def info_nce(image_targets, audio_targets, tau, exclude=None):
  """Eq. 7: symmetric InfoNCE on L2-normalized target slots.

  image_targets, audio_targets [B, D]; exclude [B, B] bool marks pairs (image i,
  audio j) that are not used as negatives (Sec. 3.4). Returns a scalar.
  """
  logits = l2_normalize(image_targets) @ l2_normalize(audio_targets).T / tau
  if exclude is not None:
    logits = jnp.where(exclude, -jnp.inf, logits)
  return contrastive.symmetric_cross_entropy(logits)


def attention_matching(ca_audio_image, ia_image, ca_image_audio, ia_audio, num_target=1):
  """Eq. 8: ||ca^{a,v} - sg(ia^{v,v})||^2 + ||ca^{v,a} - sg(ia^{a,a})||^2 (means).

  ca_audio_image, ia_image [B, S, N]; ca_image_audio, ia_audio [B, S, T]; the target
  columns (first `num_target` slots) are matched.
  """
  def mse(prediction, target):
    target = jax.lax.stop_gradient(target[:, :num_target])
    return jnp.mean(jnp.square(prediction[:, :num_target] - target))

  return mse(ca_audio_image, ia_image) + mse(ca_image_audio, ia_audio)


def _pairwise_divergence(slots):
  """Mean over samples and ordered slot pairs (i != j) of max(0, cos(s_i, s_j))."""
  normed = l2_normalize(slots)
  cosine = jnp.einsum('bid,bjd->bij', normed, normed)
  num_slots = slots.shape[1]
  off_diagonal = ~jnp.eye(num_slots, dtype=bool)
  return jnp.sum(jnp.where(off_diagonal, jax.nn.relu(cosine), 0.0)) / (
      slots.shape[0] * num_slots * (num_slots - 1))


def slot_divergence(image_slots, audio_slots):
  """Eq. 9: max(0, cos(p^v, r^v)) + max(0, cos(p^a, r^a)), batch mean.

  image_slots, audio_slots [B, S, D]. With more than two slots every pair counts, as in
  the official release.
  """
  return _pairwise_divergence(image_slots) + _pairwise_divergence(audio_slots)


def slot_reconstruction(recon_image, image_tokens, recon_audio, audio_tokens):
  """Eq. 10: ||v - g_v(S^v)||^2 + ||a - g_a(S^a)||^2 (means) against sg(encoder features)."""
  return (jnp.mean(jnp.square(recon_image - jax.lax.stop_gradient(image_tokens)))
          + jnp.mean(jnp.square(recon_audio - jax.lax.stop_gradient(audio_tokens))))


def target_embeddings(slots, num_target):
  """[B, S, D] -> [B, D]: the target slot, or the mean of several target slots."""
  return jnp.mean(slots[:, :num_target], axis=1)


def jsa_loss(outputs: dict, config: ml_collections.ConfigDict, num_target: int = 1):
  """Eq. 11: L_ctr + lambda_match L_match + lambda_div L_div + lambda_recon L_recon.

  outputs: `JSA.__call__` on the global batch. config: the `loss` block (tau, k, the
  lambdas and the switches of the Table 5 ablations). Returns (total, metrics).
  """
  image_targets = target_embeddings(outputs['image_slots'], num_target)
  audio_targets = target_embeddings(outputs['audio_slots'], num_target)
  exclude = None
  metrics = {}
  if config.remove_false_negatives:
    exclude = k_reciprocal_false_negatives(image_targets, audio_targets, config.k)
    metrics['false_negatives_per_sample'] = jnp.mean(jnp.sum(exclude, axis=1))
  terms = {'contrastive': info_nce(image_targets, audio_targets, config.tau, exclude)}
  weights = {'contrastive': 1.0}
  if config.use_match:
    terms['match'] = attention_matching(
        outputs['ca_audio_image'], outputs['ia_image'],
        outputs['ca_image_audio'], outputs['ia_audio'], num_target)
    weights['match'] = config.lambda_match
  if config.use_div:
    terms['div'] = slot_divergence(outputs['image_slots'], outputs['audio_slots'])
    weights['div'] = config.lambda_div
  if config.use_recon:
    terms['recon'] = slot_reconstruction(
        outputs['recon_image'], outputs['image_tokens'],
        outputs['recon_audio'], outputs['audio_tokens'])
    weights['recon'] = config.lambda_recon
  total = sum(weights[name] * value for name, value in terms.items())
  metrics.update({f'loss_{name}': value for name, value in terms.items()})
  metrics['loss'] = total
  return total, metrics
