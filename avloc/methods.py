"""The methods avloc trains, behind one interface for the trainer, evaluator and predict.

A `Method` says how to build its Flax model from a config, its training loss on the
model's outputs, and its inference outputs (`localize`):
  heatmaps: {name: [B, h, w]} single-source localization maps, the first one primary;
  image_embedding, audio_embedding: [B, D] for cross-modal retrieval (optional);
  object_maps [B, K, h, w], object_valid [B, K]: one map per found object (optional).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avloc.losses import jsa as jsa_losses
from avloc.models import jsa as jsa_model


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]
  loss: Callable[[dict, ml_collections.ConfigDict], tuple[jax.Array, dict]]
  localize: Callable[[nn.Module, dict, jax.Array, jax.Array, ml_collections.ConfigDict], dict]


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.train.compute_dtype == 'bfloat16' else jnp.float32


def _build_jsa(config):
  return jsa_model.JSA(
      **config.model.to_dict(), image_mean=tuple(config.data.image.mean),
      image_std=tuple(config.data.image.std), dtype=compute_dtype(config))


def _jsa_loss(outputs, config):
  return jsa_losses.jsa_loss(outputs, config.loss, config.model.num_target)


def _jsa_localize(model, variables, image, spectrogram, config):
  outputs = model.apply(variables, image, spectrogram, method=model.localize)
  heatmaps = {'ca': outputs['heatmap']}
  if config.eval.use_iqr:
    refined = jsa_model.iqr(outputs['heatmap'], outputs['image_prior'], config.eval.iqr_alpha)
    heatmaps = {'iqr': refined, **heatmaps}
  return dict(heatmaps=heatmaps, image_embedding=outputs['image_embedding'],
              audio_embedding=outputs['audio_embedding'])


_METHODS = {
    'jsa': Method('jsa', _build_jsa, _jsa_loss, _jsa_localize),
}


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f'config.method {name!r} is not one of {sorted(_METHODS)}')
  return _METHODS[name]
