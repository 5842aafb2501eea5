"""The tri-map contrastive loss of LVS (Chen et al., "Localizing Visual Sounds the Hard
Way", CVPR 2021), a pure function of the audio-visual similarity maps.

NoPrior's AVC loss (its Eq. 3) "follows LVS", and its release computes exactly this loss
(`model_base.py`, `NoPriorVSSLModel.lvs` with `--trimap 1`); the LVS method
(`methods.py`, 'lvs') trains with it too.

Paper and code differ; avloc follows the code. The paper's loss has one negative term per
image, the background mean plus the (1 / hw) sums of the maps with every other clip's
audio, and no temperature (the form NoPrior's Eq. 3 reprints, `noprior.avc_loss_printed`).
The LVS release (`model.py`, `AVENet.forward`) puts each other clip in its own logit (the
positive-region-weighted mean of that map) and the hard negative in another, all divided
by 0.07: `tri_map_logits`.
"""

import jax
import jax.numpy as jnp

from avloc.models.similarity import own_maps


def soft_region(similarity, threshold, sharpness):
  """sigmoid((S - threshold) / sharpness): a differentiable mask of the cells whose
  similarity exceeds `threshold` (LVS Eq. 3, NoPrior Eq. 2), any shape."""
  return jax.nn.sigmoid((similarity - threshold) / sharpness)


def _masked_mean(values, weights):
  """Weighted mean over the last axis (cells)."""
  return jnp.sum(values * weights, axis=-1) / jnp.sum(weights, axis=-1)


def tri_map_logits(similarity, epsilon, epsilon_negative, tau, temperature):
  """The logits of the LVS loss, [B, B + 1], target column 0.

  similarity [B, B, N]: S^{n->m}, the cosine between image n's cells and audio m's
  embedding. With the soft positive region P = sigmoid((S - epsilon) / tau) and the soft
  negative region Q = 1 - sigmoid((S - epsilon_negative) / tau) (the tri-map: cells
  between the two thresholds are neither), row n holds
    column 0: the P-weighted mean of S^{n->n} (the positive),
    columns 1..B: for every other clip m, the P-weighted mean of S^{n->m} (cross-clip
      negatives); the own clip's column is -inf,
    column B + 1: the Q-weighted mean of S^{n->n} (the image's own background, the
      hard negative),
  all divided by `temperature`. The releases drop the own clip from the cross-clip
  columns by multiplying it with -99 (LVS `model.py`, NoPrior `model_base.py`,
  `self.mask = 1 - 100 * eye`), which excludes it exactly when S >= 0 (post-ReLU
  features); -inf excludes it for any sign.
  """
  batch = similarity.shape[0]
  own = own_maps(similarity)  # [B, N]
  positive = _masked_mean(own, soft_region(own, epsilon, tau))
  negative = _masked_mean(own, 1.0 - soft_region(own, epsilon_negative, tau))
  cross = _masked_mean(similarity, soft_region(similarity, epsilon, tau))  # [B, B]
  cross = jnp.where(jnp.eye(batch, dtype=bool), -jnp.inf, cross)
  return jnp.concatenate([positive[:, None], cross, negative[:, None]], axis=1) / temperature


def lvs_loss(similarity, epsilon, epsilon_negative, tau, temperature):
  """Cross-entropy of `tri_map_logits` with target 0 (the positive), batch mean. A
  scalar."""
  logits = tri_map_logits(similarity, epsilon, epsilon_negative, tau, temperature)
  return -jnp.mean(jax.nn.log_softmax(logits, axis=1)[:, 0])
