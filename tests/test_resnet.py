"""ResNet-18 trunk and the image / audio encoders (models/resnet.py): strides, parameter
count, pixel normalization, the projection switch and the audio poolings. Equality with
torchvision's module, weights loaded: tests/test_convert.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc.constants import IMAGENET_MEAN, IMAGENET_STD
from avloc.models import resnet
from tests import exports


def _shapes(module, *inputs, train=False):
  """(output shape, parameter count, variables) without compiling (eval_shape)."""
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.eval_shape(functools.partial(module.init, train=train), rngs, *inputs)
  out = jax.eval_shape(functools.partial(module.apply, train=train, rngs=rngs), variables,
                       *inputs)
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']))
  return out.shape, count, variables


def test_paper_trunk_has_torchvisions_parameters_and_stride_32():
  image = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  shape, count, variables = _shapes(resnet.ResNet18(width=64), image)
  assert shape == (1, 7, 7, 512)
  # torchvision resnet18: 11,689,512 parameters, of which fc holds 512 * 1000 + 1000.
  assert count == 11_689_512 - 513_000
  names = set(variables['params'])
  assert {'conv1', 'bn1', 'layer1_0', 'layer4_1'} <= names and len(names) == 10
  # A projected residual exactly where the stride or the width changes.
  for stage in range(1, 5):
    for block in range(2):
      has = 'downsample_conv' in variables['params'][f'layer{stage}_{block}']
      assert has == (stage > 1 and block == 0)


@pytest.mark.parametrize('stem_pool,last_stride,side', [
    (True, 2, 4), (False, 2, 8), (True, 1, 8), (False, 1, 16)])
def test_stem_pool_and_last_stride_set_the_feature_grid(stem_pool, last_stride, side):
  image = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32)
  shape, _, _ = _shapes(resnet.ResNet18(width=4, stem_pool=stem_pool, last_stride=last_stride),
                        image)
  assert shape == (2, side, side, 32)


def test_normalize_pixels_is_torchvisions_to_tensor_and_normalize():
  image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
  expected = (image / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
  got = resnet.normalize_pixels(jnp.asarray(image), IMAGENET_MEAN, IMAGENET_STD)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)


def test_image_encoder_projects_unless_told_not_to():
  image = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8)
  shape, _, variables = _shapes(resnet.ImageEncoder(dim=24, width=4), image)
  assert shape == (2, 2, 2, 24) and 'projection' in variables['params']
  shape, _, variables = _shapes(resnet.ImageEncoder(dim=32, width=4, projection=False), image)
  assert shape == (2, 2, 2, 32) and 'projection' not in variables['params']
  with pytest.raises(ValueError, match=r'trunk output \(32 channels = 8 \* width\), but dim '
                     'is 24'):
    _shapes(resnet.ImageEncoder(dim=24, width=4, projection=False), image)


@pytest.mark.parametrize('pool,shape', [('frequency_max', (2, 4, 24)), ('none', (2, 3, 4, 24)),
                                        ('max', (2, 24))])
def test_audio_encoder_poolings(pool, shape):
  spectrogram = jax.ShapeDtypeStruct((2, 65, 101, 1), jnp.float32)  # -> 3 x 4 cells
  got, _, _ = _shapes(resnet.AudioEncoder(dim=24, width=4, pool=pool), spectrogram)
  assert got == shape


def test_audio_max_pool_comes_before_the_projection():
  """'max' projects the max-pooled trunk vector (EZ-VSL's Linear aud_proj), which differs
  from max-pooling projected cells."""
  encoder = resnet.AudioEncoder(dim=6, width=4, pool='max', stem_pool=False)
  spectrogram = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 1)), jnp.float32)
  _, _, abstract = _shapes(encoder, spectrogram)
  variables = exports.random_variables(abstract)  # no compiled init
  embedding = jax.jit(functools.partial(encoder.apply, train=False))(variables, spectrogram)
  trunk = jax.jit(functools.partial(resnet.ResNet18(width=4, stem_pool=False).apply,
                                    train=False))(
      {'params': variables['params']['trunk'],
       'batch_stats': variables['batch_stats']['trunk']}, spectrogram)
  projection = variables['params']['projection']
  pooled = np.asarray(trunk).max(axis=(1, 2))
  expected = pooled @ np.asarray(projection['kernel'])[0, 0] + np.asarray(projection['bias'])
  np.testing.assert_allclose(np.asarray(embedding), expected, rtol=1e-5, atol=1e-5)


def test_unknown_audio_pool_is_rejected():
  with pytest.raises(ValueError, match="pool must be one of"):
    _shapes(resnet.AudioEncoder(dim=8, width=4, pool='mean'),
            jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32))
