"""avloc.metrics.localization against hand counts, literal transcriptions of the official
evaluation code (EZ-VSL / LVS / JSA release), per-pixel loops and the real annotation files."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from avloc.metrics import localization

SHARED = Path(__file__).resolve().parents[2] / 'shared'
METADATA = SHARED / 'metadata'


def _metadata(name):
  path = METADATA / name
  if not path.exists():
    pytest.skip(f'{path} not available')
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- references


def _official_box_map(boxes, size=224):
  """LVS `testset_gt('vggss')`: int(224 * max(x, 0)), temp[ymin:ymax, xmin:xmax] = 1."""
  gt_map = np.zeros([size, size])
  for box in boxes:
    xmin, ymin, xmax, ymax = [int(size * max(x, 0)) for x in box]
    gt_map[ymin:ymax, xmin:xmax] = 1
  return gt_map


def _official_flickr_map(pixel_boxes, size=224):
  """LVS `testset_gt('flickr')` on 256-canvas pixel boxes: one vote per box, / 2, clip 1."""
  gt_map = np.zeros([size, size])
  for box in pixel_boxes:
    xmin, ymin, xmax, ymax = [int(size * int(v) / 256) for v in box]
    temp = np.zeros([size, size])
    temp[ymin:ymax, xmin:xmax] = 1
    gt_map += temp
  gt_map /= 2
  gt_map[gt_map > 1] = 1
  return gt_map


def _pixel_loop_box_map(boxes, height, width):
  """Per-pixel definition: pixel (r, c) is inside when floor(W x0) <= c < floor(W x1) and
  floor(H y0) <= r < floor(H y1), coordinates clipped to [0, 1]."""
  edges = [(int(width * min(max(x0, 0), 1)), int(height * min(max(y0, 0), 1)),
            int(width * min(max(x1, 0), 1)), int(height * min(max(y1, 0), 1)))
           for x0, y0, x1, y1 in boxes]
  out = np.zeros((height, width), np.float32)
  for r in range(height):
    for c in range(width):
      out[r, c] = any(a <= c < b and top <= r < bottom for a, top, b, bottom in edges)
  return out


def _official_normalize(value):
  """`utils.normalize_img` of EZ-VSL / LVS / JSA."""
  vmin, vmax = value.min(), value.max()
  if not (vmax - vmin) == 0:
    value = (value - vmin) / (vmax - vmin)
  return value


def _official_ciou(infer, gtmap, thres):
  """`Evaluator.cal_CIOU` of EZ-VSL: infer_map[infer >= thres] = 1, then the cIoU."""
  infer_map = np.zeros(gtmap.shape)
  infer_map[infer >= thres] = 1
  return np.sum(infer_map * gtmap) / (np.sum(gtmap) + np.sum(infer_map * (gtmap == 0)))


def _official_summary(cious):
  """EZ-VSL `finalize_AP50`, `finalize_AUC` (sklearn.metrics.auc), `finalize_cIoU`."""
  rates = [np.sum(np.array(cious) >= 0.05 * i) / len(cious) for i in range(21)]
  thresholds = [0.05 * i for i in range(21)]
  return {'ap50': np.mean(np.array(cious) >= 0.5), 'auc': sk_metrics.auc(thresholds, rates),
          'ciou': np.mean(np.array(cious))}


def _random_boxes(rng, n):
  corners = rng.uniform(-0.1, 1.1, size=(n, 2, 2))
  return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


# ----------------------------------------------------------------------------- box maps


def test_box_map_hand_counted():
  # x 0.25..1.0 on 4 columns -> columns 1, 2, 3; y 0.5..1.0 on 4 rows -> rows 2, 3.
  expected = np.zeros((4, 4), np.float32)
  expected[2:4, 1:4] = 1
  got = localization.box_map([[0.25, 0.5, 1.0, 1.0]], size=(4, 4))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, expected)


def test_box_map_truncates_and_excludes_the_end():
  # 0.3 * 10 = 3.0000000000000004 -> 3; 0.69 * 10 = 6.9 -> 6 (exclusive): rows/cols 3..5.
  got = localization.box_map([[0.3, 0.3, 0.69, 0.69]], size=(10, 10))
  assert got.sum() == 9 and got[3:6, 3:6].all()
  # A box thinner than a pixel covers nothing; an empty list gives zeros.
  assert localization.box_map([[0.5, 0.5, 0.502, 0.9]]).sum() == 0
  assert localization.box_map(np.zeros((0, 4))).sum() == 0


def test_box_map_union_and_rectangular_size():
  boxes = [[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 1.0]]
  got = localization.box_map(boxes, size=(8, 12))
  np.testing.assert_array_equal(got, _pixel_loop_box_map(boxes, 8, 12))
  assert set(np.unique(got)) == {0.0, 1.0}


def test_box_map_matches_official_code_on_random_boxes():
  rng = np.random.default_rng(0)
  for n in [1, 2, 5]:
    boxes = _random_boxes(rng, n)
    np.testing.assert_array_equal(localization.box_map(boxes), _official_box_map(boxes))


def test_box_map_matches_pixel_loop_on_random_boxes():
  rng = np.random.default_rng(1)
  boxes = _random_boxes(rng, 3)
  np.testing.assert_array_equal(localization.box_map(boxes, size=(32, 48)),
                                _pixel_loop_box_map(boxes, 32, 48))


def test_float32_storage_keeps_pixel_aligned_edges():
  # Boxes are stored as float32; an edge annotated on pixel k must stay on pixel k.
  k = np.arange(225)
  stored = (k / 224).astype(np.float32)
  edges = [int(np.argmax(localization.box_map([[v, 0, 1, 1]])[0])) if v < 1 else 224
           for v in stored]
  np.testing.assert_array_equal(edges, k)


def test_box_map_rejects_bad_boxes():
  with pytest.raises(ValueError, match=r'boxes must be \[N, 4\]'):
    localization.box_map([0.1, 0.2, 0.3, 0.4])
  with pytest.raises(ValueError, match='non-finite'):
    localization.box_map([[0.1, np.nan, 0.3, 0.4]])


# ----------------------------------------------------------------------------- consensus


def test_consensus_map_hand_counted():
  boxes = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]
  got = localization.consensus_map(boxes, [0, 1, 2], size=(4, 4))
  # Top-left: 2 votes -> 1; top-right / bottom-left: 1 vote -> 0.5; bottom-right: 2 -> 1.
  expected = np.array([[1, 1, .5, .5], [1, 1, .5, .5], [.5, .5, 1, 1], [.5, .5, 1, 1]])
  np.testing.assert_array_equal(got, expected)
  assert got.dtype == np.float32


def test_consensus_map_unites_boxes_of_one_annotator():
  boxes = [[0.0, 0.0, 0.5, 1.0], [0.25, 0.0, 1.0, 1.0]]
  # One annotator: the overlap counts once -> 0.5 everywhere. Two annotators: 1 on overlap.
  np.testing.assert_array_equal(localization.consensus_map(boxes, [7, 7], size=(1, 4)),
                                [[0.5, 0.5, 0.5, 0.5]])
  np.testing.assert_array_equal(localization.consensus_map(boxes, [0, 1], size=(1, 4)),
                                [[0.5, 1.0, 0.5, 0.5]])


def test_consensus_map_rejects_bad_groups():
  with pytest.raises(ValueError, match=r'groups must be \[N\] = \[2\]'):
    localization.consensus_map([[0, 0, 1, 1], [0, 0, 1, 1]], [0])


def test_mask_map_is_the_union():
  masks = np.zeros((3, 4, 4), np.uint8)
  masks[0, 0, 0] = 255
  masks[1, 3, 3] = 1
  got = localization.mask_map(masks)
  assert got.dtype == np.float32 and got.sum() == 2 and got[0, 0] == got[3, 3] == 1
  assert localization.mask_map(np.zeros((0, 5, 6))).shape == (5, 6)
  with pytest.raises(ValueError, match=r'masks must be \[K, H, W\]'):
    localization.mask_map(np.zeros((4, 4)))


# ----------------------------------------------------------------------------- real files


def test_vggss_maps_match_official_code():
  annotations = _metadata('vggss.json')
  for annotation in annotations:
    stored = np.asarray(annotation['bbox'], np.float32)  # as avloc's TFRecords hold them
    expected = _official_box_map(annotation['bbox'])
    np.testing.assert_array_equal(localization.box_map(stored), expected,
                                  err_msg=annotation['file'])
  for annotation in annotations[:3]:
    np.testing.assert_array_equal(localization.box_map(np.float32(annotation['bbox'])),
                                  _pixel_loop_box_map(annotation['bbox'], 224, 224))


def test_flickr_consensus_maps_match_official_code():
  boxes = _metadata('flickr_test250_boxes.json')['boxes']
  assert len(boxes) == 250
  for name, pixel_boxes in boxes.items():
    normalized = np.asarray(pixel_boxes, np.float32) / np.float32(256)
    got = localization.consensus_map(normalized, np.arange(len(pixel_boxes)))
    np.testing.assert_array_equal(got, _official_flickr_map(pixel_boxes), err_msg=name)


def test_s4_box_maps_match_official_code():
  # JSA release `dataset_avs.bbox2gtmap`: temp[int(ymin):int(ymax), int(xmin):int(xmax)] on
  # pixel boxes of the 224x224 frame.
  for entry in _metadata('s4_box.json'):
    xmin, ymin, xmax, ymax = entry['gt_box']
    expected = np.zeros((224, 224))
    expected[int(ymin):int(ymax), int(xmin):int(xmax)] = 1
    normalized = np.asarray([entry['gt_box']], np.float32) / np.float32(224)
    np.testing.assert_array_equal(localization.box_map(normalized), expected,
                                  err_msg=entry['image'])


def test_music_duet_box_maps_match_pixel_definition():
  # bbox_src* are normalized x, y, w, h (DSOL `eval_duet.py` rasterizes
  # int(224 x) : int(224 x + 224 w)); converted to xyxy and stored as float32.
  for entry in _metadata('music_duet.json')[:300]:
    for key in ('bbox_src1', 'bbox_src2'):
      x, y, w, h = entry[key]
      expected = np.zeros((224, 224))
      expected[int(224 * y):int(224 * (y + h)), int(224 * x):int(224 * (x + w))] = 1
      stored = np.asarray([[x, y, x + w, y + h]], np.float32)
      np.testing.assert_array_equal(localization.box_map(stored), expected,
                                    err_msg=f'{entry["file"]} {key}')


# ----------------------------------------------------------------------------- binarize


def test_normalize_minmax():
  np.testing.assert_allclose(localization.normalize_minmax(np.array([2.0, 4.0, 6.0])),
                             [0.0, 0.5, 1.0])
  constant = np.full((3, 3), 0.7, np.float32)
  out = localization.normalize_minmax(constant)
  np.testing.assert_array_equal(out, constant)  # unchanged, as the official code: no NaN
  assert localization.normalize_minmax(np.ones((2, 2), np.float32)).dtype == np.float32
  assert localization.normalize_minmax(np.arange(4).reshape(2, 2)).dtype == np.float32


def test_binarize_minmax_hand_counted():
  heatmap = np.array([[0.0, 5.0], [6.0, 10.0]])  # normalized: 0, 0.5, 0.6, 1
  np.testing.assert_array_equal(localization.binarize(heatmap, 'minmax', 0.6),
                                [[False, False], [True, True]])  # >= keeps 0.6


def test_binarize_median_hand_counted():
  heatmap = np.arange(16.0).reshape(4, 4)[::-1]
  got = localization.binarize(heatmap, 'median')
  assert got.sum() == 8 and got[:2].all()  # sort(map)[8] = 8 -> values 8..15
  # Ties at the cut are kept (>=): 12 zeros and 4 ones -> sort(map)[8] = 0 -> everything.
  ties = np.zeros((4, 4))
  ties[0] = 1
  assert localization.binarize(ties, 'median').all()


def test_binarize_constant_maps():
  constant = np.full((4, 4), 0.3)
  assert localization.binarize(constant, 'median').all()
  assert not localization.binarize(constant, 'minmax', 0.6).any()
  assert localization.binarize(np.full((4, 4), 0.8), 'minmax', 0.6).all()


def test_binarize_matches_official_code_on_random_maps():
  rng = np.random.default_rng(2)
  for trial in range(5):
    heatmap = rng.normal(size=(224, 224)).astype(np.float32)
    if trial == 4:
      heatmap = np.round(heatmap)  # many ties
    pred = _official_normalize(heatmap)
    median = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] * 0.5)]
    gt = np.ones((224, 224))
    official = np.zeros((224, 224))
    official[pred >= median] = 1
    np.testing.assert_array_equal(localization.binarize(heatmap, 'median'), official)
    official = np.zeros((224, 224))
    official[pred >= 0.6] = 1
    np.testing.assert_array_equal(localization.binarize(heatmap, 'minmax', 0.6), official)
    assert _official_ciou(pred, gt, 0.6) == localization.ciou(official, gt)


def test_binarize_errors():
  heatmap = np.zeros((4, 4))
  with pytest.raises(ValueError, match="'minmax' needs a threshold"):
    localization.binarize(heatmap, 'minmax')
  with pytest.raises(ValueError, match="'median' takes no threshold"):
    localization.binarize(heatmap, 'median', 0.5)
  with pytest.raises(ValueError, match="unknown binarization protocol 'otsu'"):
    localization.binarize(heatmap, 'otsu', 0.5)
  with pytest.raises(ValueError, match=r'heatmap must be \[H, W\]'):
    localization.binarize(np.zeros((1, 4, 4)), 'median')


# ----------------------------------------------------------------------------- cIoU


def test_ciou_hand_counted():
  pred = np.zeros((4, 4), bool)
  pred[0, :4] = True  # 4 pixels
  gt = np.zeros((4, 4))
  gt[0, 2:4] = 1
  gt[1, :4] = 1  # 6 pixels, 2 shared with pred
  assert localization.ciou(pred, gt) == pytest.approx(2 / (6 + 2))
  # Fractional consensus: a 0.5 pixel hit counts 0.5, its gt weight 0.5 in the denominator.
  half = np.zeros((4, 4))
  half[0, 0] = 0.5
  half[3, 3] = 1.0
  assert localization.ciou(pred, half) == pytest.approx(0.5 / (1.5 + 3))


def test_ciou_matches_official_code_on_random_maps():
  rng = np.random.default_rng(3)
  for _ in range(10):
    scores = rng.uniform(size=(224, 224))
    gt = rng.choice([0.0, 0.5, 1.0], size=(224, 224), p=[0.6, 0.2, 0.2])
    official = _official_ciou(scores, gt, 0.7)
    assert localization.ciou(scores >= 0.7, gt) == pytest.approx(official, rel=1e-12)


def test_ciou_boundaries():
  zeros = np.zeros((4, 4))
  ones = np.ones((4, 4))
  assert localization.ciou(zeros, zeros) == 0.0  # official: 0 / 0; avloc: 0, not NaN
  assert localization.ciou(ones, zeros) == 0.0
  assert localization.ciou(zeros, ones) == 0.0  # all-zero prediction
  assert localization.ciou(ones, ones) == 1.0
  with pytest.raises(ValueError, match='differ in shape'):
    localization.ciou(np.zeros((4, 4)), np.zeros((4, 5)))


# ----------------------------------------------------------------------------- summaries


def test_summarize_cious_hand_counted():
  got = localization.summarize_cious([0.2, 0.5, 0.9, 1.0])
  assert got['ap50'] == 0.75
  assert got['ciou'] == pytest.approx(0.65)
  # Success rates: 1 for t <= 0.2, 0.75 for t in (0.2, 0.5], 0.5 up to 0.9, 0.25 up to 1.
  rates = np.array([1.0] * 5 + [0.75] * 6 + [0.5] * 8 + [0.25] * 2)
  assert got['auc'] == pytest.approx(np.sum(0.05 * (rates[1:] + rates[:-1]) / 2))


def test_summarize_cious_uses_the_official_float_thresholds():
  # 0.05 * 3 = 0.15000000000000002 > 0.15, so a cIoU of exactly 0.15 misses that threshold.
  got = localization.summarize_cious([0.15])
  rates = np.array([1.0] * 3 + [0.0] * 18)
  assert got['auc'] == pytest.approx(np.sum(0.05 * (rates[1:] + rates[:-1]) / 2))


def test_summarize_cious_matches_official_code():
  rng = np.random.default_rng(4)
  for n in [1, 7, 250]:
    cious = rng.uniform(size=n) ** 2
    cious[: n // 3] = np.round(cious[: n // 3] * 20) / 20  # values on the thresholds
    got = localization.summarize_cious(cious)
    expected = _official_summary(list(cious))
    assert got.keys() == expected.keys()
    for key in got:
      assert got[key] == pytest.approx(expected[key], abs=1e-15), key
  assert localization.summarize_cious(cious) == got  # deterministic


def test_summarize_cious_rejects_empty():
  with pytest.raises(ValueError, match='non-empty 1-D'):
    localization.summarize_cious([])


# ----------------------------------------------------------------------------- OGL


def test_object_guided_map_matches_ezvsl_formula():
  rng = np.random.default_rng(5)
  heatmap = rng.normal(size=(16, 16)).astype(np.float32)
  prior = rng.uniform(size=(16, 16)).astype(np.float32)
  expected = _official_normalize(_official_normalize(heatmap) * 0.4
                                 + _official_normalize(prior) * (1 - 0.4))
  np.testing.assert_allclose(localization.object_guided_map(heatmap, prior), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(localization.object_guided_map(heatmap, prior, weight=1.0),
                             _official_normalize(heatmap), rtol=1e-6)
  with pytest.raises(ValueError, match='differ in shape'):
    localization.object_guided_map(heatmap, prior[:8])
