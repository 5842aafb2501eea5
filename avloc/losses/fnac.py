"""FNAC's training objective (Sun et al., CVPR 2023): EZ-VSL's loss plus three L1 terms
that pull the cross-modal score distribution towards intra-modal ones. Pure functions.

As the release computes it (`model.py`, `FNAC.calculate_loss`; weights and warm-up from
`train.py` and `train_*.sh`), for the global batch with normalized image cells v_n [N,
D], audio a_n [D] and tau:
  S [B, B]      = max_k <v_n,k, a_m> / tau            (EZ-VSL's logits, `logits`)
  A^a [B, B]    = <a_n, a_m> / tau                     (`aud_attn`)
  A^v [B, B]    = <mean_k v_n,k, mean_k v_m,k> / tau   (`img_attn`: the cell mean, not
                                                        renormalized)
  A^f [B, B]    = <f_n, f_m> / tau,  f_n = mean_k [l_n,k > 0.6] v_n,k  (`frg_attn`),
                  l_n = the min-max normalized own map <v_n,k, a_n> / tau with +1e-5 in
                  the denominator (`loc_map`): the mean runs over all N cells, the ones
                  at or below the threshold counting as zeros; the hard mask passes no
                  gradient.
  fns_audio = L1(softmax_row A^a, softmax_row S)       (FNS-1, `fnac_loss1`)
  tne       = L1(softmax_row A^a, softmax_row A^f)     (`fnac_loss2`, "TNS" in the code)
  fns_image = L1(softmax_row A^v, softmax_row S)       (FNS-2, `fnac_loss3`)
L1 is the mean absolute difference over the B x B entries (`F.l1_loss`), and every
argument carries gradient: neither side is detached. The total is EZ-VSL's loss, plus
lambda_1 fns_audio + lambda_2 tne + lambda_3 fns_image (100 each) from epoch
`warmup_epochs` on (5 in the train scripts: `if epoch < args.warmup: loss = loss[0]`).
"""

import jax
import jax.numpy as jnp

from avloc.losses import ezvsl
from avloc.models import similarity as similarity_lib

# The release's `loc_map` denominator guard (on tau-scaled maps).
_LOC_MAP_EPS = 1e-5


def foreground_embeddings(cells, similarity, tau, threshold):
  """f_n [B, D]: the mean over image n's N cells of the cells whose min-max normalized
  own score exceeds `threshold` (others count as zeros). cells [B, N, D], similarity
  [B, B, N]."""
  own = similarity_lib.own_maps(similarity) / tau  # [B, N], the release's loc_map input
  low = jnp.min(own, axis=1, keepdims=True)
  high = jnp.max(own, axis=1, keepdims=True)
  scaled = (own - low) / (high - low + _LOC_MAP_EPS)
  mask = jax.lax.stop_gradient((scaled > threshold).astype(cells.dtype))
  return jnp.mean(cells * mask[..., None], axis=1)


def _l1_of_softmaxes(a, b):
  return jnp.mean(jnp.abs(jax.nn.softmax(a, axis=1) - jax.nn.softmax(b, axis=1)))


def fnac_terms(cells, audio, similarity, tau, threshold):
  """The release's four loss terms: {'contrastive', 'fns_audio', 'tne', 'fns_image'}.

  cells [B, N, D] and audio [B, D] L2-normalized, similarity [B, B, N] their cosines.
  """
  logits = ezvsl.mil_logits(similarity, tau)
  image_mean = jnp.mean(cells, axis=1)
  foreground = foreground_embeddings(cells, similarity, tau, threshold)
  audio_affinity = audio @ audio.T / tau
  return {
      'contrastive': ezvsl.ezvsl_loss(similarity, tau),
      'fns_audio': _l1_of_softmaxes(audio_affinity, logits),
      'tne': _l1_of_softmaxes(audio_affinity, foreground @ foreground.T / tau),
      'fns_image': _l1_of_softmaxes(image_mean @ image_mean.T / tau, logits),
  }


def fnac_loss(outputs: dict, config, epoch):
  """EZ-VSL's loss + the weighted FNAC terms once `epoch` (int32, 0-based) reaches
  `config.warmup_epochs`. outputs: `DualEncoder.__call__` on the global batch; config:
  the `loss` block (tau, foreground_threshold, lambda_fns_audio, lambda_tne,
  lambda_fns_image, warmup_epochs). Returns (total, metrics)."""
  terms = fnac_terms(outputs['cells'], outputs['audio'], outputs['similarity'], config.tau,
                     config.foreground_threshold)
  extra = (config.lambda_fns_audio * terms['fns_audio'] + config.lambda_tne * terms['tne']
           + config.lambda_fns_image * terms['fns_image'])
  total = terms['contrastive'] + jnp.where(epoch >= config.warmup_epochs, extra, 0.0)
  return total, {'loss': total, **{f'loss_{name}': v for name, v in terms.items()}}
