"""The methods avloc trains (JSA, NoPrior and the baselines LVS, EZ-VSL, FNAC), behind one
interface for the trainer, evaluator and predict.

A `Method` says how to build its Flax model from a config, its training loss on the
model's outputs, and its inference outputs (`localize`), maps at the input image size:
  heatmaps: {name: [B, H, W]} single-source localization maps, the first one primary;
  scores: {name: [B, H, W]} in [0, 1], a fixed-scale version of each heatmap, comparable
    across images (the extended protocol of Mo & Morgado, NeurIPS 2022);
  lowres: {name: [B, h, w]} the model's maps before upsampling;
  scores: {name: [B, H, W]} in [0, 1], a fixed-scale version of heatmaps[name] whose
    level is comparable across images (the confidence of Mo & Morgado's extended
    protocol, avloc.metrics.grounding; optional, per map);
  image_embedding, audio_embedding: [B, D] for cross-modal retrieval (optional);
  object_maps [B, K, H, W], object_valid [B, K]: one map per found object (optional).
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avloc import config as config_lib
from avloc.losses import ezvsl as ezvsl_losses
from avloc.losses import fnac as fnac_losses
from avloc.losses import jsa as jsa_losses
from avloc.losses import lvs as lvs_losses
from avloc.losses import noprior as noprior_losses
from avloc.models import dual_encoder
from avloc.models import jsa as jsa_model
from avloc.models import maps
from avloc.models import noprior as noprior_model


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  build_model: Callable[[ml_collections.ConfigDict], nn.Module]
  # loss(outputs, config, epoch): epoch is the 0-based epoch of the step (int32 scalar).
  loss: Callable[[dict, ml_collections.ConfigDict, jax.Array], tuple[jax.Array, dict]]
  localize: Callable[[nn.Module, dict, jax.Array, jax.Array, ml_collections.ConfigDict], dict]
  check_config: Callable[[ml_collections.ConfigDict], None]
  # The heatmap shown first (jit returns dicts with sorted keys, so order cannot say it).
  primary_map: Callable[[ml_collections.ConfigDict], str]

  def heatmaps_in_order(self, heatmaps: dict, config: ml_collections.ConfigDict) -> dict:
    primary = self.primary_map(config)
    return {primary: heatmaps[primary], **{k: v for k, v in heatmaps.items() if k != primary}}


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.train.compute_dtype == 'bfloat16' else jnp.float32


def _builder(module: type[nn.Module]) -> Callable[[ml_collections.ConfigDict], nn.Module]:
  """build_model for a model whose fields are the config's `model` block plus the image
  normalization and the compute dtype. A block lacking a field the model needs (a
  checkpoint's config written before avloc added it) fails naming the fields."""
  required = [field.name for field in dataclasses.fields(module)
              if field.name not in ('image_mean', 'image_std')
              and field.default is dataclasses.MISSING
              and field.default_factory is dataclasses.MISSING]

  def build(config):
    missing = [name for name in required if name not in config.model]
    if missing:
      raise config_lib.ConfigError(
          f'config.model has no {", ".join(missing)}, which the {module.__name__} model '
          'needs: a checkpoint whose saved config lacks them was written by an older '
          'avloc, before these fields existed; evaluate it with the version that wrote it')
    return module(**config.model.to_dict(), image_mean=tuple(config.data.image.mean),
                  image_std=tuple(config.data.image.std), dtype=compute_dtype(config))

  return build


def _jsa_loss(outputs, config, epoch):
  del epoch
  return jsa_losses.jsa_loss(outputs, config.loss, config.model.num_target)


def _upsampled_scores(score_map, size):
  """A [0, 1] score map [B, h, w] upsampled bicubically, the overshoot clipped."""
  return jnp.clip(maps.upsample_bicubic(score_map, size), 0.0, 1.0)


def _jsa_localize(model, variables, image, spectrogram, config):
  outputs = model.apply(variables, image, spectrogram, method=model.localize)
  size = image.shape[1:3]
  cross_modal = maps.upsample_bicubic(outputs['heatmap'], size)
  heatmaps = {'ca': cross_modal}
  scores = {'ca': _upsampled_scores(outputs['heatmap_score'], size)}
  if config.eval.use_iqr:
    alpha = config.eval.iqr_alpha
    intra_modal = maps.upsample_bicubic(outputs['image_prior'], size)
    heatmaps = {'iqr': jsa_model.iqr(cross_modal, intra_modal, alpha), **heatmaps}
    # Eq. 14 on the fixed-scale probabilities (the heatmap blends min-max normalized maps).
    scores['iqr'] = (alpha * scores['ca']
                     + (1 - alpha) * _upsampled_scores(outputs['image_prior_score'], size))
  return dict(heatmaps=heatmaps, scores=scores,
              lowres={'ca': outputs['heatmap'], 'ia': outputs['image_prior']},
              image_embedding=outputs['image_embedding'],
              audio_embedding=outputs['audio_embedding'])


def _check_jsa_config(config):
  model, loss = config.model, config.loss
  require = config_lib.require
  require(model.num_target >= 1, 'model.num_target', 'must be >= 1', model.num_target)
  require(model.num_offtarget >= 1, 'model.num_offtarget', 'must be >= 1', model.num_offtarget)
  require(model.iters >= 1, 'model.iters', 'must be >= 1', model.iters)
  require(0.0 <= model.mask_ratio < 1.0, 'model.mask_ratio', 'must be in [0, 1)',
          model.mask_ratio)
  require(model.infer_sharpening > 0, 'model.infer_sharpening', 'must be > 0',
          model.infer_sharpening)
  require(loss.tau > 0, 'loss.tau', 'must be > 0', loss.tau)
  require(loss.k >= 1, 'loss.k', 'must be >= 1', loss.k)
  for name in ('lambda_match', 'lambda_div', 'lambda_recon'):
    require(loss[name] >= 0, f'loss.{name}', 'must be >= 0', loss[name])
  require(0.0 <= config.eval.iqr_alpha <= 1.0, 'eval.iqr_alpha', 'must be in [0, 1]',
          config.eval.iqr_alpha)


def _noprior_loss(outputs, config, epoch):
  del epoch
  return noprior_losses.noprior_loss(outputs, config)


def _noprior_localize(model, variables, image, spectrogram, config):
  del config
  outputs = model.apply(variables, image, spectrogram, method=model.localize)
  size = image.shape[1:3]
  # S_v is a cosine: (S_v + 1) / 2 is SLAVC's min_max_norm(S / tau, -1 / tau, 1 / tau).
  return dict(heatmaps={'sam': maps.upsample_bicubic(outputs['sound_map'], size)},
              scores={'sam': _upsampled_scores((outputs['sound_map'] + 1.0) / 2.0, size)},
              lowres={'sam': outputs['sound_map']},
              object_maps=_upsampled_scores(outputs['object_maps'], size),
              object_valid=outputs['object_valid'])


def _check_noprior_config(config):
  model, loss = config.model, config.loss
  require = config_lib.require
  require(-1.0 <= model.mask_alpha <= 1.0, 'model.mask_alpha', 'must be a cosine in [-1, 1]',
          model.mask_alpha)
  require(model.mask_omega > 0, 'model.mask_omega', 'must be > 0', model.mask_omega)
  require(model.audio_pool in ('mean', 'max'), 'model.audio_pool', "must be 'mean' or 'max'",
          model.audio_pool)
  # Algorithm 1 zeroes the cells it has found: a negative epsilon would pick them again.
  require(0.0 <= model.ioi_epsilon < 1.0, 'model.ioi_epsilon', 'must be in [0, 1)',
          model.ioi_epsilon)
  for name in ('tau1', 'tau2'):
    require(-1.0 <= model[name] <= 1.0, f'model.{name}', 'must be a cosine in [-1, 1]',
            model[name])
  require(model.max_objects >= 1, 'model.max_objects', 'must be >= 1', model.max_objects)
  require(loss.temperature > 0, 'loss.temperature', 'must be > 0', loss.temperature)
  require(loss.avc_form in ('lvs', 'printed'), 'loss.avc_form', "must be 'lvs' or 'printed'",
          loss.avc_form)
  require(loss.negative_margin >= 0, 'loss.negative_margin', 'must be >= 0',
          loss.negative_margin)
  _check_encoder_dim(model)
  for name in ('lambda_avc', 'lambda_osc'):
    require(loss[name] >= 0, f'loss.{name}', 'must be >= 0', loss[name])
  require(config.data.mixture.num_sources >= 1, 'data.mixture.num_sources', 'must be >= 1',
          config.data.mixture.num_sources)


def _check_encoder_dim(model):
  if not model.projection:
    config_lib.require(
        model.dim == 8 * model.width, 'model.dim',
        f'must be 8 * model.width = {8 * model.width} without a projection', model.dim)


def _dual_encoder_localize(model, variables, image, spectrogram, config):
  """LVS, EZ-VSL, FNAC: the cosine map 'av' (EZ-VSL `test.py`'s `heatmap_av`; object
  guidance, its `av_obj`, is the evaluator's generic OGL), upsampled bicubically as the
  EZ-VSL / FNAC `train.py` `validate` does (their `test.py` uses bilinear with
  align_corners=True, LVS `test.py` cv2's bilinear); scores (cos + 1) / 2."""
  del config
  outputs = model.apply(variables, image, spectrogram, method=model.localize)
  heatmap = maps.upsample_bicubic(outputs['heatmap'], image.shape[1:3])
  return dict(heatmaps={'av': heatmap}, scores={'av': maps.cosine_scores(heatmap)},
              lowres={'av': outputs['heatmap']},
              image_embedding=outputs['image_embedding'],
              audio_embedding=outputs['audio_embedding'])


def _check_dual_encoder_config(config):
  model, require = config.model, config_lib.require
  for name in ('image_last_stride', 'audio_last_stride'):
    require(model[name] in (1, 2), f'model.{name}', 'must be 1 or 2', model[name])
  for name in ('image_dropout', 'audio_dropout'):
    require(0.0 <= model[name] < 1.0, f'model.{name}', 'must be in [0, 1)', model[name])
  _check_encoder_dim(model)
  require(config.loss.tau > 0, 'loss.tau', 'must be > 0', config.loss.tau)


def _ezvsl_loss(outputs, config, epoch):
  del epoch
  loss = ezvsl_losses.ezvsl_loss(outputs['similarity'], config.loss.tau)
  return loss, {'loss': loss}


def _lvs_loss(outputs, config, epoch):
  del epoch
  loss = config.loss
  value = lvs_losses.lvs_loss(outputs['similarity'], loss.epsilon, loss.epsilon_negative,
                              loss.tau, loss.temperature)
  return value, {'loss': value}


def _check_lvs_config(config):
  _check_dual_encoder_config(config)
  loss, require = config.loss, config_lib.require
  for name in ('epsilon', 'epsilon_negative'):
    require(-1.0 <= loss[name] <= 1.0, f'loss.{name}', 'must be a cosine in [-1, 1]',
            loss[name])
  require(loss.epsilon_negative <= loss.epsilon, 'loss.epsilon_negative',
          f'must be <= loss.epsilon ({loss.epsilon})', loss.epsilon_negative)
  require(loss.temperature > 0, 'loss.temperature', 'must be > 0', loss.temperature)


def _fnac_loss(outputs, config, epoch):
  return fnac_losses.fnac_loss(outputs, config.loss, epoch)


def _check_fnac_config(config):
  _check_dual_encoder_config(config)
  loss, require = config.loss, config_lib.require
  require(0.0 <= loss.foreground_threshold < 1.0, 'loss.foreground_threshold',
          'must be in [0, 1)', loss.foreground_threshold)
  for name in ('lambda_fns_audio', 'lambda_tne', 'lambda_fns_image', 'warmup_epochs'):
    require(loss[name] >= 0, f'loss.{name}', 'must be >= 0', loss[name])


_build_jsa = _builder(jsa_model.JSA)
_build_noprior = _builder(noprior_model.NoPrior)
_build_dual_encoder = _builder(dual_encoder.DualEncoder)

_METHODS = {
    'jsa': Method('jsa', _build_jsa, _jsa_loss, _jsa_localize, _check_jsa_config,
                  lambda config: 'iqr' if config.eval.use_iqr else 'ca'),
    'noprior': Method('noprior', _build_noprior, _noprior_loss, _noprior_localize,
                      _check_noprior_config, lambda config: 'sam'),
    'ezvsl': Method('ezvsl', _build_dual_encoder, _ezvsl_loss, _dual_encoder_localize,
                    _check_dual_encoder_config, lambda config: 'av'),
    'lvs': Method('lvs', _build_dual_encoder, _lvs_loss, _dual_encoder_localize,
                  _check_lvs_config, lambda config: 'av'),
    'fnac': Method('fnac', _build_dual_encoder, _fnac_loss, _dual_encoder_localize,
                   _check_fnac_config, lambda config: 'av'),
}


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise ValueError(f'config.method {name!r} is not one of {sorted(_METHODS)}')
  return _METHODS[name]
