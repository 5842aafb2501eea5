"""Audio-swap and extended-protocol metrics (avloc/metrics/grounding.py) against plain
references and a transcription of the SLAVC evaluation code."""

import numpy as np
import pytest

from avloc.metrics import grounding, multisource


class _SlavcEvaluatorFull:
  """Transcription of stoneMo/SLAVC `utils.py` `EvaluatorFull` (`update`,
  `calc_precision_recall`, `calc_ap`, and the F1 list of `finalize_stats`), subset 'all',
  maps of any size instead of 224 x 224."""

  def __init__(self):
    self.ciou_list, self.confidence_list, self.bb_list = [], [], []

  def update(self, bb, gt, conf, pred, pred_thr):
    infer = np.zeros(gt.shape)
    infer[pred >= pred_thr] = 1
    with np.errstate(invalid='ignore'):  # silent entries: 0 / 0 when nothing is predicted
      ciou = np.sum(infer * gt) / (np.sum(gt) + np.sum(infer * (gt == 0)))
    self.confidence_list.append(conf)
    self.ciou_list.append(ciou)
    self.bb_list.append(len(bb))

  @staticmethod
  def calc_precision_recall(bb_list, ciou_list, confidence_list, confidence_thr, ciou_thr=0.5):
    true_pos, false_pos, false_neg = 0, 0, 0
    for bb, ciou, confidence in zip(bb_list, ciou_list, confidence_list):
      if bb == 0:
        if confidence >= confidence_thr:
          false_pos += 1
      else:
        if confidence >= confidence_thr:
          if ciou >= ciou_thr:
            true_pos += 1
          else:
            false_pos += 1
        else:
          false_neg += 1
    precision = 1. if true_pos + false_pos == 0 else true_pos / (true_pos + false_pos)
    recall = 1. if true_pos + false_neg == 0 else true_pos / (true_pos + false_neg)
    return precision, recall

  def calc_ap(self, bb_list_full, ciou_list_full, confidence_list_full, iou_thr=0.5):
    precision, recall, skip_thr = [], [], max(1, len(ciou_list_full) // 200)
    for thr in np.sort(np.array(confidence_list_full))[:-1][::-skip_thr]:
      p, r = self.calc_precision_recall(bb_list_full, ciou_list_full, confidence_list_full,
                                        thr, iou_thr)
      precision.append(p)
      recall.append(r)
    precision_max = [np.max(precision[i:]) for i in range(len(precision))]
    return sum([precision_max[i] * (recall[i + 1] - recall[i])
                for i in range(len(precision_max) - 1)])

  def f1_list(self, iou_thr=0.5):
    conf_list = self.confidence_list
    conf_thr = list(sorted(conf_list))[::max(1, len(conf_list) // 10)]
    pr = [self.calc_precision_recall(self.bb_list, self.ciou_list, conf_list, thr, iou_thr)
          for thr in conf_thr]
    return [2 * r * p / (r + p) if r + p > 0 else 0. for p, r in pr]


def _slavc_confidence(scores):
  """SLAVC `test.py`: np.sort(scores.flatten())[-n//4:].mean()."""
  n = scores.size
  return np.sort(scores.flatten())[-n // 4:].mean()


@pytest.mark.parametrize('num_images', [7, 40, 230])
def test_extended_protocol_equals_the_slavc_evaluator(num_images):
  rng = np.random.default_rng(num_images)
  size = 16
  slavc = _SlavcEvaluatorFull()
  cious, matched, swapped = [], [], []
  for _ in range(num_images):
    x0, y0 = rng.integers(0, 8, 2)
    gt = np.zeros((size, size))
    gt[y0:y0 + 8, x0:x0 + 8] = 1
    # A map that finds the box more or less, with its own audio; a weaker one without.
    own = np.clip(rng.uniform(0, 0.6, (size, size)) + rng.uniform(0, 0.6) * gt, 0, 1)
    other = rng.uniform(0, 0.8, (size, size))
    slavc.update([[x0, y0, x0 + 8, y0 + 8]], gt, _slavc_confidence(own), own, 0.5)
    slavc.update([], np.zeros((size, size)), _slavc_confidence(other), other, 0.5)
    cious.append(slavc.ciou_list[-2])
    matched.append(multisource.object_confidence(own))
    swapped.append(multisource.object_confidence(other))
  np.testing.assert_allclose(matched, slavc.confidence_list[::2])
  got = grounding.extended_protocol(cious, matched, swapped)
  # SLAVC scores entries in a shuffled order; the metrics depend on the values only.
  order = rng.permutation(2 * num_images)
  lists = [np.asarray(x, dtype=object)[order].tolist()
           for x in (slavc.bb_list, slavc.ciou_list, slavc.confidence_list)]
  assert got['ext_ap'] == pytest.approx(slavc.calc_ap(*lists))
  assert got['ext_f1'] == pytest.approx(max(slavc.f1_list()))
  assert 0 < got['ext_ap'] < 1 and 0 < got['ext_f1'] < 1


def test_a_map_that_ignores_the_audio_scores_like_chance_on_the_extended_protocol():
  rng = np.random.default_rng(0)
  confidences = rng.uniform(size=50)
  same = grounding.extended_protocol(np.ones(50), confidences, confidences)
  grounded = grounding.extended_protocol(np.ones(50), confidences + 1, confidences)
  assert grounded['ext_ap'] > 0.95 and grounded['ext_f1'] == pytest.approx(1.0)
  assert same['ext_ap'] < 0.6 and same['ext_f1'] == pytest.approx(2 / 3)  # P 1/2, R 1


def test_swap_partners_take_the_next_clip_of_another_class():
  sets = [frozenset({0}), frozenset({0}), frozenset({1}), frozenset({2, 0}), frozenset({0})]
  expected = []
  for i, own in enumerate(sets):  # plain reference: scan forward, wrap around
    candidates = [(i + s) % len(sets) for s in range(1, len(sets))]
    expected.append(next((j for j in candidates if not own & sets[j]), -1))
  assert grounding.swap_partners(sets).tolist() == expected == [2, 2, 3, 2, 2]
  assert grounding.swap_partners([frozenset({1})] * 3).tolist() == [-1, -1, -1]
  unlabelled = [frozenset()] * 3
  assert grounding.swap_partners(unlabelled).tolist() == [1, 2, 0]
  assert grounding.swap_partners([frozenset({1})]).tolist() == [-1]


def test_map_correlation_is_pearson_over_pixels():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 5, 6))
  assert grounding.map_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
  assert grounding.map_correlation(a, 3 * a + 1) == pytest.approx(1.0)
  assert grounding.map_correlation(a, -a) == pytest.approx(-1.0)
  flat = np.full((5, 6), 2.0)
  assert grounding.map_correlation(flat, flat) == 1.0
  assert grounding.map_correlation(flat, a) == 0.0
