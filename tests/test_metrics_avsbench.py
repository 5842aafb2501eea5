"""avloc.metrics.avsbench against hand counts and loop transcriptions of AVSBench's
`mask_iou`, `_eval_pr` and `Eval_Fmeasure` (OpenNLPLab/AVSBench avs_s4/utils/utility.py)."""

import numpy as np
import pytest

from avloc.metrics import avsbench


def _reference_iou(pred, gt):
  """Per-sample loop of AVSBench `mask_iou` (binary inputs, no sigmoid)."""
  out = []
  for p, g in zip(pred.astype(int), gt.astype(int)):
    if g.sum() == 0:
      inter, union = ((1 - g) * (1 - p)).sum(), g.size
    else:
      inter, union = (p * g).sum(), np.maximum(p, g).sum()
    out.append(inter / (union + 1e-7))
  return np.array(out)


def _reference_fmeasure(pred, gt, num=255, beta2=0.3):
  """`Eval_Fmeasure` without the sigmoid: per-threshold loop, float32 comparisons."""
  thresholds = np.linspace(0, 1 - 1e-10, num).astype(np.float32)
  avg_f, img_num, score = 0.0, 0, np.zeros(num)
  for p, g in zip(pred.astype(np.float32), gt.astype(np.float64)):
    if np.mean(g) == 0.0:
      continue
    prec, recall = np.zeros(num), np.zeros(num)
    for i in range(num):
      y_temp = (p >= thresholds[i]).astype(np.float64)
      tp = (y_temp * g).sum()
      prec[i], recall[i] = tp / (y_temp.sum() + 1e-20), tp / (g.sum() + 1e-20)
    with np.errstate(invalid='ignore'):
      f_score = (1 + beta2) * prec * recall / (beta2 * prec + recall)
    f_score[f_score != f_score] = 0
    avg_f += f_score
    img_num += 1
    score = avg_f / img_num
  return score.max()


def _random_masks(rng, n, size=16):
  gt = rng.uniform(size=(n, size, size)) < 0.3
  gt[0] = False  # one sample without a sounding object
  scores = np.clip(gt * 0.4 + rng.uniform(size=(n, size, size)) * 0.7, 0, 1)
  return scores.astype(np.float32), gt


# ----------------------------------------------------------------------------- IoU


def test_mask_iou_hand_counted():
  pred = np.zeros((3, 4, 4), bool)
  gt = np.zeros((3, 4, 4), bool)
  pred[0, 0, :] = True  # 4 pixels
  gt[0, 0, 2:] = True
  gt[0, 1, :] = True  # 6 pixels, 2 shared: union 8
  # Sample 1: empty gt, empty prediction -> 16 true negatives of 16.
  pred[2, :2, :2] = True  # sample 2: empty gt, 4 predicted -> 12 true negatives of 16
  got = avsbench.mask_iou(pred, gt)
  np.testing.assert_allclose(got, [2 / (8 + 1e-7), 16 / (16 + 1e-7), 12 / (16 + 1e-7)],
                             rtol=1e-15)
  assert avsbench.mask_iou(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))[0] == 0.0
  assert avsbench.miou(pred, gt) == pytest.approx(np.mean(got))


def test_mask_iou_matches_reference_on_random_masks():
  rng = np.random.default_rng(0)
  scores, gt = _random_masks(rng, 12)
  pred = scores > 0.5
  np.testing.assert_allclose(avsbench.mask_iou(pred, gt), _reference_iou(pred, gt),
                             rtol=1e-14)
  assert avsbench.miou(pred[:1], gt[:1]) == pytest.approx(_reference_iou(pred, gt)[0])


def test_mask_iou_shape_errors():
  with pytest.raises(ValueError, match=r'must both be \[N, H, W\]'):
    avsbench.mask_iou(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match=r'must both be \[N, H, W\]'):
    avsbench.mask_iou(np.zeros((4, 4)), np.zeros((4, 4)))
  with pytest.raises(ValueError, match='miou needs at least one sample'):
    avsbench.miou(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))


# ----------------------------------------------------------------------------- F-score


def test_fscore_hand_counted():
  pred = np.array([[[0.9, 0.8], [0.7, 0.1]]])
  gt = np.array([[[1, 0], [1, 0]]])
  # t in (0.8, 0.9]: only 0.9 positive -> P = 1, R = 1/2, F = 1.3 * 0.5 / (0.3 + 0.5).
  # Other bands: 0.5652 (t <= 0.1), 0.7222 (0.1 < t <= 0.7), 0.5 (0.7 < t <= 0.8), 0.
  assert avsbench.fscore(pred, gt) == pytest.approx(1.3 * 0.5 / 0.8)
  # With fewer thresholds (0, 0.5, 1) the band (0.8, 0.9] is never sampled.
  assert avsbench.fscore(pred, gt, num_thresholds=3) == pytest.approx(1.3 * (2 / 3) / 1.2)


def test_fscore_averages_samples_before_the_max():
  pred = np.array([[[0.9, 0.1]], [[0.95, 0.99]]])
  gt = np.array([[[1, 0]], [[0, 1]]])
  # Sample 1: F = 1 for t in (0.1, 0.9]; sample 2: F = 1 only for t in (0.95, 0.99] and
  # 1.3 * 0.5 / 1.15 (P = 1/2, R = 1) for t <= 0.95. The mean curve peaks on (0.1, 0.9];
  # the mean of per-sample maxima would be 1.
  got = avsbench.fscore(pred, gt)
  assert got == pytest.approx((1 + 1.3 * 0.5 / 1.15) / 2)
  assert got == pytest.approx(_reference_fmeasure(pred, gt))


def test_fscore_matches_reference_on_random_maps():
  rng = np.random.default_rng(1)
  scores, gt = _random_masks(rng, 6)
  scores[1, :4] = np.linspace(0, 1, 255, dtype=np.float32)[100:164].reshape(4, 16)
  assert avsbench.fscore(scores, gt) == pytest.approx(_reference_fmeasure(scores, gt),
                                                      rel=1e-12)
  assert avsbench.fscore(scores, gt, num_thresholds=17) == pytest.approx(
      _reference_fmeasure(scores, gt, num=17), rel=1e-12)
  assert avsbench.fscore(scores, gt, beta2=1.0) == pytest.approx(
      _reference_fmeasure(scores, gt, beta2=1.0), rel=1e-12)


def test_fscore_per_video_average():
  rng = np.random.default_rng(2)
  scores, gt = _random_masks(rng, 11)
  expected = np.mean([_reference_fmeasure(scores[i:i + 5], gt[i:i + 5])
                      for i in range(0, 11, 5)])
  videos = np.arange(11) // 5
  assert avsbench.fscore(scores, gt, groups=videos) == pytest.approx(expected, rel=1e-12)
  assert avsbench.fscore(scores, gt, groups=videos) != pytest.approx(
      avsbench.fscore(scores, gt))
  # Frames grouped by their video, not by position: an interleaved order is the same.
  order = rng.permutation(11)
  assert avsbench.fscore(scores[order], gt[order], groups=[f'video{v}' for v in videos[order]]
                         ) == pytest.approx(expected, rel=1e-12)
  with pytest.raises(ValueError, match=r'groups must be \[N\] = \[11\]'):
    avsbench.fscore(scores, gt, groups=videos[:5])


def test_fscore_boundaries():
  empty = np.zeros((2, 4, 4))
  maps = np.full((2, 4, 4), 0.5)
  assert avsbench.fscore(maps, empty) == 0.0  # no sample with a sounding object
  # A video of empty ground truths scores 0 and still counts in the average.
  gt = np.zeros((2, 4, 4))
  gt[1, 0, 0] = 1
  maps[1, 0, 0] = 1.0
  assert avsbench.fscore(maps, gt, groups=[0, 1]) == pytest.approx(0.5)
  # All-zero prediction: only t = 0 marks pixels positive.
  assert avsbench.fscore(np.zeros((1, 2, 2)), np.array([[[1, 0], [0, 0]]])) == pytest.approx(
      1.3 * 0.25 / (0.3 * 0.25 + 1))
  with pytest.raises(ValueError, match='non-finite'):
    avsbench.fscore(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2)))
  with pytest.raises(ValueError, match='at least one sample'):
    avsbench.fscore(np.zeros((0, 2, 2)), np.zeros((0, 2, 2)))


def test_fscore_thresholds_follow_torch_linspace():
  thresholds = avsbench.fscore_thresholds()
  assert thresholds.dtype == np.float32 and len(thresholds) == 255
  assert thresholds[0] == 0.0 and thresholds[-1] == 1.0  # 1 - 1e-10 rounds to 1 in float32
  torch = pytest.importorskip('torch')
  official = torch.linspace(0, 1 - 1e-10, 255).numpy()
  assert np.max(np.abs(thresholds - official)) <= np.spacing(np.float32(1))
