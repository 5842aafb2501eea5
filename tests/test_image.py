"""Frame decoding and transforms (avloc.data.image)."""

import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from avloc import config as config_lib
from avloc.data import image


def _encoded(array, mode, fmt='PNG'):
  buffer = io.BytesIO()
  Image.fromarray(array).convert(mode).save(buffer, format=fmt)
  return buffer.getvalue()


@pytest.mark.parametrize('mode,fmt', [('L', 'PNG'), ('RGBA', 'PNG'), ('P', 'PNG'),
                                      ('CMYK', 'JPEG'), ('RGB', 'JPEG'), ('I;16', 'PNG')])
def test_any_image_mode_decodes_to_rgb_uint8(mode, fmt):
  array = np.random.default_rng(0).integers(0, 256, (12, 20, 3)).astype(np.uint8)
  decoded = image.decode_image(_encoded(array, mode, fmt))
  assert decoded.shape == (12, 20, 3) and decoded.dtype == np.uint8


def test_transparent_pixels_composite_on_black():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255
  rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
  decoded = image.decode_image(_encoded(rgba, 'RGBA'))
  np.testing.assert_array_equal(decoded[0, 0], [255, 0, 0])
  np.testing.assert_array_equal(decoded[3, 0], [0, 0, 0])


def _config(**overrides):
  cfg = ml_collections.ConfigDict(config_lib.image_config())
  cfg.update(size=32, train_resize=36, **overrides)
  return cfg


def test_train_transform_crops_the_resized_image_and_is_deterministic():
  array = np.random.default_rng(0).integers(0, 256, (48, 96, 3)).astype(np.uint8)
  out = image.train_transform(array, np.random.default_rng(5), _config(flip=False))
  again = image.train_transform(array, np.random.default_rng(5), _config(flip=False))
  np.testing.assert_array_equal(out, again)
  assert out.shape == (32, 32, 3)
  resized = image.resize(array, (36, 72))  # shorter side -> train_resize
  matches = [(t, l) for t in range(5) for l in range(41)
             if np.array_equal(resized[t:t + 32, l:l + 32], out)]
  assert matches, 'the output is a crop of the bicubic resize'


def test_hard_augment_changes_colours_but_not_the_shape():
  array = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
  rng = np.random.default_rng(1)
  outs = [image.train_transform(array, rng, _config(hard_augment=True)) for _ in range(8)]
  assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) == 8


def test_gaussian_blur_preserves_a_constant_image_and_smooths_an_impulse():
  flat = np.full((9, 9, 3), 77, np.uint8)
  np.testing.assert_array_equal(image.gaussian_blur(flat, 1.0), flat)
  impulse = np.zeros((9, 9, 3), np.uint8)
  impulse[4, 4] = 255
  blurred = image.gaussian_blur(impulse, 1.0).astype(float)
  kernel = np.exp(-0.5 * np.arange(-2, 3) ** 2)
  kernel /= kernel.sum()
  np.testing.assert_allclose(blurred[2:7, 2:7, 0], 255 * np.outer(kernel, kernel), atol=0.51)


def test_color_jitter_with_zero_strength_is_the_identity():
  array = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
  out = image.color_jitter(array, np.random.default_rng(0), strength=0.0, hue=0.0)
  np.testing.assert_array_equal(out, array)
