"""NoPrior training objectives (NoPrior Secs. 3.2, 3.5, 3.6; Eqs. 3-5), pure functions.

The losses see the global batch: the cross-clip negatives of Eq. 3 pair every image with
every other clip's audio.
"""

import jax
import jax.numpy as jnp
import ml_collections

from avloc.losses import lvs
from avloc.models.noprior import object_roots
from avloc.models.similarity import own_maps

# Guards the mask-weighted means of Eq. 3 and the cosines of Eq. 4.
_EPS = 1e-12


def _cosine(a, b):
  """Sim of Eq. 1 over the last axis; finite gradients where a vector is zero (the
  positives of slots that name no object)."""
  norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
  return jnp.sum(a * b, axis=-1) * jax.lax.rsqrt(jnp.maximum(norms, _EPS**2))


def avc_loss_printed(similarity, mask, temperature=1.0):
  """Eq. 3, the audio-visual contrastive loss, as printed (`loss.avc_form='printed'`).

  similarity [B, B, N]: S_v^{n->m} (image n, audio m, raw cosine); mask [B, N]: M^n.
    Pos^n = <M^n, S^{n->n}> / |M^n|,
    Neg^n = <1 - M^n, S^{n->n}> / |1 - M^n| + (1 / hw) sum_{m != n} <1, S^{n->m}>,
    L_avc = -1/B sum_n log(e^Pos / (e^Pos + e^Neg)) = mean_n softplus(Neg^n - Pos^n),
  |.| the sum of the map. The cross-clip term is a sum over the B - 1 other clips, as
  printed. `temperature` divides Pos and Neg (1 is Eq. 3). Returns a scalar.

  Read literally this collapses: one summed negative is pushed down by making every
  cross-clip similarity very negative, which features of either sign allow (measured:
  L_avc ~1e-4 within 100 steps). The default is the release's form, `avc_loss`.
  """
  batch = similarity.shape[0]
  own = own_maps(similarity)  # [B, N]
  positive = jnp.sum(mask * own, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), _EPS)
  background = 1.0 - mask
  negative = (jnp.sum(background * own, axis=1)
              / jnp.maximum(jnp.sum(background, axis=1), _EPS))
  means = jnp.mean(similarity, axis=2)  # (1 / hw) <1, S^{n->m}> [B, B]
  cross = jnp.sum(jnp.where(jnp.eye(batch, dtype=bool), 0.0, means), axis=1)
  return jnp.mean(jax.nn.softplus((negative + cross - positive) / temperature))


def avc_loss(similarity, model_config, loss_config):
  """Eq. 3 as the release computes it (`loss.avc_form='lvs'`, the default).

  NoPrior says its AVC loss follows LVS, and its release (`model_base.py`,
  `NoPriorVSSLModel.lvs`, with `--trimap 1 --logit_temperature 0.07`) computes the LVS
  loss: a softmax over [Pos^n, one term per other clip m (the Pos-weighted mean of
  S^{n->m}), Neg^n] / 0.07, where Pos uses M^n of Eq. 2 (alpha, omega) and Neg the
  tri-map background below alpha - `negative_margin` (0.65 - 0.25 = LVS's 0.4).
  similarity [B, B, N]; returns a scalar.
  """
  return lvs.lvs_loss(
      similarity, epsilon=model_config.mask_alpha,
      epsilon_negative=model_config.mask_alpha - loss_config.negative_margin,
      tau=model_config.mask_omega, temperature=loss_config.temperature)


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

  outputs: `NoPrior.__call__` on the global batch. config: the run's config (the `loss`
  block: avc_form, temperature, negative_margin, the lambdas; Eq. 2's alpha and omega
  from the `model` block, which the model's E_n uses too). Returns (total, metrics).
  """
  loss = config.loss
  if loss.avc_form == 'lvs':
    avc = avc_loss(outputs['similarity'], config.model, loss)
  else:
    avc = avc_loss_printed(outputs['similarity'], outputs['mask'], loss.temperature)
  osc, count = osc_loss(outputs['bank'], outputs['bank_valid'], outputs['object_labels'],
                        outputs['background'])
  total = loss.lambda_avc * avc + loss.lambda_osc * osc
  return total, {
      'loss': total, 'loss_avc': avc, 'loss_osc': osc,
      'objects_per_sample': jnp.mean(count.astype(jnp.float32)),
      'ioi_iterations': jnp.mean(outputs['iterations'].astype(jnp.float32)),
      'background_cells': jnp.mean(jnp.sum(
          outputs['bank_valid'] & (outputs['object_labels'] < 0), axis=1).astype(jnp.float32)),
  }
