"""Audio-visual cosine maps, shared by the models and losses of LVS, EZ-VSL, FNAC and
NoPrior (and `l2_normalize`, used by JSA's losses too). Pure jnp functions.
"""

import jax
import jax.numpy as jnp


def l2_normalize(x, axis=-1, eps=1e-12):
  """x / max(|x|, eps) along `axis` (torch's `F.normalize`), gradients included: written
  as x * rsqrt(max(|x|^2, eps^2)), so a zero vector (a cell whose channels dropout or a
  ReLU zeroed) gets torch's finite gradient 1 / eps, where the gradient of
  `jnp.linalg.norm` at zero is NaN and would make every parameter NaN."""
  squared = jnp.sum(x * x, axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, jnp.asarray(eps * eps, squared.dtype)))


def similarity_maps(cells, audio):
  """Every image against every clip's audio: cells [B, N, D] and audio [B, D], both
  L2-normalized -> [B, B, N], entry [n, m, k] = cos(image n's cell k, audio m).

  The releases' `einsum('nchw,mc->nmhw', img, aud)` (EZ-VSL, FNAC) and
  `einsum('ncqa,ckhw->nkqa', img, aud.T)` (LVS `AVENet.forward`, A0), cells flattened."""
  return jnp.einsum('nkd,md->nmk', cells, audio)


def own_maps(similarity):
  """[B, B, N] -> [B, N]: each image's map for its own audio (the diagonal)."""
  return jnp.diagonal(similarity).T


def max_pooled(similarity):
  """[B, B, N] -> [B, B]: the best cell of each map, the multiple-instance score of
  EZ-VSL (`EZVSL.max_xmil_loss`: `Slogits.flatten(-2, -1).max(dim=-1)`)."""
  return jnp.max(similarity, axis=-1)
