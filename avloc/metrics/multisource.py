"""Multi-source localization metrics: NoPrior Tables 1, 2, 5 and source counting (Sec. 4.6).

NoPrior "follow[s] [Mix-and-Localize] for the modified version of CAP and CIoU" and AVGN
for the rest. Neither NoPrior nor Mix-and-Localize (hxixixh/mix-and-localize) publishes
evaluation code. stoneMo/AVGN does: `utils.py` `EvaluatorFull` and `train.py`
`validate_multi`, which scores each ground-truth source j of a mixture with its own
evaluator (a class-conditioned map per source: median-binarized, `conf` = mean of the top
quarter of the scores) and averages the evaluators' metrics over j. avloc follows it:

- Matching (the class-agnostic modification): a model without class labels has no map per
  ground-truth class, so each sample's predicted object maps are matched to its sources
  greedily by cIoU: repeatedly take the (object, source) pair of highest cIoU (ties: lowest
  object, then lowest source index), each used once. A source left without an object (fewer
  objects than sources) scores cIoU 0 and pixel AP 0 and is never detected; extra objects
  only enter the counting accuracy.
- cIoU of an object map: binarize it with `localization.binarize` (AVGN: 'median'), then
  `localization.ciou` against the source's binary map.
- CAP: AVGN's detection AP (`EvaluatorFull.calc_ap`, reproduced by `detection_ap`) over the
  sources at position j of their samples, ranked by the confidence of the matched object,
  a true positive at cIoU >= 0.5; averaged over positions j as `validate_multi` averages
  its per-source evaluators. (AVGN computes AP at 0.3, 0.5 and 0.75; which one its tables
  report is not recorded in the code, so `ap_iou_threshold` is a parameter.)
- PIAP: AVGN's pixel-level AP per source (`EvaluatorFull.update`:
  `average_precision_score(infer.reshape(-1), gt.reshape(-1))`: binarized prediction as the
  labels, ground-truth map as the scores, in that order), averaged over all sources.
- CIoU@0.3 and AUC: AVGN `finalize_stats` per source: the fraction of sources with cIoU
  >= 0.3 and the success-rate AUC (`localization.success_rate_auc`) of the source cIoUs.
  For a fixed number of sources per sample these equal the average over positions j.
- Single-source metrics (Table 2), AVGN `finalize_stats`: AP = `detection_ap` at 0.5,
  IoU@0.5 = fraction of samples with cIoU >= 0.5, AUC = success-rate AUC.
- Counting accuracy: fraction of samples whose number of predicted objects equals the
  number of sources, overall and per number of sources.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from avloc.metrics import localization

# Source counts that always get a 'count_acc_<n>' key (VGGSound-Single, -Duet, -Trio).
REPORTED_SOURCE_COUNTS = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class SampleResult:
  """What one sample contributes: one entry per ground-truth source."""

  source_cious: np.ndarray  # [S] cIoU of the matched object, 0 when unmatched
  source_confidences: np.ndarray  # [S] confidence of the matched object, -inf when unmatched
  source_pixel_aps: np.ndarray  # [S] AVGN pixel AP of the matched object, 0 when unmatched
  num_objects: int  # number of predicted objects K

  @property
  def num_sources(self) -> int:
    return len(self.source_cious)


def object_confidence(score_map) -> float:
  """Confidence of a localization, AVGN `test.py`: mean of the top quarter of the map's
  values (`np.sort(scores.flatten())[-n//4:].mean()`). Pass calibrated scores (AVGN uses
  the cosine map mapped to [0, 1] by fixed bounds), not a per-image min-max normalized map,
  whose top quarter would mean nearly the same for every image."""
  values = np.sort(np.asarray(score_map, np.float64), axis=None)
  return float(values[-values.size // 4:].mean())


def greedy_match(cious) -> list[tuple[int, int]]:
  """[K, S] cIoU matrix -> [(object, source)] pairs, highest cIoU first, each index once.

  Ties go to the lowest object index, then the lowest source index (row-major argmax).
  Returns min(K, S) pairs.
  """
  remaining = np.array(cious, np.float64)
  pairs = []
  for _ in range(min(remaining.shape)):
    k, s = np.unravel_index(np.argmax(remaining), remaining.shape)
    pairs.append((int(k), int(s)))
    remaining[k, :] = -np.inf
    remaining[:, s] = -np.inf
  return pairs


def pixel_average_precision(labels, scores) -> float:
  """Average precision of `scores` ranking the pixels marked in `labels` (sklearn
  `average_precision_score`): sum over distinct score thresholds t, descending, of
  (R(t) - R(t_prev)) * P(t), with no interpolation. No positive label gives 0.0."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  if labels.shape != scores.shape:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape} differ in shape')
  labels, scores = labels.ravel() != 0, scores.ravel()
  if not labels.any():
    return 0.0
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  last_of_each_score = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
  tp = np.cumsum(labels)[last_of_each_score]
  precision = tp / (last_of_each_score + 1)
  recall = tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def evaluate_sample(object_maps, source_maps, protocol: str = 'median',
                    threshold: float | None = None) -> SampleResult:
  """Scores one sample's predicted objects against its ground-truth sources.

  object_maps [K, H, W]: one score map per predicted object (K may be 0 or exceed S);
  source_maps [S, H, W]: binary ground truth per source, S >= 1 (a mixture of frames laid
  side by side is one wide map). Each object map is binarized by `protocol` / `threshold`
  (`localization.binarize`) and its confidence taken by `object_confidence`.
  """
  object_maps, source_maps = np.asarray(object_maps), np.asarray(source_maps)
  if object_maps.ndim != 3 or source_maps.ndim != 3:
    raise ValueError(f'object maps must be [K, H, W] and source maps [S, H, W]; got shapes '
                     f'{object_maps.shape} and {source_maps.shape}')
  if len(source_maps) == 0:
    raise ValueError('a sample needs at least one ground-truth source')
  if len(object_maps) and object_maps.shape[1:] != source_maps.shape[1:]:
    raise ValueError(f'object maps {object_maps.shape[1:]} and source maps '
                     f'{source_maps.shape[1:]} differ in size')
  binary = [localization.binarize(m, protocol, threshold) for m in object_maps]
  truth = source_maps != 0
  cious = np.array([[localization.ciou(b, t) for t in truth] for b in binary])
  num_sources = len(source_maps)
  source_cious = np.zeros(num_sources)
  confidences = np.full(num_sources, -np.inf)
  pixel_aps = np.zeros(num_sources)
  for k, s in greedy_match(cious.reshape(len(binary), num_sources)):
    source_cious[s] = cious[k, s]
    confidences[s] = object_confidence(object_maps[k])
    pixel_aps[s] = pixel_average_precision(binary[k], truth[s])
  return SampleResult(source_cious, confidences, pixel_aps, len(object_maps))


def precision_recall(detected, correct, sounding):
  """AVGN / SLAVC `EvaluatorFull.calc_precision_recall`, at many thresholds at once.

  detected [T, M] bool (entry m detected at threshold t), correct [M] (cIoU >= the IoU
  threshold), sounding [M] (the entry holds a sounding object; SLAVC's `bb > 0`). A
  detected sounding entry is a true positive if correct, else a false positive; a
  detected silent entry is a false positive; an undetected sounding entry is a false
  negative. P = TP / (TP + FP), R = TP / (TP + FN), each 1 when its denominator is 0.
  Returns precision, recall [T].
  """
  tp = np.count_nonzero(detected & correct & sounding, axis=1)
  fp = np.count_nonzero(detected & ~(correct & sounding), axis=1)
  fn = np.count_nonzero(~detected & sounding, axis=1)
  precision = np.where(tp + fp == 0, 1.0, tp / np.maximum(tp + fp, 1))
  recall = np.where(tp + fn == 0, 1.0, tp / np.maximum(tp + fn, 1))
  return precision, recall


def _check_entries(cious, confidences, sounding):
  cious = np.asarray(cious, np.float64)
  confidences = np.asarray(confidences, np.float64)
  sounding = np.ones(cious.shape, bool) if sounding is None else np.asarray(sounding, bool)
  if not cious.shape == confidences.shape == sounding.shape or cious.ndim != 1:
    raise ValueError(f'cious {cious.shape}, confidences {confidences.shape} and sounding '
                     f'{sounding.shape} must be equal 1-D shapes')
  return cious, confidences, sounding


def detection_ap(cious, confidences, iou_threshold: float = 0.5, sounding=None) -> float:
  """AVGN / SLAVC `EvaluatorFull.calc_ap`.

  cious, confidences [M]; sounding [M] bool (default: every entry holds a sounding
  source; silent entries are the negatives of SLAVC's extended protocol). At a confidence
  threshold t an entry is detected when its confidence >= t, then scored by
  `precision_recall`. Thresholds: the sorted finite confidences without the largest, in
  descending order, every max(1, M // 200)-th. AP = sum_i max(P[i:]) * (R[i+1] - R[i]).
  Entries of confidence -inf (unmatched sources) are never detected. Fewer than two
  thresholds give 0.
  """
  cious, confidences, sounding = _check_entries(cious, confidences, sounding)
  detectable = np.isfinite(confidences)
  skip = max(1, len(cious) // 200)
  thresholds = np.sort(confidences[detectable])[:-1][::-skip]
  detected = detectable[None] & (confidences[None] >= thresholds[:, None])
  precision, recall = precision_recall(detected, cious >= iou_threshold, sounding)
  best_after = np.maximum.accumulate(precision[::-1])[::-1]
  return float(np.sum(best_after[:-1] * np.diff(recall)))


def max_f1(cious, confidences, iou_threshold: float = 0.5, sounding=None) -> float:
  """SLAVC `EvaluatorFull.finalize_stats` F1: F1 = 2PR / (P + R) (0 when P + R = 0) at the
  thresholds `sorted(confidences)[::max(1, M // 10)]`; the largest (the "max-F1" of Mo &
  Morgado, NeurIPS 2022). Arguments as `detection_ap`."""
  cious, confidences, sounding = _check_entries(cious, confidences, sounding)
  thresholds = np.sort(confidences)[::max(1, len(cious) // 10)]
  detected = confidences[None] >= thresholds[:, None]
  precision, recall = precision_recall(detected, cious >= iou_threshold, sounding)
  f1 = np.where(precision + recall > 0,
                2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
  return float(f1.max())


def _position_averaged_ap(results: Sequence[SampleResult], iou_threshold: float) -> float:
  """Mean over source positions j of `detection_ap` over the j-th sources of the samples
  (AVGN `validate_multi`: one evaluator per source of the mixture)."""
  positions = range(max(r.num_sources for r in results))
  return float(np.mean([
      detection_ap([r.source_cious[j] for r in results if r.num_sources > j],
                   [r.source_confidences[j] for r in results if r.num_sources > j],
                   iou_threshold)
      for j in positions]))


def summarize_multisource(results: Sequence[SampleResult],
                          ap_iou_threshold: float = 0.5) -> dict[str, float]:
  """Dataset metrics of NoPrior Tables 1 and 5 and Sec. 4.6, fractions in [0, 1].

  Keys: 'cap', 'piap', 'ciou30', 'auc', 'count_acc' and 'count_acc_<n>' for n = 1, 2, 3
  (NaN when no sample has n sources) and for any other source count present.
  """
  if not results:
    raise ValueError('summarize_multisource needs at least one sample')
  source_cious = np.concatenate([r.source_cious for r in results])
  num_sources = np.array([r.num_sources for r in results])
  counted = np.array([r.num_objects == r.num_sources for r in results])
  metrics = {
      'cap': _position_averaged_ap(results, ap_iou_threshold),
      'piap': float(np.mean(np.concatenate([r.source_pixel_aps for r in results]))),
      'ciou30': float(np.mean(source_cious >= 0.3)),
      'auc': localization.success_rate_auc(source_cious),
      'count_acc': float(np.mean(counted)),
  }
  for n in sorted(set(REPORTED_SOURCE_COUNTS) | set(num_sources.tolist())):
    chosen = num_sources == n
    metrics[f'count_acc_{n}'] = float(np.mean(counted[chosen])) if chosen.any() else np.nan
  return metrics


def summarize_single_source(results: Sequence[SampleResult]) -> dict[str, float]:
  """NoPrior Table 2 metrics over single-source samples: {'ap', 'iou50', 'auc'}."""
  if not results or any(r.num_sources != 1 for r in results):
    raise ValueError('summarize_single_source needs samples with exactly one source each')
  cious = np.array([r.source_cious[0] for r in results])
  confidences = np.array([r.source_confidences[0] for r in results])
  return {'ap': detection_ap(cious, confidences), 'iou50': float(np.mean(cious >= 0.5)),
          'auc': localization.success_rate_auc(cious)}
