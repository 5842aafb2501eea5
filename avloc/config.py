"""Building blocks and validation of avloc configs.

`configs/*.py` compose these blocks in their `get_config()`; every knob of a run lives in
the resulting `ml_collections.ConfigDict`. `validate` checks values at start-up so that a
bad value fails before any data is read, with a message naming the field.
"""

import json
import os
from collections.abc import Callable

import ml_collections

from avloc import paths
from avloc.constants import IMAGENET_MEAN, IMAGENET_STD
from avloc.data import audio as audio_lib

# Prepared splits are directories `<data.root>/<split name>` written by data_prep; the
# root may be a URI such as gs://bucket/data (avloc.paths).
DEFAULT_DATA_ROOT = os.path.join('~', '.cache', 'avloc', 'data')
SYNTHETIC = 'synthetic'
# Model fields used only when localizing: evaluation takes them from the command line's
# config, not from the checkpoint's.
INFERENCE_MODEL_FIELDS = ('infer_sharpening',)


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def audio_config(seconds: float) -> ml_collections.ConfigDict:
  """Log spectrogram as the official JSA evaluation: 16 kHz, STFT 512/512/160, centered,
  power 2, log(x + 1e-7) / 12 -> [257, 1 + seconds * 100]."""
  return ml_collections.ConfigDict(dict(
      sample_rate=16000,
      # How avloc-predict brings audio at other rates to sample_rate (the converters'
      # --resampler): 'sinc_hann', the releases' torchaudio Resample (JSA
      # dataset.py: load_spectrogram_torchaudio), or 'soxr_hq'.
      resampler='sinc_hann',
      seconds=seconds,
      n_fft=512,
      win_length=512,
      hop_length=160,
      log_offset=1e-7,
      log_divisor=12.0,
  ))


def image_config() -> ml_collections.ConfigDict:
  """Image preprocessing of the official releases (LVS / EZ-VSL / JSA)."""
  return ml_collections.ConfigDict(dict(
      size=224,  # network input, square
      train_resize=246,  # Resize(246, bicubic) then RandomCrop(224) when training
      flip=True,  # random horizontal flip when training
      hard_augment=False,  # official `hard_img`: + blur, colour jitter, grayscale
      mean=IMAGENET_MEAN,  # normalization inside the image encoder
      std=IMAGENET_STD,
  ))


def data_config(train_split: str, audio_seconds: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      root=DEFAULT_DATA_ROOT,
      train_split=train_split,
      image=image_config(),
      audio=audio_config(audio_seconds),
      spec_augment=False,  # official `hard_aud`: frequency/time masks
      spec_augment_width=10,
      num_workers=2,  # Grain worker processes; 0 decodes in the training process
      worker_buffer_size=2,
      skip_bad_records=False,  # True: skip and count corrupt records instead of failing
      synthetic=synthetic_config(),
      # The module whose prepare(synthetic, root, splits, log) makes the splits named
      # 'synthetic*' on first use (avloc.experiment.generate_splits).
      synthetic_generator='data_prep.synthetic',
  ))


def synthetic_config() -> ml_collections.ConfigDict:
  """The embedded synthetic benchmark (data_prep/synthetic.py); used when a split name
  starts with 'synthetic'. Generated once per distinct setting, then cached."""
  return ml_collections.ConfigDict(dict(
      seed=0,
      num_classes=12,
      image_size=128,  # stored frame size (the pipeline resizes to data.image.size)
      audio_seconds=1.0,
      train_size=4000,
      test_size=500,  # single-source test set
      multi_test_size=300,  # each of the duet / trio / mixed test sets
      max_distractors=2,  # silent objects of other classes in the frame
      offscreen_prob=0.3,  # probability of an extra off-screen sound in the audio
      noise_level=0.1,  # background noise amplitude relative to the sources
  ))


def release_audio_config(seconds: float) -> ml_collections.ConfigDict:
  """The log spectrogram of the LVS / EZ-VSL / FNAC releases (`datasets.py`): scipy's
  `signal.spectrogram(nperseg=512, noverlap=274)` (hop 238) of 16 kHz audio, then
  log(x + 1e-7) / 12. What differs here: a periodic Hann window instead of scipy's
  Tukey(0.25), power instead of scipy's one-sided density (a constant offset of the log,
  which the first BatchNorm removes) and centred frames (two more than scipy's)."""
  audio = audio_config(seconds)
  audio.hop_length = 238
  return audio


# Evaluation splits per training set of the LVS / EZ-VSL / FNAC paper variants (JSA
# Tables 1 and 3 report the three on these), and the synthetic variant's.
DUAL_ENCODER_EVAL_SPLITS = {
    'vggsound_144k': 'vggss,flickr_test,avsbench_s4,avsbench_ms3',
    'vggsound_10k': 'vggss,flickr_test',
    'flickr_144k': 'flickr_test,vggss',
    'flickr_10k': 'flickr_test,vggss',
    'synthetic': 'synthetic_test',
}


def dual_encoder_config(method: str, variant: str, audio_seconds: float,
                        projection: bool, last_stride: int) -> ml_collections.ConfigDict:
  """The blocks LVS, EZ-VSL and FNAC share (`avloc.models.dual_encoder`): the releases'
  image pipeline (Resize(246, bicubic), RandomCrop(224), flip), `release_audio_config`,
  ResNet-18s with D = 512, no initial image trunk, and their evaluation: maps binarized
  at their median (`test.py`), the best export by the first split's AP50. `variant` is a
  key of DUAL_ENCODER_EVAL_SPLITS and names the training split (synthetic_train for
  'synthetic'). The caller adds `loss`, `optim` and `train`."""
  if variant not in DUAL_ENCODER_EVAL_SPLITS:
    raise ValueError(f'configs/{method}.py: unknown variant {variant!r}; one of '
                     f'{list(DUAL_ENCODER_EVAL_SPLITS)}')
  eval_splits = DUAL_ENCODER_EVAL_SPLITS[variant]
  config = ml_collections.ConfigDict()
  config.method = method
  config.data = data_config('synthetic_train' if variant == SYNTHETIC else variant,
                            audio_seconds)
  config.data.audio = release_audio_config(audio_seconds)
  config.model = ml_collections.ConfigDict(dict(
      dim=512,  # = 8 * width without a projection
      width=64,  # ResNet-18 base width (64 = the papers' network)
      stem_pool=True,
      projection=projection,  # 1x1 conv heads (EZ-VSL, FNAC) or the trunk outputs (LVS)
      # Stride of each ResNet's layer4: 2, or 1 in LVS (both trunks).
      image_last_stride=last_stride,
      audio_last_stride=last_stride,
      image_dropout=0.0,  # dropout before the image / audio projection (FNAC)
      audio_dropout=0.0,
  ))
  config.model_init = ml_collections.ConfigDict(dict(
      # ResNet-18 ImageNet weights for the image trunk (the papers fine-tune from them): a
      # torchvision .pth file or `python -m avloc.convert --kind=imagenet_resnet18`'s output.
      image_trunk='',
  ))
  config.eval = eval_config(eval_splits, best_metric=eval_splits.split(',')[0] + '/av/ap50')
  config.eval.threshold_protocol = 'median'
  return config


def cpu_sized(config: ml_collections.ConfigDict) -> None:
  """The `synthetic` variants' common part, in place: the synthetic benchmark's frames and
  clip length (one generated set serves every method), width-16 ResNet-18s with D = 128
  (= 8 * width, the trunk's output) whose image trunk keeps its last stage at stride 16
  (LVS's image network), so 128 px frames give an 8x8 feature grid (the papers: 7x7 at
  224 px) for 1.3x the FLOPs of a train step (JSA batch 32: 26.7 instead of 20.7 GFLOP;
  without the stem's max-pool: 74.2), batch 32 and the logging / checkpoint / evaluation
  cadence of a run of minutes."""
  config.data.image.size = 128
  config.data.image.train_resize = 144
  config.data.audio.seconds = config.data.synthetic.audio_seconds
  config.model.update(dim=128, width=16, image_last_stride=1)
  config.optim.learning_rate = 5e-4
  config.train.batch_size = 32
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  config.eval.batch_size = 100
  # Evaluation decodes in the training process: on 2 CPU cores starting two worker
  # processes per split cost more than they save (NoPrior's five splits: 2.05x as long
  # with them; benchmarks/input_pipeline.py, RESULTS.md).
  config.eval.num_workers = 0
  # One binarization for every method on this benchmark: the JSA release's 0.6 of the
  # min-max normalized map. The median protocol (EZ-VSL, NoPrior) predicts half of the
  # frame, fitting VGG-SS's large boxes; the synthetic objects cover 2-16 % of it, where
  # even a perfect 8x8 map scores AP50 = 0 under the median (0.98 under 0.6).
  config.eval.update(threshold_protocol='minmax', threshold=0.6)


def optim_config(name: str, lr: float, weight_decay: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name=name,  # 'adam' or 'adamw'
      learning_rate=lr,
      # 'adamw': decoupled; 'adam': L2 added to the gradient (torch Adam's weight_decay)
      weight_decay=weight_decay,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      schedule='constant',  # 'constant', 'cosine' or 'step' (x gamma every epoch)
      step_gamma=0.9,
      warmup_steps=0,
      grad_clip_norm=0.0,  # 0 disables clipping
  ))


def train_config(batch_size: int, epochs: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=0,
      batch_size=batch_size,  # global, over all devices and hosts
      epochs=epochs,
      max_steps=0,  # > 0 stops earlier than `epochs`
      compute_dtype='float32',  # 'bfloat16' on accelerators; params stay float32
      log_every_steps=50,
      checkpoint_every_steps=1000,
      keep_checkpoints=3,
      eval_every_steps=0,  # 0: evaluate at the end of every epoch
  ))


def eval_config(splits: str, best_metric: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      splits=splits,  # comma-separated prepared split names under data.root
      batch_size=64,
      # Grain worker processes decoding the splits (0: in this process). Every split
      # starts its own; the batches are the same for any number.
      num_workers=2,
      # How a heatmap becomes a binary map (metrics/localization.py):
      # 'minmax' (JSA release): min-max normalize, then `threshold`;
      # 'median' (LVS / EZ-VSL / NoPrior): the map's median.
      threshold_protocol='minmax',
      threshold=0.5,
      num_visualize=8,  # samples per split drawn into the PNG grid
      # The centre-prior baseline row: an isotropic Gaussian at the image centre whose
      # sigma is this fraction of the side.
      center_prior_sigma=0.25,
      recall_at=(1, 5, 10),  # K of the Recall@K columns (K larger than a split: left out)
      # NoPrior object masks drawn by avloc-predict and notebooks (Localizer.render):
      # pixels whose calibrated object score exceeds it; 0.5 is R_p > R_n, Algorithm 1's
      # sound-making region (models/noprior.py: object_maps).
      object_threshold=0.5,
      best_metric=best_metric,  # '<split>/<metric>' that selects the best export
      max_examples=0,  # > 0 evaluates only the first examples of each split
      # Also localize every image with the audio of a clip of another class: audio-swap
      # rows and Mo & Morgado's extended protocol (evaluate.py, metrics/grounding.py).
      audio_swap=True,
      # Object-guided localization (OGL, EZ-VSL; JSA Tables 1-2 "with OGL"): with `weights`
      # (an ImageNet ResNet-18: torchvision .pth or `python -m avloc.convert
      # --kind=imagenet_resnet18` export) every map variant also gets a '<variant>+ogl' map,
      # normalize(alpha * map + (1 - alpha) * object prior), and each table an
      # 'object prior' row. alpha: EZ-VSL's / the JSA release's --alpha.
      object_guidance=dict(weights='', alpha=0.4),
  ))


def changed_fields(saved: dict, current: dict, prefix: str = '') -> list[str]:
  """'field: saved -> current' for every leaf that differs between two config dicts."""
  changed = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      changed += changed_fields(a, b, f'{prefix}{key}.')
    elif json.dumps(a) != json.dumps(b):
      changed.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return changed


def with_saved_model(config: ml_collections.ConfigDict,
                     saved: dict | ml_collections.ConfigDict,
                     log=print) -> ml_collections.ConfigDict:
  """`config` with the `method` and `model` block of a checkpoint's saved config (the
  architecture is the checkpoint's; `INFERENCE_MODEL_FIELDS`, which change no parameter,
  stay as `config` says); logs what that changes."""
  merged = config.to_dict()
  if isinstance(saved, ml_collections.ConfigDict):
    saved = saved.to_dict()
  saved = dict(saved, model={**saved['model'], **{
      k: merged['model'][k] for k in INFERENCE_MODEL_FIELDS if k in merged['model']}})
  for key in ('method', 'model'):
    for change in changed_fields({key: merged[key]}, {key: saved[key]}):
      log(f'  using the checkpoint\'s {change}')
    merged[key] = saved[key]
  return ml_collections.ConfigDict(merged)


def _fill(values: dict, defaults: dict) -> None:
  for key, default in defaults.items():
    if key not in values:
      values[key] = default
    elif isinstance(default, dict) and isinstance(values[key], dict):
      _fill(values[key], default)


def with_defaults(saved: dict | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A checkpoint's saved config with the `data.audio` and `eval` fields added to avloc
  since it was written, at their defaults (`audio_config`, `eval_config`); what the
  checkpoint holds is kept."""
  values = saved.to_dict() if isinstance(saved, ml_collections.ConfigDict) else dict(saved)
  _fill(values, {'data': {'audio': audio_config(values['data']['audio']['seconds']).to_dict()},
                 'eval': eval_config('', '').to_dict()})
  return ml_collections.ConfigDict(values)


def resolve_data_root(config: ml_collections.ConfigDict) -> str:
  """`config.data.root` made absolute (`~` expanded); a URI (gs://...) as it is."""
  return str(paths.resolve(config.data.root))


def eval_splits(config: ml_collections.ConfigDict) -> list[str]:
  return [s.strip() for s in config.eval.splits.split(',') if s.strip()]


def require(ok: bool, field: str, message: str, value) -> None:
  """Raises ConfigError('config.<field> <message>, got <value>') unless `ok`."""
  if not ok:
    raise ConfigError(f'config.{field} {message}, got {value!r}')


def _positive(config, field):
  value = _get(config, field)
  require(value > 0, field, 'must be > 0', value)


def _get(config, field):
  node = config
  for part in field.split('.'):
    if part not in node:
      raise ConfigError(f'config.{field} is missing')
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict, method_checks: Callable | None = None):
  """Raises ConfigError naming the first invalid field of a config; `method_checks`
  validates the method's own blocks (model, loss)."""
  for field in (
      'train.batch_size', 'train.epochs', 'train.log_every_steps',
      'train.checkpoint_every_steps', 'train.keep_checkpoints', 'eval.batch_size',
      'optim.learning_rate', 'data.image.size', 'data.image.train_resize',
      'data.audio.sample_rate', 'data.audio.seconds', 'data.audio.n_fft',
      'data.audio.win_length', 'data.audio.hop_length', 'data.audio.log_divisor',
  ):
    _positive(config, field)
  require(config.data.image.train_resize >= config.data.image.size,
         'data.image.train_resize', f'must be >= data.image.size ({config.data.image.size})',
         config.data.image.train_resize)
  require(config.data.audio.win_length <= config.data.audio.n_fft, 'data.audio.win_length',
         f'must be <= data.audio.n_fft ({config.data.audio.n_fft})',
         config.data.audio.win_length)
  for field in ('data.num_workers', 'eval.num_workers'):
    value = _get(config, field)
    require(value >= 0, field, 'must be >= 0', value)
  require(config.data.audio.resampler in audio_lib.RESAMPLERS, 'data.audio.resampler',
          f'must be one of {audio_lib.RESAMPLERS}', config.data.audio.resampler)
  require(config.optim.name in ('adam', 'adamw'), 'optim.name', "must be 'adam' or 'adamw'",
         config.optim.name)
  require(config.optim.schedule in ('constant', 'cosine', 'step'), 'optim.schedule',
         "must be 'constant', 'cosine' or 'step'", config.optim.schedule)
  require(config.optim.weight_decay >= 0, 'optim.weight_decay', 'must be >= 0',
         config.optim.weight_decay)
  require(config.optim.grad_clip_norm >= 0, 'optim.grad_clip_norm', 'must be >= 0',
         config.optim.grad_clip_norm)
  require(config.train.compute_dtype in ('float32', 'bfloat16'), 'train.compute_dtype',
         "must be 'float32' or 'bfloat16'", config.train.compute_dtype)
  require(config.train.max_steps >= 0, 'train.max_steps', 'must be >= 0',
         config.train.max_steps)
  require(config.eval.threshold_protocol in ('minmax', 'median'), 'eval.threshold_protocol',
         "must be 'minmax' or 'median'", config.eval.threshold_protocol)
  require(0.0 <= config.eval.threshold <= 1.0, 'eval.threshold', 'must be in [0, 1]',
         config.eval.threshold)
  require(0.0 <= config.eval.object_guidance.alpha <= 1.0, 'eval.object_guidance.alpha',
          'must be in [0, 1]', config.eval.object_guidance.alpha)
  require(bool(config.data.train_split), 'data.train_split', 'must name a prepared split',
         config.data.train_split)
  require('/' in config.eval.best_metric or not config.eval.best_metric, 'eval.best_metric',
         "must look like '<split>/<metric>'", config.eval.best_metric)
  if method_checks is not None:
    method_checks(config)


def check_best_metric(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless `eval.best_metric` is empty or names a split of
  `eval.splits` (a run that trains and evaluates picks its export by it)."""
  splits = eval_splits(config)
  split = config.eval.best_metric.partition('/')[0]
  if splits and config.eval.best_metric and split not in splits:
    raise ConfigError(
        f'config.eval.best_metric {config.eval.best_metric!r} names the split {split!r}, '
        f'which config.eval.splits ({config.eval.splits!r}) does not evaluate: set '
        f"--config.eval.best_metric=<one of {', '.join(splits)}>/<metric> (or '' to export "
        'the last evaluation)')
