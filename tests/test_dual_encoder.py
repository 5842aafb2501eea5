"""The LVS / EZ-VSL / FNAC network (models/dual_encoder.py) against NumPy: normalized
cells and audio, every image's cosine map with every clip's audio, and the inference
outputs. Equality with the releases' torch modules: tests/test_ezvsl.py, test_lvs.py,
test_fnac.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from avloc import methods
from avloc.data import audio as audio_lib
from avloc.models import dual_encoder
from configs import ezvsl
from tests import exports


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_cosine_maps_and_inference_outputs_match_numpy():
  config = ezvsl.get_config('synthetic')
  config.data.image.update(size=64, train_resize=72)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.model.update(width=4, dim=16)
  model = methods.get_method(config.method).build_model(config)
  rng = np.random.default_rng(0)
  freq, frames = audio_lib.spectrogram_shape(config.data.audio)
  image = jnp.asarray(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
  spectrogram = jnp.asarray(rng.normal(size=(3, freq, frames, 1)), jnp.float32)
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = exports.random_variables(jax.eval_shape(
      functools.partial(model.init, train=False), keys, image, spectrogram))
  @jax.jit
  def run(variables, image, spectrogram):  # one compilation: encoders and inference pass
    return (model.apply(variables, image, spectrogram, train=False, method=model.encode),
            model.apply(variables, image, spectrogram, method=model.localize))

  (features, audio), located = jax.tree_util.tree_map(np.asarray, run(variables, image,
                                                                       spectrogram))
  out = jax.tree_util.tree_map(np.asarray, dual_encoder.audio_visual(features, audio))  # __call__

  batch, height, width, dim = features.shape
  cells = _unit(features.reshape(batch, height * width, dim))
  np.testing.assert_allclose(out['cells'], cells, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out['audio'], _unit(audio), rtol=1e-4, atol=1e-5)
  similarity = np.einsum('nkd,md->nmk', cells, _unit(audio))  # image n, audio m, cell k
  np.testing.assert_allclose(out['similarity'], similarity, rtol=1e-4, atol=1e-5)
  own = similarity[np.arange(batch), np.arange(batch)].reshape(batch, height, width)
  np.testing.assert_allclose(located['heatmap'], own, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(located['image_embedding'], cells.mean(1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(located['audio_embedding'], _unit(audio), rtol=1e-4, atol=1e-5)


def test_audio_visual_takes_any_batch_of_encoder_outputs():
  rng = np.random.default_rng(1)
  out = dual_encoder.audio_visual(jnp.asarray(rng.normal(size=(2, 3, 5, 8)), jnp.float32),
                                  jnp.asarray(rng.normal(size=(2, 8)), jnp.float32))
  assert out['cells'].shape == (2, 15, 8) and out['similarity'].shape == (2, 2, 15)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out['cells']), axis=-1), 1.0, rtol=1e-5)
