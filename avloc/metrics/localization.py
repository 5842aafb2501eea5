"""Single-source localization metrics: ground-truth maps, binarization, cIoU, AP50 and AUC.

Every rule here follows the official evaluation code of the benchmarks, so that a number
reported by avloc means what the same number means in the papers' tables:

- stoneMo/EZ-VSL `datasets.py` (`load_all_bboxes`, `bbox2gtmap`), `utils.py` (`Evaluator`,
  `normalize_img`) and `test.py` (median threshold, object-guided localization);
- hche11/Localizing-Visual-Sounds-the-Hard-Way (LVS) `utils.py` (`testset_gt`, `Evaluator`);
- InhoKim429/JSA (the JSA release) `utils.py` and `test_model.py` (fixed threshold 0.6 on the
  min-max normalized map), whose `dataset.py` rasterizes boxes exactly as EZ-VSL does.

Maps are [H, W] arrays; the benchmarks use H = W = 224.
"""

from collections.abc import Sequence

import numpy as np

PROTOCOLS = ('minmax', 'median')

# A box edge is int(extent * clip(v, 0, 1)) (EZ-VSL `load_all_bboxes`, LVS `testset_gt`).
# Boxes are stored as float32, which can move an edge that the annotation puts exactly on
# pixel k (e.g. k / 224) a hair below k; products within this many pixels of an integer
# are taken as that integer. float32 rounding is below 2e-5 px for extents up to 256.
_SNAP_PX = 1e-4

# Success-rate thresholds exactly as the official `finalize_AUC`: the Python floats
# 0.05 * i (0.15000000000000002 etc.), each compared with `ciou >= threshold`.
SUCCESS_THRESHOLDS = tuple(0.05 * i for i in range(21))


def _as_boxes(boxes) -> np.ndarray:
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f'boxes must be [N, 4] normalized xmin, ymin, xmax, ymax; got shape '
                     f'{boxes.shape}')
  if not np.all(np.isfinite(boxes)):
    raise ValueError(f'boxes hold non-finite values: {boxes[~np.isfinite(boxes).all(1)]}')
  return boxes


def _pixel_edges(coords: np.ndarray, extent: int) -> np.ndarray:
  """Normalized coordinates -> pixel indices int(extent * clip(v, 0, 1)) (truncation)."""
  scaled = np.clip(coords, 0.0, 1.0) * extent
  nearest = np.round(scaled)
  scaled = np.where(np.abs(scaled - nearest) < _SNAP_PX, nearest, scaled)
  return np.floor(scaled).astype(np.int64)


def _box_masks(boxes, size: Sequence[int]) -> np.ndarray:
  """[N, 4] normalized xyxy -> [N, H, W] bool, box n covering rows ymin:ymax, cols xmin:xmax.

  Ends are exclusive, as the official `temp[ymin:ymax, xmin:xmax] = 1`; a box whose
  truncated edges coincide covers no pixel.
  """
  height, width = size
  boxes = _as_boxes(boxes)
  xmin, xmax = _pixel_edges(boxes[:, 0], width), _pixel_edges(boxes[:, 2], width)
  ymin, ymax = _pixel_edges(boxes[:, 1], height), _pixel_edges(boxes[:, 3], height)
  rows = np.arange(height)[None, :, None]
  cols = np.arange(width)[None, None, :]
  return ((rows >= ymin[:, None, None]) & (rows < ymax[:, None, None])
          & (cols >= xmin[:, None, None]) & (cols < xmax[:, None, None]))


def box_map(boxes, size: Sequence[int] = (224, 224)) -> np.ndarray:
  """Union of normalized xyxy boxes [N, 4] -> float32 [H, W] in {0, 1} (VGG-SS protocol).

  EZ-VSL `load_all_bboxes(format='vggss')`: `(np.clip(box, 0, 1) * 224).astype(int)`, then
  `bbox2gtmap`: `gt_map[ymin:ymax, xmin:xmax] = 1` for each box. N = 0 gives zeros.
  """
  return _box_masks(boxes, size).any(axis=0).astype(np.float32)


def consensus_map(boxes, groups, size: Sequence[int] = (224, 224)) -> np.ndarray:
  """Flickr-SoundNet consensus map: [N, 4] boxes, [N] annotator ids -> float32 [H, W].

  LVS `testset_gt(testset='flickr')` / EZ-VSL `bbox2gtmap(format='flickr')`: each
  annotator's binary box mask is summed, the sum halved and clipped at 1, giving values in
  {0, 0.5, 1}. Boxes are normalized by the 256x256 annotation canvas; the official
  `int(224 * px / 256)` equals `int(224 * (px / 256))` here (px / 256 is exact in float32).
  The official code adds one mask per box; boxes sharing a group (one annotator marking
  several regions) are first united, which is the same for the released annotations
  (one box per annotator).
  """
  masks = _box_masks(boxes, size)
  groups = np.asarray(groups)
  if groups.shape != (len(masks),):
    raise ValueError(f'groups must be [N] = [{len(masks)}] (one per box); got shape '
                     f'{groups.shape}')
  votes = np.zeros(tuple(size), np.float64)
  for group in np.unique(groups):
    votes += masks[groups == group].any(axis=0)
  return np.minimum(votes / 2.0, 1.0).astype(np.float32)


def mask_map(masks) -> np.ndarray:
  """Union of binary masks [K, H, W] (nonzero = foreground) -> float32 [H, W] in {0, 1}."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f'masks must be [K, H, W]; got shape {masks.shape}')
  return (masks != 0).any(axis=0).astype(np.float32)


def normalize_minmax(heatmap) -> np.ndarray:
  """(x - min) / (max - min) as the official `normalize_img`; a constant map is returned
  unchanged (no NaN). Float inputs keep their dtype (the official maps are float32)."""
  heatmap = np.asarray(heatmap)
  if not np.issubdtype(heatmap.dtype, np.floating):
    heatmap = heatmap.astype(np.float32)
  low, high = heatmap.min(), heatmap.max()
  if high - low == 0:
    return heatmap
  return (heatmap - low) / (high - low)


def binarize(heatmap, protocol: str, threshold: float | None = None) -> np.ndarray:
  """Heatmap [H, W] -> bool [H, W] localization by one of the official protocols.

  'minmax' (JSA release `test_model.py`): min-max normalize, keep pixels `>= threshold`
    (the release uses 0.6). `threshold` is required.
  'median' (EZ-VSL `test.py`, followed by FNAC, SLAVC and AVGN): min-max normalize, take
    `thr = sort(map)[int(H * W * 0.5)]` (the upper median) and keep pixels `>= thr`, i.e.
    about half of the image. Takes no `threshold`. (LVS and SSLalignment use `> thr`
    instead; avloc follows EZ-VSL, whose protocol the JSA and NoPrior baselines report.)
  A constant map keeps every pixel under 'median', and under 'minmax' keeps every pixel
  iff the constant is >= threshold (the official code leaves constant maps unnormalized).
  """
  heatmap = np.asarray(heatmap)
  if heatmap.ndim != 2:
    raise ValueError(f'heatmap must be [H, W]; got shape {heatmap.shape}')
  normalized = normalize_minmax(heatmap)
  if protocol == 'minmax':
    if threshold is None:
      raise ValueError("protocol 'minmax' needs a threshold (the JSA release uses 0.6)")
    return normalized >= threshold
  if protocol == 'median':
    if threshold is not None:
      raise ValueError(f"protocol 'median' takes no threshold; got threshold={threshold}")
    cut = np.sort(normalized, axis=None)[int(normalized.size * 0.5)]
    return normalized >= cut
  raise ValueError(f'unknown binarization protocol {protocol!r}; expected one of {PROTOCOLS}')


def ciou(pred_binary, gt_map) -> float:
  """Consensus IoU: sum(pred * gt) / (sum(gt) + sum(pred * (gt == 0))) (official `cal_CIOU`).

  pred_binary [H, W] (bool or 0/1), gt_map [H, W] with values in [0, 1]; the fractional
  Flickr consensus enters the sums as it is. When both the ground truth and the prediction
  are empty the official code divides 0 by 0 (NaN, which `>= threshold` counts as a miss);
  avloc returns 0.0 there, the same for AP50 and AUC and without poisoning the mean.
  """
  pred = np.asarray(pred_binary).astype(bool)
  gt = np.asarray(gt_map, np.float64)
  if pred.shape != gt.shape:
    raise ValueError(f'prediction {pred.shape} and ground truth {gt.shape} differ in shape')
  intersection = gt[pred].sum()
  denominator = gt.sum() + np.count_nonzero(pred & (gt == 0))
  if denominator == 0:
    return 0.0
  return float(intersection / denominator)


def success_rate_auc(values) -> float:
  """Area under the success-rate curve: rate_i = mean(values >= 0.05 i), i = 0..20, by the
  trapezoid rule over those thresholds (`sklearn.metrics.auc` in the official code)."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f'need a non-empty 1-D array of scores; got shape {values.shape}')
  rates = [np.count_nonzero(values >= t) / values.size for t in SUCCESS_THRESHOLDS]
  return float(np.trapezoid(rates, SUCCESS_THRESHOLDS))


def summarize_cious(cious) -> dict[str, float]:
  """Per-sample cIoUs [N] -> {'ap50': mean(ciou >= 0.5), 'auc': success-rate AUC,
  'ciou': mean cIoU}, fractions in [0, 1] (EZ-VSL `finalize_AP50/AUC/cIoU`). The papers'
  "cIoU" column is 'ap50' in percent."""
  cious = np.asarray(cious, np.float64)
  auc = success_rate_auc(cious)
  return {'ap50': float(np.mean(cious >= 0.5)), 'auc': auc, 'ciou': float(np.mean(cious))}


def object_guided_map(heatmap, object_prior, weight: float = 0.4) -> np.ndarray:
  """Object-guided localization (OGL) of EZ-VSL (Mo & Morgado, ECCV 2022; `test.py`):
  normalize(weight * normalize(heatmap) + (1 - weight) * normalize(object_prior)).

  heatmap, object_prior [H, W]; the prior is EZ-VSL's ImageNet ResNet-18 saliency (mean
  |feature| over channels, upsampled), computed elsewhere. `weight` is EZ-VSL's `--alpha`
  (default 0.4, also the JSA release's default). Binarize the result like any heatmap.
  """
  heatmap, object_prior = np.asarray(heatmap), np.asarray(object_prior)
  if heatmap.shape != object_prior.shape:
    raise ValueError(f'heatmap {heatmap.shape} and object prior {object_prior.shape} differ in '
                     'shape')
  blend = (weight * normalize_minmax(heatmap)
           + (1.0 - weight) * normalize_minmax(object_prior))
  return normalize_minmax(blend)
