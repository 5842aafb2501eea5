"""NoPrior training objectives (NoPrior Secs. 3.2, 3.5, 3.6; Eqs. 3-5), pure functions.

The losses see the global batch: the cross-clip negatives of Eq. 3 pair every image with
every other clip's audio.
"""

import jax
import jax.numpy as jnp
import ml_collections

from avloc.models.noprior import object_roots

# Guards the mask-weighted means of Eq. 3 and the cosines of Eq. 4.
_EPS = 1e-12


def _cosine(a, b):
  """Sim of Eq. 1 over the last axis; finite gradients where a vector is zero (the
  positives of slots that name no object)."""
  norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
  return jnp.sum(a * b, axis=-1) * jax.lax.rsqrt(jnp.maximum(norms, _EPS**2))


def avc_loss(similarity, mask, temperature=1.0):
  """Eq. 3, the audio-visual contrastive loss, as printed.

  similarity [B, B, N]: S_v^{n->m} (image n, audio m, raw cosine); mask [B, N]: M^n.
    Pos^n = <M^n, S^{n->n}> / |M^n|,
    Neg^n = <1 - M^n, S^{n->n}> / |1 - M^n| + (1 / hw) sum_{m != n} <1, S^{n->m}>,
    L_avc = -1/B sum_n log(e^Pos / (e^Pos + e^Neg)) = mean_n softplus(Neg^n - Pos^n),
  |.| the sum of the map. The cross-clip term is a sum over the B - 1 other clips, as
  printed (LVS instead puts each clip in the softmax denominator). `temperature` divides
  Pos and Neg (1 is Eq. 3; LVS and the release use 0.07). Returns a scalar.
  """
  batch = similarity.shape[0]
  own = jnp.diagonal(similarity).T  # [B, N]
  positive = jnp.sum(mask * own, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), _EPS)
  background = 1.0 - mask
  negative = (jnp.sum(background * own, axis=1)
              / jnp.maximum(jnp.sum(background, axis=1), _EPS))
  means = jnp.mean(similarity, axis=2)  # (1 / hw) <1, S^{n->m}> [B, B]
  cross = jnp.sum(jnp.where(jnp.eye(batch, dtype=bool), 0.0, means), axis=1)
  return jnp.mean(jax.nn.softplus((negative + cross - positive) / temperature))


def osc_loss(bank, valid, labels, background):
  """Eq. 4, the object similarity-aware clustering loss.

  bank [B, T, D]: E_p^t; valid [B, T]; labels [B, T] (Sec. 3.4: object = its first
  slot, -1 background / empty); background [B, D]: E_n. For each object k of clip b:
    anchor A_k: its first entry, found at the highest remaining S_v (the paper's "most
      representative cell"; also the release's union-find root);
    P_k: the object's entries, anchor included; C_pk = Sim(A_k, mean(P_k));
    N_k: the clip's other valid entries (other objects and tau1-background cells) and
      E_n; C_nk = Sim(A_k, mean(N_k));
    L_k = (1 - C_pk) + C_nk;   L_osc = 1/B sum_b sum_k L_k / K_b
  (a clip without objects adds 0). Sim of a set is the cosine to its mean vector, as
  in the release. Returns (loss, objects per clip K_b [B]).
  """
  roots = object_roots(labels)  # objects indexed by their first slot
  slots = jnp.arange(labels.shape[1])
  members = labels[:, None, :] == slots[None, :, None]  # [B, K, T]
  others = valid[:, None, :] & ~members
  # A cosine to a mean is the cosine to the sum: the counts drop out.
  positive = jnp.einsum('bkt,btd->bkd', members.astype(bank.dtype), bank)
  negative = jnp.einsum('bkt,btd->bkd', others.astype(bank.dtype), bank) + background[:, None]
  c_positive = _cosine(bank, positive)
  c_negative = _cosine(bank, negative)
  per_object = jnp.where(roots, 1.0 - c_positive + c_negative, 0.0)
  count = jnp.sum(roots, axis=1)
  return jnp.mean(jnp.sum(per_object, axis=1) / jnp.maximum(count, 1)), count


def noprior_loss(outputs: dict, config: ml_collections.ConfigDict):
  """Eq. 5: lambda_1 L_avc + lambda_2 L_osc.

  outputs: `NoPrior.__call__` on the global batch. config: the `loss` block
  (lambda_avc, lambda_osc, temperature). Returns (total, metrics).
  """
  avc = avc_loss(outputs['similarity'], outputs['mask'], config.temperature)
  osc, count = osc_loss(outputs['bank'], outputs['bank_valid'], outputs['object_labels'],
                        outputs['background'])
  total = config.lambda_avc * avc + config.lambda_osc * osc
  return total, {
      'loss': total, 'loss_avc': avc, 'loss_osc': osc,
      'objects_per_sample': jnp.mean(count.astype(jnp.float32)),
      'ioi_iterations': jnp.mean(outputs['iterations'].astype(jnp.float32)),
      'background_cells': jnp.mean(jnp.sum(
          outputs['bank_valid'] & (outputs['object_labels'] < 0), axis=1).astype(jnp.float32)),
  }
