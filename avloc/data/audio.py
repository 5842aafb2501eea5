"""Waveform -> log spectrogram, as the official JSA evaluation computes it.

The release (`dataset.py: load_spectrogram_torchaudio`) takes the middle `seconds` of a
16 kHz clip (tiling clips that are too short), applies torchaudio's
`Spectrogram(n_fft=512, win_length=512, hop_length=160, center=True, power=2)` (periodic
Hann window, reflect padding), then `log(x + 1e-7)` and `Normalize(0, 12)`. For 5 s this
gives [257, 501]; for 3 s (NoPrior) [257, 301]. Everything here is NumPy: it runs in the
input workers.
"""

import ml_collections
import numpy as np


def num_samples(audio: ml_collections.ConfigDict) -> int:
  return int(round(audio.sample_rate * audio.seconds))


def spectrogram_shape(audio: ml_collections.ConfigDict) -> tuple[int, int]:
  """(frequency bins, frames) of `log_spectrogram` for the config's clip length."""
  return audio.n_fft // 2 + 1, 1 + num_samples(audio) // audio.hop_length


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
  log(|STFT|^2 + log_offset) / log_divisor."""
  n_fft, hop = audio.n_fft, audio.hop_length
  padded = np.pad(np.asarray(waveform, np.float64), n_fft // 2, mode='reflect')
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
  power = np.abs(np.fft.rfft(frames * hann_window(audio.win_length, n_fft), axis=-1)) ** 2
  return (np.log(power.T + audio.log_offset) / audio.log_divisor).astype(np.float32)


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
