r"""What limits a trained model's localization scores: measured on its maps; prints tables.

  python benchmarks/map_diagnostics.py --checkpoint=runs/noprior_synthetic
  python benchmarks/map_diagnostics.py --checkpoint=runs/jsa_synthetic/checkpoints/500 \
      --splits=synthetic_alone --max_examples=200

For every split (default: the checkpoint's `eval.splits`), the method's primary map
against the union of the sources' ground truth (on single-source splits, what the
evaluator scores), binarized by the checkpoint's `eval` protocol:
- `peak on source`: the map's maximum lies inside the ground truth;
- `cIoU` / `AP50`: mean cIoU and the share with cIoU >= 0.5;
- `area ratio`: predicted area over ground-truth area (median, and the 10th and 90th
  percentiles): above 1, the region spreads beyond the object;
- `AP50 | peak on`: the share with cIoU >= 0.5 among the maps peaked on the source, what
  the map's extent alone costs.

For NoPrior also Algorithm 1 and Sec. 3.4 on the same images (a cell counts as on a
source when its ground truth covers over half of it): the iterations (T), the counting
accuracy, S_v of the cells off the sources against the stop threshold epsilon, and the
cosine between E_n and the anchors E_p^t on and off the sources against tau1 (bank
entries above tau1 are dropped as background).
"""

import functools

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from avloc import config as config_lib, evaluate, experiment, inference
from avloc.data import pipeline, tfrecord
from avloc.metrics import localization
from avloc.models import noprior

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A training workdir, an export or a '
                                  'checkpoint step directory.', required=True)
_SPLITS = flags.DEFINE_list('splits', [], "Prepared split names; default: the checkpoint's "
                            'eval.splits.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 500, 'First examples of each split.')


def _quantiles(values, q=(0.1, 0.5, 0.9)) -> str:
  return ' / '.join(f'{v:.2f}' for v in np.quantile(values, q)) if len(values) else '-'


def _percent(mask) -> float:
  return 100.0 * float(np.mean(mask)) if len(mask) else float('nan')


def _cells_on_source(truth: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[S, S] ground truth in [0, 1] -> [h * w] bool: the cell's mean coverage > 0.5."""
  size = truth.shape[0]
  height, width = grid
  blocks = truth.reshape(height, size // height, width, size // width)
  return blocks.mean(axis=(1, 3)).reshape(-1) > 0.5


def _identify(model, variables, image, spectrogram) -> dict:
  """`NoPrior.identify`'s outputs plus background_similarity [B, T]: cos(E_n, E_p^t), as
  Sec. 3.4's background filter reads it (`cell_similarities` at the bank's cells)."""
  out = model.apply(variables, image, spectrogram, method=noprior.NoPrior.identify)
  _, with_background = noprior.cell_similarities(out['ioi'], out['background'])
  out['background_similarity'] = jnp.take_along_axis(with_background, out['ioi']['index'],
                                                      axis=1)
  return out


class MapScores:
  """Per-image peak, cIoU and area ratio of one split's primary map."""

  def __init__(self):
    self.peak_on, self.cious, self.ratios = [], [], []

  def add(self, heatmap: np.ndarray, truth: np.ndarray, protocol: str, threshold) -> None:
    predicted = localization.binarize(heatmap, protocol, threshold)
    self.peak_on.append(truth.flat[np.argmax(heatmap)] > 0)
    self.cious.append(localization.ciou(predicted, truth))
    self.ratios.append(np.count_nonzero(predicted) / max(np.count_nonzero(truth), 1))

  def row(self, split: str, name: str) -> list:
    cious, peak_on = np.asarray(self.cious), np.asarray(self.peak_on)
    return [split, name, len(cious), _percent(peak_on), 100 * cious.mean(),
            _percent(cious >= 0.5), _quantiles(self.ratios), _percent(cious[peak_on] >= 0.5)]


class CountScores:
  """NoPrior's Algorithm 1 and Sec. 3.4 statistics of one split."""

  def __init__(self):
    self.iterations, self.counts, self.truths = [], [], []
    self.off_source_sv, self.anchor_cos = [], {True: [], False: []}

  def add(self, out: dict, b: int, on_source: np.ndarray, num_sources: int) -> None:
    ioi = out['ioi']
    labels = out['object_labels'][b]
    self.iterations.append(int(ioi['iterations'][b]))
    self.counts.append(int(np.sum(noprior.object_roots(labels[None])[0])))
    self.truths.append(num_sources)
    self.off_source_sv.extend(out['sound_map'][b][~on_source])
    for t in np.flatnonzero(ioi['valid'][b]):
      self.anchor_cos[bool(on_source[ioi['index'][b, t]])].append(
          out['background_similarity'][b, t])

  def row(self, split: str, epsilon: float, tau1: float) -> list:
    counts, truths = np.asarray(self.counts), np.asarray(self.truths)
    on, off = np.asarray(self.anchor_cos[True]), np.asarray(self.anchor_cos[False])
    return [split, f'{np.mean(self.iterations):.1f} / {max(self.iterations)}',
            _percent(counts == truths), f'{counts.mean():.2f} / {truths.mean():.2f}',
            _quantiles(self.off_source_sv), _percent(np.asarray(self.off_source_sv) > epsilon),
            _quantiles(on), _quantiles(off), _percent(on > tau1), _percent(off > tau1)]


def main(argv):
  del argv
  localizer = inference.Localizer.from_checkpoint(_CHECKPOINT.value)
  config = localizer.config
  names = _SPLITS.value or config_lib.eval_splits(config)
  split_dirs = experiment.resolve_splits(config, names, log=lambda _: None)
  protocol = config.eval.threshold_protocol
  threshold = evaluate.binarize_threshold(config.eval)
  is_noprior = config.method == 'noprior'
  identify = jax.jit(functools.partial(_identify, localizer.model)) if is_noprior else None
  print(common.machine())
  map_rows, count_rows = [], []
  for name in names:
    gt_kind = tfrecord.read_manifest(split_dirs[name]).gt
    if gt_kind == tfrecord.GT_NONE:
      print(f'{name}: no ground truth, skipped')
      continue
    scores, counting, seen = MapScores(), CountScores(), 0
    for batch in pipeline.eval_batches(config, split_dirs[name], config.eval.batch_size):
      outputs = localizer.localize_inputs(batch['image'], batch['spectrogram'])
      heatmaps = next(iter(outputs['heatmaps'].values()))
      internals = (jax.device_get(identify(localizer.variables, batch['image'],
                                           batch['spectrogram'])) if is_noprior else None)
      for b in np.flatnonzero(batch['valid'])[:_MAX_EXAMPLES.value - seen]:
        truth = evaluate.source_maps(gt_kind, batch, b, heatmaps.shape[-1]).max(axis=0)
        scores.add(heatmaps[b], truth, protocol, threshold)
        if is_noprior:
          counting.add(internals, b, _cells_on_source(truth, internals['grid']),
                       int(batch['num_sources'][b]))
        seen += 1
      if seen >= _MAX_EXAMPLES.value:
        break
    map_rows.append(scores.row(name, next(iter(outputs['heatmaps']))))
    if is_noprior:
      count_rows.append(counting.row(name, config.model.ioi_epsilon, config.model.tau1))
  common.print_table(
      f'Maps of {_CHECKPOINT.value} ({protocol} binarization; percent)',
      ['split', 'map', 'images', 'peak on source', 'cIoU', 'AP50',
       'area ratio q10 / q50 / q90', 'AP50 | peak on'], map_rows)
  if is_noprior:
    model = config.model
    common.print_table(
        f'Algorithm 1 and Sec. 3.4 (epsilon {model.ioi_epsilon}, tau1 {model.tau1}, '
        f'tau2 {model.tau2}; cosines as q10 / q50 / q90)',
        ['split', 'T mean / max', 'count acc.', 'count / truth (mean)', 'off-source S_v',
         'off-source S_v > eps', 'cos(E_n, E_p) on source', 'off source',
         'on > tau1', 'off > tau1'], count_rows)


if __name__ == '__main__':
  app.run(main)
