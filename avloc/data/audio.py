"""Waveform -> log spectrogram, as the official JSA evaluation computes it.

The release (`dataset.py: load_spectrogram_torchaudio`) takes the middle `seconds` of a
16 kHz clip (tiling clips that are too short), applies torchaudio's
`Spectrogram(n_fft=512, win_length=512, hop_length=160, center=True, power=2)` (periodic
Hann window, reflect padding), then `log(x + 1e-7)` and `Normalize(0, 12)`. For 5 s this
gives [257, 501]; for 3 s (NoPrior) [257, 301]. Everything here is NumPy: it runs in the
input workers.

Clips recorded at another rate are resampled to 16 kHz when they are read
(avloc.data.media): by default as the releases do it (`sinc_resample`).
"""

import math

import ml_collections
import numpy as np

# config.data.audio.resampler / the converters' --resampler: 'sinc_hann' is the JSA
# release's `torchaudio.transforms.Resample` (see `sinc_resample`), 'soxr_hq' libsoxr.
RESAMPLERS = ('sinc_hann', 'soxr_hq')


def num_samples(audio: ml_collections.ConfigDict) -> int:
  return int(round(audio.sample_rate * audio.seconds))


def spectrogram_shape(audio: ml_collections.ConfigDict) -> tuple[int, int]:
  """(frequency bins, frames) of `log_spectrogram` for the config's clip length."""
  return audio.n_fft // 2 + 1, 1 + num_samples(audio) // audio.hop_length


def sinc_resample(waveform: np.ndarray, rate: int, target_rate: int,
                  lowpass_filter_width: int = 6, rolloff: float = 0.99) -> np.ndarray:
  """[N] -> float32 [ceil(N * target_rate / rate)]: band-limited windowed-sinc
  interpolation with a Hann window, torchaudio's default `Resample` (the JSA release's
  `dataset.py: load_spectrogram_torchaudio`), written after
  `torchaudio/functional/functional.py: _get_sinc_resample_kernel` and
  `_apply_sinc_resample_kernel`, in float64.

  With g = gcd(rate, target_rate), every block of rate / g input samples gives
  target_rate / g outputs, each a dot product of the zero-padded input with one row of a
  [target_rate / g, 2 w + rate / g] kernel: sinc at cut-off
  min(rate, target_rate) * rolloff, windowed over `lowpass_filter_width` zero crossings.
  """
  if rate == target_rate:
    return np.asarray(waveform, np.float32)
  gcd = math.gcd(int(rate), int(target_rate))
  orig, new = int(rate) // gcd, int(target_rate) // gcd
  base = min(orig, new) * rolloff
  width = math.ceil(lowpass_filter_width * orig / base)
  times = (np.arange(-width, width + orig) / orig)[None, :] - (np.arange(new) / new)[:, None]
  times = np.clip(times * base, -lowpass_filter_width, lowpass_filter_width)
  window = np.cos(times * np.pi / lowpass_filter_width / 2) ** 2
  kernel = np.sinc(times) * window * (base / orig)  # [new, 2 * width + orig]
  length = waveform.shape[0]
  padded = np.pad(np.asarray(waveform, np.float64), (width, width + orig))
  frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
  resampled = (frames @ kernel.T).reshape(-1)
  return resampled[:math.ceil(new * length / orig)].astype(np.float32)


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
  """The middle `length` samples of [N] `waveform`; a shorter clip is tiled first
  (as the release's `waveform.repeat`)."""
  if waveform.shape[0] == 0:
    raise ValueError('empty waveform')
  if waveform.shape[0] < length:
    waveform = np.tile(waveform, length // waveform.shape[0] + 1)[:length]
    return waveform
  start = (waveform.shape[0] - length) // 2
  return waveform[start:start + length]


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
  """Periodic Hann window of `win_length`, zero-padded on both sides to `n_fft` (torch)."""
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(window, (left, n_fft - win_length - left))


def log_spectrogram(waveform: np.ndarray, audio: ml_collections.ConfigDict) -> np.ndarray:
  """[N] float waveform -> [n_fft // 2 + 1, 1 + N // hop] float32 log power spectrogram,
  log(|STFT|^2 + log_offset) / log_divisor, in C order: Grain's input workers hand only
  C-contiguous arrays over in shared memory (others are pickled through a pipe)."""
  n_fft, hop = audio.n_fft, audio.hop_length
  padded = np.pad(np.asarray(waveform, np.float64), n_fft // 2, mode='reflect')
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
  power = np.abs(np.fft.rfft(frames * hann_window(audio.win_length, n_fft), axis=-1)) ** 2
  log_power = np.log(power.T + audio.log_offset) / audio.log_divisor
  return log_power.astype(np.float32, order='C')


def spec_augment(spectrogram: np.ndarray, rng: np.random.Generator,
                 max_width: int) -> np.ndarray:
  """The release's `hard_aud`: one frequency mask and one time mask, each of width
  uniform in [0, max_width), set to 0. [F, T] -> [F, T].

  The release draws the frequency mask's start over the time axis length (an index
  slip in `FrequencyMask`); here each start is uniform over its own axis."""
  out = spectrogram.copy()
  for axis in (0, 1):
    start = rng.integers(0, out.shape[axis])
    width = rng.integers(0, max_width)
    index = [slice(None), slice(None)]
    index[axis] = slice(start, start + width)
    out[tuple(index)] = 0.0
  return out
