"""The symmetric cross-entropy over a batch's pair scores (InfoNCE), shared by the
contrastive losses of JSA (Eq. 7), EZ-VSL and FNAC."""

import jax
import jax.numpy as jnp


def symmetric_cross_entropy(logits):
  """[B, B] scores, entry [i, j] = image i with audio j, the true pairs on the diagonal
  -> scalar: mean_i -log softmax_j(logits[i])[i] + mean_j -log softmax_i(logits[:, j])[j]
  (torch: `F.cross_entropy(logits, arange(B)) + F.cross_entropy(logits.T, arange(B))`).
  Entries set to -inf are left out of both softmaxes."""
  diagonal = jnp.arange(logits.shape[0])
  image_to_audio = -jax.nn.log_softmax(logits, axis=1)[diagonal, diagonal]
  audio_to_image = -jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal]
  return jnp.mean(image_to_audio) + jnp.mean(audio_to_image)
