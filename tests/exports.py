"""Inference exports of tiny JSA / NoPrior models with random variables, for tests of
the predict path (no training, no compilation)."""

import functools

import jax
import ml_collections
import numpy as np

from avloc import checkpointing, methods, train
from configs import noprior as noprior_config
from tests import test_train


def tiny_jsa(size: int = 48) -> ml_collections.ConfigDict:
  """tests/test_train.py's tiny JSA at `size` px (48: a 3x3 feature grid)."""
  config = test_train.tiny_config()
  config.data.image.update(size=size, train_resize=size + 4)
  return config


def tiny_noprior(size: int = 48) -> ml_collections.ConfigDict:
  config = noprior_config.get_config('synthetic')
  config.data.image.update(size=size, train_resize=size + 4)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.data.num_workers = 0
  config.model.update(dim=32, width=4, stem_pool=False, image_last_stride=2,
                      max_objects=3)  # dim = 8 * width
  return config


def random_variables(abstract, seed: int = 0):
  """Variables of the shapes in `abstract` (`jax.eval_shape` of an init): BatchNorm
  statistics and scales 1 / means and biases 0, other leaves normal with std fan_in^-0.5;
  no compilation, unlike `init`."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('var', 'scale'):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ('mean', 'bias'):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return rng.normal(0, fan_in**-0.5, leaf.shape).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def write_export(config: ml_collections.ConfigDict, workdir) -> str:
  """Writes an inference export of random variables (the model's shapes; BatchNorm
  statistics 0 / 1) into `workdir`; returns it."""
  model = methods.get_method(config.method).build_model(config)
  shapes = train.input_shapes(config, 1, train=False)
  key = jax.random.key(0)
  abstract = jax.eval_shape(functools.partial(model.init, train=True),
                            {'params': key, 'mask': key}, shapes['image'], shapes['spectrogram'])
  exporter = checkpointing.Exporter(str(workdir), best_metric='')
  exporter.export(0, random_variables(abstract), config, None)
  exporter.close()
  return str(workdir)
