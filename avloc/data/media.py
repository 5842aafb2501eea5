"""Reading user media: image files, audio files and videos (PyAV bundles FFmpeg).

Used by the data_prep converters and by avloc.predict. Every failure raises MediaError
naming the file, so a converter can skip the input with that reason.
"""

import os
import warnings

import av
import librosa
import numpy as np
import soundfile
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from avloc.data import audio as audio_lib
from avloc.data import image as image_lib

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
AUDIO_EXTENSIONS = ('.wav', '.flac', '.ogg', '.mp3', '.m4a', '.aac')
VIDEO_EXTENSIONS = ('.mp4', '.mkv', '.webm', '.avi', '.mov')
EXIF_ORIENTATION = 0x0112  # the EXIF tag load_image applies


class MediaError(ValueError):
  """A media file is missing or cannot be decoded; the message names the file."""


def _check_exists(path: str) -> None:
  if not os.path.isfile(path):
    raise MediaError(f'{path}: file not found')


def _open_image(path: str) -> Image.Image:
  """`Image.open`, except for an image above Pillow's decompression-bomb limit
  (`Image.MAX_IMAGE_PIXELS`): a JPEG is set to decode at the largest reduced size under
  the limit (DCT scaling by 1/2, 1/4 or 1/8, `Image.draft`); another format is opened
  as Pillow does below twice the limit and refused (MediaError) above it."""
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      return Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
      bomb = e
  try:
    image = JpegImagePlugin.JpegImageFile(path)  # the plugin itself makes no size check
  except (SyntaxError, OSError, ValueError):  # not a JPEG
    if isinstance(bomb, Image.DecompressionBombError):
      raise MediaError(f'{path}: cannot decode image ({bomb} Only JPEG images are decoded '
                       'at a reduced size.)') from None
    return Image.open(path)
  width, height = image.size
  for scale in (2, 4, 8):
    if -(-width // scale) * -(-height // scale) <= Image.MAX_IMAGE_PIXELS:
      image.draft(image.mode, (max(width // scale, 1), max(height // scale, 1)))
      return image
  image.close()
  raise MediaError(f'{path}: cannot decode image ({width}x{height} pixels exceed '
                   f'Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} even at 1/8 size)')


def load_image(path: str) -> np.ndarray:
  """Image file of any PIL mode -> uint8 [H, W, 3] RGB, turned upright by its EXIF
  orientation (as photo viewers show it). A JPEG above Pillow's decompression-bomb limit
  comes back at a reduced size (see `_open_image`)."""
  _check_exists(path)
  try:
    with _open_image(path) as image:
      image.load()
      array = np.asarray(image_lib.to_rgb(ImageOps.exif_transpose(image)))
  except MediaError:
    raise
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise MediaError(f'{path}: cannot decode image ({e})') from e
  if array.size == 0:
    raise MediaError(f'{path}: empty image ({array.shape[1]}x{array.shape[0]} pixels)')
  return array


def to_mono(samples: np.ndarray) -> np.ndarray:
  """[N] or [N, C] -> float32 [N], channels averaged."""
  samples = np.asarray(samples, np.float32)
  return samples.mean(axis=1) if samples.ndim == 2 else samples


def resample(waveform: np.ndarray, rate: int, target_rate: int,
             method: str = 'sinc_hann') -> np.ndarray:
  """[N] -> float32 [~N * target_rate / rate] with one of audio.RESAMPLERS: 'sinc_hann'
  (the releases' torchaudio Resample) or 'soxr_hq'."""
  if method not in audio_lib.RESAMPLERS:
    raise ValueError(f'resampler must be one of {audio_lib.RESAMPLERS}, got {method!r}')
  if rate == target_rate:
    return waveform.astype(np.float32)
  if method == 'sinc_hann':
    return audio_lib.sinc_resample(waveform, rate, target_rate)
  return librosa.resample(waveform, orig_sr=rate, target_sr=target_rate,
                          res_type='soxr_hq').astype(np.float32)


def check_waveform(path: str, waveform: np.ndarray | None) -> np.ndarray:
  """The decoded waveform of `path` if it is usable; MediaError for a missing audio
  track, NaN or infinite samples, or silence (every sample zero)."""
  if waveform is None:
    raise MediaError(f'{path}: no audio track')
  if not np.all(np.isfinite(waveform)):
    raise MediaError(f'{path}: NaN or infinite audio samples')
  if not np.any(waveform):
    raise MediaError(f'{path}: silent audio (all samples are zero)')
  return waveform


def load_audio(path: str, sample_rate: int, resampler: str = 'sinc_hann') -> np.ndarray:
  """Audio file (wav, flac, ogg via libsndfile; anything else via FFmpeg) -> float32
  mono [N] at `sample_rate` (`resampler`: see `resample`)."""
  _check_exists(path)
  try:
    samples, rate = soundfile.read(path, dtype='float32', always_2d=False)
  except (soundfile.LibsndfileError, RuntimeError):
    waveform = read_video(path, sample_rate, frame=False)[1]
    if waveform is None:
      raise MediaError(f'{path}: no audio track') from None
    return waveform
  waveform = resample(to_mono(samples), rate, sample_rate, resampler)
  if waveform.size == 0:
    raise MediaError(f'{path}: no audio samples')
  return waveform


def read_video(path: str, sample_rate: int,
               frame: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Video (or audio container) -> (middle frame uint8 [H, W, 3] or None without a video
  stream, float32 mono waveform [N] at `sample_rate` or None without an audio stream)."""
  _check_exists(path)
  try:
    with av.open(path) as container:
      has_video = bool(container.streams.video)
      middle = _middle_frame(container) if frame and has_video else None
    with av.open(path) as container:
      waveform = _audio(container, sample_rate) if container.streams.audio else None
  except (av.FFmpegError, OSError, ValueError) as e:
    raise MediaError(f'{path}: cannot decode ({e})') from e
  if not has_video and waveform is None:
    raise MediaError(f'{path}: no decodable video or audio stream')
  return middle, waveform


def _middle_frame(container) -> np.ndarray:
  """The frame at the middle of the video stream (the papers' evaluation frame)."""
  stream = container.streams.video[0]
  duration = (float(stream.duration * stream.time_base) if stream.duration
              else (container.duration or 0) / av.time_base)
  target = duration / 2
  chosen = None
  for frame in container.decode(stream):
    chosen = frame
    if frame.time is not None and frame.time >= target:
      break
  if chosen is None:
    raise ValueError('no video frames')
  return chosen.to_ndarray(format='rgb24')


def iter_frames(path: str, fps: float, max_frames: int):
  """Yields (seconds since the first frame, uint8 [H, W, 3] RGB frame) of a video: the
  first frame at or after every 1 / `fps` seconds, at most `max_frames` (decoded lazily)."""
  _check_exists(path)
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise MediaError(f'{path}: no video stream')
      stream = container.streams.video[0]
      rate = float(stream.average_rate or 25)
      start, count = None, 0
      for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / rate
        start = time if start is None else start
        if time - start + 1e-6 >= count / fps:
          yield time - start, frame.to_ndarray(format='rgb24')
          count += 1
          if count == max_frames:
            return
      if not count:
        raise MediaError(f'{path}: no decodable video frames')
  except MediaError:
    raise
  except (av.FFmpegError, OSError, ValueError) as e:
    raise MediaError(f'{path}: cannot decode ({e})') from e


def _audio(container, sample_rate: int) -> np.ndarray:
  stream = container.streams.audio[0]
  resampler = av.AudioResampler(format='flt', layout='mono', rate=sample_rate)
  chunks = []
  for frame in container.decode(stream):
    for out in resampler.resample(frame):
      chunks.append(out.to_ndarray().reshape(-1))
  chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
  if not chunks:
    raise ValueError('no audio samples')
  return np.concatenate(chunks).astype(np.float32)


def middle_segment(waveform: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
  """The middle `seconds` of [N] `waveform` (all of it when shorter)."""
  length = int(round(seconds * sample_rate))
  start = max(0, (waveform.shape[0] - length) // 2)
  return waveform[start:start + length]
