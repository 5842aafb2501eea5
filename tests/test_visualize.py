"""Overlays, colour bars, labels, grids and PNG files (avloc/visualize.py)."""

import io

import numpy as np
from etils import epath
from PIL import Image

from avloc import visualize


def test_colorize_is_jet_from_dark_blue_to_dark_red():
  colours = visualize.colorize(np.array([[0.0, 0.5, 1.0, -3.0, 7.0, np.nan]]))
  assert colours.dtype == np.uint8 and colours.shape == (1, 6, 3)
  np.testing.assert_array_equal(colours[0, 0], [0, 0, 128])  # cv2 JET at 0
  np.testing.assert_array_equal(colours[0, 2], [128, 0, 0])  # and at 1
  green = colours[0, 1].astype(int)  # the middle is green-dominated
  assert green[1] > 200 and green[1] > green[0] and green[1] > green[2]
  np.testing.assert_array_equal(colours[0, 3], colours[0, 0])  # clipped below
  np.testing.assert_array_equal(colours[0, 4], colours[0, 2])  # and above
  np.testing.assert_array_equal(colours[0, 5], colours[0, 0])  # NaN counts as 0


def test_normalize_min_max_and_constant_maps():
  np.testing.assert_allclose(visualize.normalize(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
  constant = visualize.normalize(np.full((2, 2), 7.0))
  assert constant.dtype == np.float32 and not constant.any()


def test_overlay_blends_and_resizes_the_heatmap():
  image = np.full((4, 6, 3), 100, np.uint8)
  heatmap = np.zeros((4, 6))
  out = visualize.overlay(image, heatmap, weight=0.25)
  np.testing.assert_array_equal(out[0, 0], np.round(0.75 * 100 + 0.25 * np.array([0, 0, 128])))
  small = visualize.overlay(image, np.ones((2, 3)), weight=1.0)  # 2x3 map on a 4x6 frame
  assert small.shape == (4, 6, 3)
  np.testing.assert_array_equal(small[2, 3], [128, 0, 0])


def test_overlay_masks_tints_each_object_its_colour():
  image = np.zeros((3, 3, 3), np.uint8)
  masks = np.zeros((2, 3, 3), bool)
  masks[0, 0, 0] = masks[1, 2, 2] = True
  out = visualize.overlay_masks(image, masks, weight=1.0)
  np.testing.assert_array_equal(out[0, 0], visualize.OBJECT_COLOURS[0])
  np.testing.assert_array_equal(out[2, 2], visualize.OBJECT_COLOURS[1])
  assert not out[1, 1].any()


def test_colour_bar_runs_from_one_at_the_top_to_zero_at_the_bottom():
  bar = visualize.colour_bar(10, width=3)
  assert bar.shape == (10, 3, 3)
  np.testing.assert_array_equal(bar[0, 0], visualize.colorize(np.array([1.0]))[0])
  np.testing.assert_array_equal(bar[-1, 2], visualize.colorize(np.array([0.0]))[0])


def test_label_writes_on_a_dark_band_in_the_corner():
  image = np.full((20, 60, 3), 200, np.uint8)
  out = visualize.label(image, 'ca')
  assert out.shape == image.shape and (out[:3, :3] == 0).all()  # the band
  assert out[:12, :20].max() > 150  # light text on it
  np.testing.assert_array_equal(out[15:, 40:], image[15:, 40:])  # the rest untouched


def test_grid_tiles_rows_with_white_padding():
  a, b, c = (np.full((h, w, 3), v, np.uint8) for h, w, v in ((2, 3, 10), (2, 4, 20), (5, 1, 30)))
  out = visualize.grid([[a, b], [c]], pad=1)
  assert out.shape == (2 + 1 + 5 + 1, 3 + 1 + 4 + 1, 3)
  np.testing.assert_array_equal(out[:2, :3], a)
  np.testing.assert_array_equal(out[:2, 4:8], b)
  np.testing.assert_array_equal(out[3:8, :1], c)
  assert (out[:2, 3] == 255).all() and (out[8, :] == 255).all()


def test_save_png_writes_a_png_locally_and_to_a_bucket(tmp_path, gcs):
  image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  for path in (tmp_path / 'grid.png', epath.Path('gs://bucket/run/eval/grid.png')):
    visualize.save_png(path, image)
    with Image.open(io.BytesIO(epath.Path(path).read_bytes())) as png:
      assert png.format == 'PNG'
      np.testing.assert_array_equal(np.asarray(png), image)
  assert [p.name for p in tmp_path.iterdir()] == ['grid.png']
  assert list(gcs) == ['bucket/run/eval/grid.png']
