"""A trained model on raw media, without the trainer: for avloc.predict and notebooks.

  localizer = Localizer.from_checkpoint('runs/jsa_synthetic')
  outputs = localizer.localize(frames, waveforms)  # uint8 [H, W, 3] frames, [N] waveforms
  panel = localizer.render(frames[0], sample(outputs, 0))  # overlay + colour bar, uint8

Inputs are preprocessed as in evaluation (avloc.data.pipeline.eval_example): the frame
resized to `data.image.size` (bicubic), the log spectrogram of the middle
`data.audio.seconds` of the waveform (a shorter clip tiled). Outputs are the method's
(avloc.methods), as NumPy arrays, maps at the model's input size.
"""

import functools
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from avloc import checkpointing, config as config_lib, methods, visualize
from avloc.data import audio as audio_lib
from avloc.data import image as image_lib
from avloc.data import media


class Localizer:
  """A model and its variables; `localize` is jit-compiled once per batch size."""

  def __init__(self, config: ml_collections.ConfigDict, variables: dict):
    """config: the checkpoint's (fields it predates get their defaults)."""
    config = config_lib.with_defaults(config)
    self.config = config
    self.method = methods.get_method(config.method)
    self.model = self.method.build_model(config)
    self.variables = jax.device_put(variables)
    self._localize = jax.jit(functools.partial(self.method.localize, self.model,
                                               config=config))

  @classmethod
  def from_checkpoint(cls, path: str) -> 'Localizer':
    """From a training workdir, an export directory or one of its steps (the checkpoint's
    config)."""
    config, variables = checkpointing.load_inference(path)
    return cls(config, variables)

  @property
  def sample_rate(self) -> int:
    return self.config.data.audio.sample_rate

  @property
  def resampler(self) -> str:
    """How audio at other rates is brought to `sample_rate` (audio.RESAMPLERS)."""
    return self.config.data.audio.resampler

  @property
  def seconds(self) -> float:
    return self.config.data.audio.seconds

  def prepare_image(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W] or [H, W, 1 | 3 | 4] of any size -> uint8 [S, S, 3] model input."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0 or (
        image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
      raise ValueError(f'expected a non-empty uint8 [H, W] or [H, W, 1 | 3 | 4] image, got '
                       f'{image.dtype} {image.shape}')
    if image.ndim == 3 and image.shape[2] == 1:
      image = image[..., 0]
    if image.ndim == 2 or image.shape[2] == 4:  # gray, or RGBA composited on black
      image = np.asarray(image_lib.to_rgb(Image.fromarray(image)))
    return image_lib.eval_transform(image, self.config.data.image)

  def prepare_audio(self, waveform: np.ndarray) -> np.ndarray:
    """float [N] (or [N, C], channels averaged) at `sample_rate` -> [F, T, 1] log
    spectrogram of its middle `seconds` (a shorter clip tiled)."""
    waveform = media.to_mono(waveform)
    if waveform.ndim != 1 or waveform.size == 0:
      raise ValueError(f'expected a non-empty [N] or [N, C] waveform, got {waveform.shape}')
    if not np.all(np.isfinite(waveform)):
      raise ValueError('the waveform has NaN or infinite samples')
    audio = self.config.data.audio
    clip = audio_lib.fit_length(waveform, audio_lib.num_samples(audio))
    return audio_lib.log_spectrogram(clip, audio)[..., None]

  def localize(self, images: Sequence[np.ndarray], waveforms: Sequence[np.ndarray],
               batch_size: int | None = None) -> dict:
    """B frames (any size) and their B waveforms -> the method's outputs for the batch
    (see `localize_inputs`)."""
    if len(images) != len(waveforms):
      raise ValueError(f'{len(images)} images but {len(waveforms)} waveforms')
    return self.localize_inputs(np.stack([self.prepare_image(i) for i in images]),
                                np.stack([self.prepare_audio(w) for w in waveforms]),
                                batch_size)

  def localize_inputs(self, images: np.ndarray, spectrograms: np.ndarray,
                      batch_size: int | None = None) -> dict:
    """Prepared uint8 images [B, S, S, 3] and spectrograms [B, F, T, 1] -> the method's
    outputs as NumPy arrays (heatmaps {name: [B, S, S]} primary first, lowres
    {name: [B, h, w]}, ...). With `batch_size`, runs in chunks of that size, the last
    one padded (one compilation)."""
    if not len(images) or len(images) != len(spectrograms):
      raise ValueError(f'expected B > 0 images and spectrograms, got {len(images)} and '
                       f'{len(spectrograms)}')
    size = batch_size or len(images)
    chunks = []
    for start in range(0, len(images), size):
      image, spectrogram = images[start:start + size], spectrograms[start:start + size]
      count = len(image)
      if count < size:
        image, spectrogram = (np.concatenate([x, np.repeat(x[-1:], size - count, 0)])
                              for x in (image, spectrogram))
      outputs = jax.device_get(self._localize(self.variables, image, spectrogram))
      chunks.append(jax.tree_util.tree_map(lambda x, n=count: np.asarray(x[:n]), outputs))
    outputs = jax.tree_util.tree_map(lambda *x: np.concatenate(x), *chunks)
    outputs['heatmaps'] = self.method.heatmaps_in_order(outputs['heatmaps'], self.config)
    return outputs

  def render(self, image: np.ndarray, prediction: dict, caption: str = '',
             max_side: int = 512) -> np.ndarray:
    """`render` with this model's `eval.object_threshold`."""
    return render(image, prediction, self.config.eval.object_threshold, caption, max_side)


def sliding_windows(waveform: np.ndarray, sample_rate: int, seconds: float,
                    times: Sequence[float]) -> list[np.ndarray]:
  """[N] waveform -> one [L] window (L = seconds * sample_rate) centred on each time in
  `times` (seconds), shifted to lie inside the clip; a clip shorter than L is tiled."""
  length = int(round(seconds * sample_rate))
  if waveform.shape[0] < length:
    clip = audio_lib.fit_length(waveform, length)
    return [clip for _ in times]
  last = waveform.shape[0] - length
  starts = [min(max(int(round(t * sample_rate)) - length // 2, 0), last) for t in times]
  return [waveform[start:start + length] for start in starts]


def sample(outputs: dict, i: int) -> dict:
  """Sample i of batched outputs (every array loses its batch axis; key order kept)."""
  return {k: sample(v, i) if isinstance(v, dict) else v[i] for k, v in outputs.items()}


def resize_map(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """float [h, w] -> float32 [H, W] (bilinear)."""
  image = Image.fromarray(np.asarray(values, np.float32))
  return np.asarray(image.resize((shape[1], shape[0]), Image.BILINEAR))


def object_masks(prediction: dict, shape: tuple[int, int], threshold: float) -> np.ndarray:
  """One sample's NoPrior outputs -> bool [K, H, W] masks of its found objects (pixels
  scored > threshold, each pixel to its highest-scoring object)."""
  maps = [resize_map(m, shape) for m, valid in
          zip(prediction['object_maps'], prediction['object_valid']) if valid]
  if not maps:
    return np.zeros((0,) + tuple(shape), bool)
  maps = np.stack(maps)
  return (maps > threshold) & (maps == maps.max(axis=0, keepdims=True))


def display_frame(image: np.ndarray, max_side: int) -> np.ndarray:
  """uint8 [H, W, 3] scaled down so that its longer side is at most `max_side`."""
  scale = max_side / max(image.shape[:2])
  if scale >= 1:
    return image
  shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
  return image_lib.resize(image, shape, Image.BILINEAR)


def render(image: np.ndarray, prediction: dict, object_threshold: float, caption: str = '',
           max_side: int = 512) -> np.ndarray:
  """One sample's outputs drawn on its frame uint8 [H, W, 3] -> uint8 panel: every heatmap
  (min-max normalized, named) on the frame, a colour bar, and for NoPrior the objects'
  masks in distinct colours with their count. The frame is shown at most `max_side`."""
  frame = display_frame(image, max_side)
  panels = []
  for name, heatmap in prediction['heatmaps'].items():
    text = f'{caption}: {name}' if caption and not panels else name
    panels.append(visualize.label(visualize.overlay(frame, visualize.normalize(heatmap)), text))
  panels.append(visualize.colour_bar(frame.shape[0]))
  if 'object_maps' in prediction:
    masks = object_masks(prediction, frame.shape[:2], object_threshold)
    count = f'{len(masks)} object' + ('' if len(masks) == 1 else 's')
    panels.append(visualize.label(visualize.overlay_masks(frame, masks), count))
  return visualize.grid([panels])
