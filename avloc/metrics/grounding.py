"""Does a localization depend on the audio? NumPy only.

Two measurements, both made by showing each test image with the audio of another clip:
- audio swap: the map for a clip of another class, scored against the image's own
  ground truth (a saliency map scores as well as with its own audio), and the Pearson
  correlation between the matched and the swapped map (1: the audio changes nothing);
- the extended protocol of Mo & Morgado ("A Closer Look at Weakly-Supervised Audio-Visual
  Source Localization", NeurIPS 2022; code stoneMo/SLAVC `test.py`, `utils.py`
  `EvaluatorFull`): every image is an entry with its own audio (a sounding object,
  scored by its cIoU) and an entry with non-matching audio (silent: nothing should be
  found); both are ranked by the confidence of the map, the mean of its top quarter on
  a fixed scale, and scored by AP and max-F1 (`multisource.detection_ap` / `max_f1`).
"""

from collections.abc import Sequence

import numpy as np

from avloc.metrics import multisource


def swap_partners(label_sets: Sequence[frozenset]) -> np.ndarray:
  """For each sample i, the first sample j != i after it (cyclically) whose labels are
  disjoint from i's: audio of another class. A sample without labels (empty set) takes
  the next sample; -1 where no sample qualifies. [N] int."""
  count = len(label_sets)
  partners = np.full(count, -1)
  for i, own in enumerate(label_sets):
    for step in range(1, count):
      j = (i + step) % count
      if not own or not label_sets[j] or own.isdisjoint(label_sets[j]):
        partners[i] = j
        break
  return partners


def map_correlation(a, b) -> float:
  """Pearson correlation of two maps [H, W] over their pixels; a constant map correlates
  1 with an equal map and 0 with any other."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  a, b = a - a.mean(), b - b.mean()
  norm = np.sqrt(np.sum(a * a) * np.sum(b * b))
  if norm == 0:
    return float(np.array_equal(a, b))
  return float(np.sum(a * b) / norm)


def extended_protocol(cious, matched_confidences, swapped_confidences,
                      iou_threshold: float = 0.5) -> dict[str, float]:
  """Mo & Morgado's extended protocol from per-image results.

  cious [N]: cIoU of each image's map with its own audio; matched_confidences,
  swapped_confidences [N]: `multisource.object_confidence` of its fixed-scale score map
  with its own and with another clip's audio. The 2N entries (N sounding, N silent) give
  {'ext_ap': AP, 'ext_f1': max-F1} at cIoU >= iou_threshold.
  """
  cious = np.asarray(cious, np.float64)
  entries = dict(
      cious=np.concatenate([cious, np.zeros_like(cious)]),
      confidences=np.concatenate([matched_confidences, swapped_confidences]),
      sounding=np.arange(2 * len(cious)) < len(cious),
      iou_threshold=iou_threshold)
  return {'ext_ap': multisource.detection_ap(**entries), 'ext_f1': multisource.max_f1(**entries)}
