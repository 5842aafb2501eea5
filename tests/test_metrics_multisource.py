"""avloc.metrics.multisource: greedy matching on planted cases, AVGN's `calc_ap` and pixel AP
against literal transcriptions / sklearn, and the dataset summaries against hand counts."""

import itertools

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from avloc.metrics import localization
from avloc.metrics import multisource


def _reference_calc_ap(ciou_list, confidence_list, iou_thr=0.5):
  """stoneMo/AVGN utils.py `EvaluatorFull.calc_ap` / `calc_precision_recall`, every entry
  a sounding source (bb > 0)."""
  def precision_recall(confidence_thr):
    true_pos = false_pos = false_neg = 0
    for ciou, confidence in zip(ciou_list, confidence_list):
      if confidence >= confidence_thr:
        if ciou >= iou_thr:
          true_pos += 1
        else:
          false_pos += 1
      else:
        false_neg += 1
    precision = 1. if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1. if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall

  precision, recall, skip_thr = [], [], max(1, len(ciou_list) // 200)
  for thr in np.sort(np.array(confidence_list))[:-1][::-skip_thr]:
    p, r = precision_recall(thr)
    precision.append(p)
    recall.append(r)
  precision_max = [np.max(precision[i:]) for i in range(len(precision))]
  return sum([precision_max[i] * (recall[i + 1] - recall[i])
              for i in range(len(precision_max) - 1)])


def _reference_greedy(cious):
  """Explicit loops: scan all free pairs for the largest cIoU, first found wins ties."""
  cious = np.asarray(cious)
  free_objects, free_sources = set(range(cious.shape[0])), set(range(cious.shape[1]))
  pairs = []
  while free_objects and free_sources:
    best = None
    for k in sorted(free_objects):
      for s in sorted(free_sources):
        if best is None or cious[k, s] > cious[best]:
          best = (k, s)
    pairs.append(best)
    free_objects.discard(best[0])
    free_sources.discard(best[1])
  return pairs


def _result(cious, confidences=None, pixel_aps=None, num_objects=None):
  cious = np.asarray(cious, float)
  return multisource.SampleResult(
      source_cious=cious,
      source_confidences=np.asarray(confidences if confidences is not None
                                    else np.ones_like(cious), float),
      source_pixel_aps=np.asarray(pixel_aps if pixel_aps is not None
                                  else np.zeros_like(cious), float),
      num_objects=len(cious) if num_objects is None else num_objects)


# ----------------------------------------------------------------------------- matching


def test_greedy_match_more_objects_than_sources():
  cious = [[0.9, 0.1], [0.8, 0.7], [0.2, 0.95]]
  assert multisource.greedy_match(cious) == [(2, 1), (0, 0)]  # object 1 is left over


def test_greedy_match_two_objects_competing_for_one_source():
  assert multisource.greedy_match([[0.6], [0.7]]) == [(1, 0)]
  # Greedy, not optimal: taking 0.9 first forces 0.0 for the rest (total 0.9 < 0.8 + 0.8).
  assert multisource.greedy_match([[0.9, 0.8], [0.8, 0.0]]) == [(0, 0), (1, 1)]


def test_greedy_match_zero_objects_and_ties():
  assert multisource.greedy_match(np.zeros((0, 3))) == []
  assert multisource.greedy_match(np.zeros((2, 2))) == [(0, 0), (1, 1)]


def test_greedy_match_matches_reference_loops():
  rng = np.random.default_rng(0)
  for k, s in itertools.product(range(5), range(1, 4)):
    cious = np.round(rng.uniform(size=(k, s)), 1)  # rounded: plenty of ties
    assert multisource.greedy_match(cious) == _reference_greedy(cious)


# ----------------------------------------------------------------------------- AP pieces


def test_object_confidence_is_the_top_quarter_mean():
  assert multisource.object_confidence(np.arange(16.0).reshape(4, 4)) == 13.5
  assert multisource.object_confidence(np.arange(6.0)) == 4.5  # n // 4 with n = 6 -> top 2


def test_pixel_average_precision_matches_sklearn():
  rng = np.random.default_rng(1)
  for _ in range(20):
    labels = rng.uniform(size=200) < 0.3
    options = [rng.uniform(size=200), np.round(rng.uniform(size=200), 1),
               (rng.uniform(size=200) < 0.4).astype(float)]
    scores = options[rng.integers(3)]
    assert multisource.pixel_average_precision(labels, scores) == pytest.approx(
        sk_metrics.average_precision_score(labels, scores), rel=1e-12)
  assert multisource.pixel_average_precision(np.zeros(5), np.arange(5)) == 0.0


def test_pixel_average_precision_hand_counted():
  labels = [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
  scores = [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
  # Score 1: P = 2/3, R = 2/3; score 0: P = 3/10, R = 1.
  assert multisource.pixel_average_precision(labels, scores) == pytest.approx(
      2 / 3 * 2 / 3 + 1 / 3 * 0.3)


def test_detection_ap_hand_counted():
  # Thresholds: sorted confidences without the largest, descending: 0.8, 0.1.
  # t = 0.8: entries 0, 1 detected: TP 1, FP 1, FN 1 -> P 1/2, R 1/2.
  # t = 0.1: all detected: TP 2, FP 1 -> P 2/3, R 1. AP = max(P[0:]) * (1 - 1/2).
  assert multisource.detection_ap([0.6, 0.2, 0.7], [0.9, 0.8, 0.1]) == pytest.approx(1 / 3)
  assert multisource.detection_ap([0.6], [0.9]) == 0.0  # a single entry gives no thresholds


def test_detection_ap_matches_avgn_code():
  rng = np.random.default_rng(2)
  for n in [2, 5, 50, 450]:  # 450 entries: every 2nd threshold (n // 200 = 2)
    cious = rng.uniform(size=n)
    confidences = np.round(rng.uniform(size=n), 2)  # with ties
    for iou_thr in [0.3, 0.5]:
      assert multisource.detection_ap(cious, confidences, iou_thr) == pytest.approx(
          _reference_calc_ap(list(cious), list(confidences), iou_thr), abs=1e-12)


def test_detection_ap_never_detects_unmatched_sources():
  # Thresholds come from the finite confidences (0.7, 0.5); the unmatched source stays a
  # false negative. Recall is TP / (TP + FN), false positives left out as in AVGN.
  # t = 0.7: TP 2 FN 2 -> P 1, R 1/2; t = 0.5: TP 2 FP 1 FN 1 -> P 2/3, R 2/3.
  cious = [0.9, 0.8, 0.1, 0.0]
  confidences = [0.9, 0.7, 0.5, -np.inf]
  assert multisource.detection_ap(cious, confidences) == pytest.approx(1 * (2 / 3 - 1 / 2))
  cious = [0.9, 0.1, 0.8, 0.0]
  confidences = [0.9, 0.7, 0.5, -np.inf]
  # t = 0.7: TP 1 FP 1 FN 2 -> P 1/2, R 1/3; t = 0.5: TP 2 FP 1 FN 1 -> P 2/3, R 2/3.
  assert multisource.detection_ap(cious, confidences) == pytest.approx(2 / 3 * (1 / 3))


# ----------------------------------------------------------------------------- samples


def _planted_scene():
  """8x8 image: source 0 = right half, source 1 = left half."""
  sources = np.zeros((2, 8, 8))
  sources[0, :, 4:] = 1
  sources[1, :, :4] = 1
  return sources


def test_evaluate_sample_planted_objects():
  sources = _planted_scene()
  objects = np.zeros((3, 8, 8))
  objects[0, :, :4] = 0.9  # left half: source 1
  objects[1, :, 4:] = 0.8  # right half: source 0
  objects[1, :4, 4:] = 1.0
  objects[2, :2, :2] = 0.3  # a small spurious object
  result = multisource.evaluate_sample(objects, sources, 'minmax', 0.5)
  np.testing.assert_allclose(result.source_cious, [1.0, 1.0])
  # Object 1's top quarter (16 of 64 pixels) is all 1.0; object 0's is 0.9.
  np.testing.assert_allclose(result.source_confidences, [1.0, 0.9])
  np.testing.assert_allclose(result.source_pixel_aps, [1.0, 1.0])
  assert result.num_objects == 3 and result.num_sources == 2


def test_evaluate_sample_against_brute_force():
  rng = np.random.default_rng(3)
  sources = _planted_scene()
  objects = rng.uniform(size=(3, 8, 8))
  result = multisource.evaluate_sample(objects, sources)  # median protocol
  binary = [localization.binarize(o, 'median') for o in objects]
  cious = np.array([[localization.ciou(b, s) for s in sources] for b in binary])
  for k, s in _reference_greedy(cious):
    assert result.source_cious[s] == cious[k, s]
    assert result.source_confidences[s] == np.sort(objects[k].ravel())[-16:].mean()
    assert result.source_pixel_aps[s] == pytest.approx(
        sk_metrics.average_precision_score(binary[k].ravel(), sources[s].ravel()))


def test_evaluate_sample_zero_and_too_few_objects():
  sources = _planted_scene()
  none = multisource.evaluate_sample(np.zeros((0, 8, 8)), sources)
  np.testing.assert_array_equal(none.source_cious, [0, 0])
  np.testing.assert_array_equal(none.source_confidences, [-np.inf, -np.inf])
  np.testing.assert_array_equal(none.source_pixel_aps, [0, 0])
  assert none.num_objects == 0
  objects = np.zeros((1, 8, 8))
  objects[0, :, :4] = 1
  one = multisource.evaluate_sample(objects, sources, protocol='minmax', threshold=0.5)
  np.testing.assert_array_equal(one.source_cious, [0, 1])
  assert one.source_confidences[0] == -np.inf


def test_evaluate_sample_errors():
  sources = _planted_scene()
  with pytest.raises(ValueError, match='at least one ground-truth source'):
    multisource.evaluate_sample(np.zeros((1, 8, 8)), np.zeros((0, 8, 8)))
  with pytest.raises(ValueError, match='differ in size'):
    multisource.evaluate_sample(np.zeros((1, 4, 4)), sources)
  with pytest.raises(ValueError, match=r'object maps must be \[K, H, W\]'):
    multisource.evaluate_sample(np.zeros((8, 8)), sources)


# ----------------------------------------------------------------------------- summaries


def test_summarize_multisource_hand_counted():
  results = [
      _result([0.6, 0.2], [0.9, 0.3], pixel_aps=[1.0, 0.5], num_objects=2),
      _result([0.1, 0.0], [0.8, -np.inf], pixel_aps=[0.5, 0.0], num_objects=1),
      _result([0.9], [0.7], pixel_aps=[0.8], num_objects=1),
      _result([0.3, 0.7, 0.3], [0.2, 0.4, 0.5], pixel_aps=[0.3, 0.3, 0.3], num_objects=4),
  ]
  got = multisource.summarize_multisource(results)
  assert set(got) == {'cap', 'piap', 'ciou30', 'auc', 'count_acc', 'count_acc_1',
                      'count_acc_2', 'count_acc_3'}
  cious = [0.6, 0.2, 0.1, 0.0, 0.9, 0.3, 0.7, 0.3]
  assert got['piap'] == pytest.approx(np.mean([1.0, 0.5, 0.5, 0.0, 0.8, 0.3, 0.3, 0.3]))
  assert got['ciou30'] == 5 / 8  # 0.6, 0.9, 0.3, 0.7, 0.3 >= 0.3
  assert got['auc'] == pytest.approx(localization.success_rate_auc(cious))
  assert got['count_acc'] == 0.5
  assert (got['count_acc_1'], got['count_acc_2'], got['count_acc_3']) == (1.0, 0.5, 0.0)
  # Position 0: cIoUs 0.6, 0.1, 0.9, 0.3 with confidences 0.9, 0.8, 0.7, 0.2 -> thresholds
  # 0.8, 0.7, 0.2: (P 1/2, R 1/3), (P 2/3, R 2/3), (P 2/4, R 1) -> AP = 2/3 * (1/3 + 1/3).
  # Position 1: cIoUs 0.2, 0.0 (unmatched), 0.7 with 0.3, -inf, 0.4 -> threshold 0.3:
  # TP 1 FP 1 FN 1 -> one threshold, AP 0. Position 2: one entry, AP 0.
  assert got['cap'] == pytest.approx((4 / 9 + 0 + 0) / 3)


def test_summarize_multisource_cap_averages_source_positions():
  rng = np.random.default_rng(4)
  cious, confidences = rng.uniform(size=(30, 2)), rng.uniform(size=(30, 2))
  results = [_result(c, f) for c, f in zip(cious, confidences)]
  expected = np.mean([_reference_calc_ap(list(cious[:, j]), list(confidences[:, j]))
                      for j in range(2)])
  assert multisource.summarize_multisource(results)['cap'] == pytest.approx(expected)
  expected = np.mean([_reference_calc_ap(list(cious[:, j]), list(confidences[:, j]), 0.3)
                      for j in range(2)])
  assert multisource.summarize_multisource(results, ap_iou_threshold=0.3)['cap'] == (
      pytest.approx(expected))


def test_summarize_multisource_missing_and_extra_source_counts():
  got = multisource.summarize_multisource([_result([0.5, 0.5]), _result([0.1] * 4)])
  assert np.isnan(got['count_acc_1']) and np.isnan(got['count_acc_3'])
  assert got['count_acc_2'] == 1.0 and got['count_acc_4'] == 1.0
  with pytest.raises(ValueError, match='at least one sample'):
    multisource.summarize_multisource([])


def test_summarize_single_source():
  cious = [0.6, 0.2, 0.7, 0.5]
  confidences = [0.9, 0.8, 0.1, 0.4]
  results = [_result([c], [f]) for c, f in zip(cious, confidences)]
  got = multisource.summarize_single_source(results)
  assert got['ap'] == pytest.approx(_reference_calc_ap(cious, confidences))
  assert got['iou50'] == 0.75
  assert got['auc'] == pytest.approx(localization.success_rate_auc(cious))
  assert multisource.summarize_single_source(results) == got  # deterministic
  with pytest.raises(ValueError, match='exactly one source'):
    multisource.summarize_single_source([_result([0.5, 0.5])])
