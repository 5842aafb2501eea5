"""Log spectrogram (avloc.data.audio) against torch.stft / numpy references."""

import numpy as np
import pytest

from avloc import config as config_lib
from avloc.data import audio


def test_shape_is_the_papers_257_by_501_for_5_seconds():
  assert audio.spectrogram_shape(config_lib.audio_config(5.0)) == (257, 501)
  assert audio.spectrogram_shape(config_lib.audio_config(3.0)) == (257, 301)
  waveform = np.random.default_rng(0).normal(size=80000).astype(np.float32)
  assert audio.log_spectrogram(waveform, config_lib.audio_config(5.0)).shape == (257, 501)


def test_matches_torch_stft_as_torchaudio_spectrogram_computes_it():
  torch = pytest.importorskip('torch')
  cfg = config_lib.audio_config(1.0)
  waveform = np.random.default_rng(1).uniform(-1, 1, 16000).astype(np.float32)
  spec = torch.stft(torch.from_numpy(waveform.astype(np.float64)), n_fft=512, hop_length=160,
                    win_length=512, window=torch.hann_window(512, dtype=torch.float64),
                    center=True, pad_mode='reflect', return_complex=True)
  reference = np.log(spec.abs().numpy() ** 2 + 1e-7) / 12.0
  np.testing.assert_allclose(audio.log_spectrogram(waveform, cfg), reference, atol=1e-5)


def test_matches_a_direct_dft_with_a_shorter_window():
  cfg = config_lib.audio_config(0.1)
  cfg.update(n_fft=64, win_length=48, hop_length=16)
  x = np.random.default_rng(2).normal(size=1600)
  padded = np.pad(x, 32, mode='reflect')
  window = np.zeros(64)
  window[8:56] = np.hanning(49)[:48]  # periodic Hann of 48, centred in 64
  frames = np.stack([padded[t * 16:t * 16 + 64] for t in range(1 + 1600 // 16)])
  k, n = np.arange(33)[:, None], np.arange(64)[None]
  dft = (frames * window) @ np.exp(-2j * np.pi * k * n / 64).T
  reference = np.log(np.abs(dft.T) ** 2 + 1e-7) / 12.0
  np.testing.assert_allclose(audio.log_spectrogram(x, cfg), reference, atol=1e-5)


def test_fit_length_takes_the_middle_or_tiles_short_clips():
  x = np.arange(10.0)
  np.testing.assert_array_equal(audio.fit_length(x, 4), [3, 4, 5, 6])
  np.testing.assert_array_equal(audio.fit_length(x[:3], 7), [0, 1, 2, 0, 1, 2, 0])
  with pytest.raises(ValueError, match='empty waveform'):
    audio.fit_length(x[:0], 4)


def test_spec_augment_zeroes_one_band_per_axis_narrower_than_the_width():
  spec = np.ones((257, 101), np.float32)
  rng = np.random.default_rng(0)
  for _ in range(20):
    out = audio.spec_augment(spec, rng, max_width=10)
    zero_rows = np.flatnonzero((out == 0).all(axis=1))
    zero_cols = np.flatnonzero((out == 0).all(axis=0))
    assert len(zero_rows) < 10 and len(zero_cols) < 10
    assert np.all(np.diff(zero_rows) == 1) and np.all(np.diff(zero_cols) == 1)
  assert spec.min() == 1  # the input is not modified
