"""Map operations: bicubic upsampling equals PyTorch's F.interpolate(bicubic); min-max."""

import jax.numpy as jnp
import numpy as np
import pytest

from avloc.models import maps


@pytest.mark.parametrize('in_shape,out_shape', [((7, 7), (224, 224)), ((7, 14), (224, 448)),
                                                ((4, 5), (9, 13)), ((6, 6), (3, 3))])
def test_matches_torch_bicubic(in_shape, out_shape):
  torch = pytest.importorskip('torch')
  values = np.random.default_rng(0).random((2,) + in_shape).astype(np.float32)
  expected = torch.nn.functional.interpolate(
      torch.from_numpy(values)[:, None], size=out_shape, mode='bicubic', align_corners=False)
  np.testing.assert_allclose(maps.upsample_bicubic(values, out_shape),
                             expected[:, 0].numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(maps.upsample_bicubic(jnp.asarray(values), out_shape),
                             expected[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_interpolation_rows_sum_to_one_and_constant_maps_stay_constant():
  matrix = maps.bicubic_matrix(7, 224)
  np.testing.assert_allclose(matrix.sum(1), 1.0, atol=1e-12)
  np.testing.assert_allclose(maps.upsample_bicubic(np.full((1, 7, 7), 0.3), (50, 60)), 0.3,
                             rtol=1e-6)


def test_minmax_normalize_per_map_and_constant_maps():
  values = jnp.asarray([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
  np.testing.assert_allclose(maps.minmax_normalize(values),
                             [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]]], rtol=1e-6)
