"""AVSBench segmentation metrics: mIoU and F-score (JSA Table 3, Table 8).

Transcribed from OpenNLPLab/AVSBench `avs_scripts/avs_s4/utils/utility.py` (`mask_iou`,
`_eval_pr`, `Eval_Fmeasure`) and `test.py`, with one change the zero-shot localization
works make as well: the official functions take segmentation logits and apply a sigmoid
(`sigmoid(logit) > 0.5` for IoU); avloc passes the binarized localization to `mask_iou`
and the normalized map in [0, 1] to `fscore`, with no sigmoid.

AVSBench's `test.py` evaluates one video (5 frames) per batch and averages the per-batch
values: `miou` is then the plain mean over frames, while `fscore` must be given the video
of every frame (`groups`) to reproduce that protocol.
"""

import numpy as np

# `mask_iou(..., eps=1e-7)`.
_IOU_EPS = 1e-7
# `_eval_pr`: `tp / (y_temp.sum() + 1e-20)`, `tp / (y.sum() + 1e-20)`.
_PR_EPS = 1e-20


def _check_pair(pred, gt, name):
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.ndim != 3 or pred.shape != gt.shape:
    raise ValueError(f'{name} and ground truth must both be [N, H, W]; got {pred.shape} and '
                     f'{gt.shape}')
  return pred, gt


def mask_iou(pred_binary, gt) -> np.ndarray:
  """Per-sample IoU [N] of binary masks pred_binary, gt [N, H, W] (AVSBench `mask_iou`).

  IoU = |pred & gt| / (|pred | gt| + 1e-7). A sample with an empty ground truth scores
  its true-negative fraction |~pred & ~gt| / (H * W + 1e-7): 1.0 for an empty prediction.
  """
  pred, gt = _check_pair(pred_binary, gt, 'prediction')
  pred, gt = pred != 0, gt != 0
  height, width = gt.shape[1:]
  intersection = (pred & gt).sum(axis=(1, 2)).astype(np.float64)
  union = (pred | gt).sum(axis=(1, 2)).astype(np.float64)
  empty = ~gt.any(axis=(1, 2))
  intersection[empty] = (~pred[empty] & ~gt[empty]).sum(axis=(1, 2))
  union[empty] = height * width
  return intersection / (union + _IOU_EPS)


def miou(pred_binary, gt) -> float:
  """Mean of `mask_iou` over the N samples."""
  ious = mask_iou(pred_binary, gt)
  if ious.size == 0:
    raise ValueError('miou needs at least one sample')
  return float(np.mean(ious))


def fscore_thresholds(num_thresholds: int = 255) -> np.ndarray:
  """`torch.linspace(0, 1 - 1e-10, num)` in float32: 1 - 1e-10 rounds to 1.0, so the last
  threshold is 1.0. (torch's vectorized kernel rounds a few interior values 1 ulp apart,
  which only matters for a prediction pixel exactly equal to such a float32 value.)"""
  return np.linspace(0.0, 1.0 - 1e-10, num_thresholds).astype(np.float32)


def _fscore_curve(pred_maps, gt, beta2, thresholds):
  """Mean F_beta over samples with a non-empty ground truth, per threshold -> [T] or None.

  `_eval_pr` per sample: positives `pred >= t`; precision tp / (#pos + 1e-20), recall
  tp / (#gt + 1e-20); F = (1 + b2) P R / (b2 P + R), NaN (P = R = 0) set to 0. Counts of
  `pred >= t` come from sorted values (`searchsorted`) instead of one mask per threshold.
  """
  total, count = np.zeros(len(thresholds)), 0
  for pred, mask in zip(pred_maps, gt):
    mask = mask != 0
    if not mask.any():  # "examples with totally black GTs are out of consideration"
      continue
    values, foreground = np.sort(pred, axis=None), np.sort(pred[mask])
    positives = values.size - np.searchsorted(values, thresholds, side='left')
    tp = foreground.size - np.searchsorted(foreground, thresholds, side='left')
    precision = tp / (positives + _PR_EPS)
    recall = tp / (foreground.size + _PR_EPS)
    denominator = beta2 * precision + recall
    f = np.divide((1 + beta2) * precision * recall, denominator,
                  out=np.zeros_like(denominator), where=denominator > 0)
    total += f
    count += 1
  return total / count if count else None


def fscore(pred_maps, gt, beta2: float = 0.3, num_thresholds: int = 255,
           groups=None) -> float:
  """AVSBench F-score (`Eval_Fmeasure`): max over thresholds of the mean per-sample F_beta.

  pred_maps [N, H, W] with values in [0, 1], gt [N, H, W] binary. Thresholds are
  `fscore_thresholds(num_thresholds)` and the comparison `pred >= t` is made in float32 as
  in the official torch code. Samples whose ground truth is empty are skipped; a batch
  with no sample left scores 0.0 (the official `score` stays zeros).

  groups: None evaluates the N samples as one batch. Otherwise [N] labels (the video of
  each frame, in any order): each group gets its own maximum over thresholds and the
  group values are averaged, as AVSBench `test.py` does with its `AverageMeter` over
  batches of one video each; a video with a missing frame is a smaller group.
  """
  pred_maps, gt = _check_pair(pred_maps, gt, 'prediction maps')
  groups = np.zeros(len(pred_maps), np.int64) if groups is None else np.asarray(groups)
  if groups.shape != (len(pred_maps),):
    raise ValueError(f'groups must be [N] = [{len(pred_maps)}], got {groups.shape}')
  if len(pred_maps) == 0:
    raise ValueError('fscore needs at least one sample')
  pred_maps = pred_maps.astype(np.float32)
  if not np.all(np.isfinite(pred_maps)):
    raise ValueError('prediction maps hold non-finite values')
  thresholds = fscore_thresholds(num_thresholds)
  scores = []
  for group in dict.fromkeys(groups.tolist()):
    members = groups == group
    curve = _fscore_curve(pred_maps[members], gt[members], beta2, thresholds)
    scores.append(0.0 if curve is None else float(curve.max()))
  return float(np.mean(scores))
