"""EZ-VSL's training objective (Mo & Morgado, ECCV 2022): the multiple-instance
cross-modal contrastive loss, a pure function of the audio-visual cosine maps.

The release (`model.py`, `EZVSL.max_xmil_loss`) scores every (image n, audio m) pair by
its best cell, max_k S^{n->m}_k / tau, and adds the two directions' cross-entropies
(image -> audio over rows, audio -> image over columns), each a batch mean.
"""

from avloc.losses import contrastive
from avloc.models import similarity as similarity_lib


def mil_logits(similarity, tau):
  """[B, B, N] cosines -> [B, B] logits, [n, m] = max over image n's cells of their
  cosine with audio m, / tau (the release's `logits`)."""
  return similarity_lib.max_pooled(similarity) / tau


def ezvsl_loss(similarity, tau):
  """The release's loss on the global batch's maps [B, B, N]; a scalar."""
  return contrastive.symmetric_cross_entropy(mil_logits(similarity, tau))
