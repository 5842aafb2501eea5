"""Evaluation on prepared test splits: the papers' metrics, a table, JSON/CSV and PNGs.

For every split the model's maps at the image size (upsampled bicubically inside the
method's `localize`, as the official evaluations do) are binarized by
`config.eval.threshold_protocol`
and scored against the split's ground truth (avloc.metrics): cIoU / AP50 / AUC always,
mIoU and F-score for mask ground truth (AVSBench), Recall@K when the method gives
embeddings and the split has class labels, and the multi-source metrics when the method
gives one map per object. A centre-prior baseline is scored once per split, so every
table says how far the model is from a map that ignores the input. With
`config.eval.audio_swap` every image is also localized with the audio of a clip of
another class (avloc.metrics.grounding): '<variant>:swap' rows score those maps against
the image's own ground truth, with `corr` the correlation between the two maps, and the
variants with fixed-scale scores get Mo & Morgado's extended-protocol `ext_ap` / `ext_f1`
(the swapped entries as silent negatives). With
`config.eval.object_guidance.weights` every map variant also gets its object-guided
version ('<variant>+ogl', EZ-VSL's OGL as JSA Tables 1-2 report it) and the ImageNet
object prior alone is scored once per split as a second baseline.
"""

import contextlib
import csv
import functools
import io
import json

import jax
import numpy as np
from etils import epath

from avloc import methods, paths, preemption, sharding, visualize, weights
from avloc.data import pipeline, tfrecord
from avloc.metrics import avsbench, grounding, localization, multisource, retrieval
from avloc.models import object_prior

CENTER_PRIOR = 'center prior'
OBJECT_PRIOR = 'object prior'
OGL_SUFFIX = '+ogl'
SWAP_SUFFIX = ':swap'
_PRIOR_VARIANT = 'prior'


def avsbench_video(record_id: str) -> str:
  """The video of an AVSBench record: data_prep.avsbench names frame k of video V
  `V_k`."""
  return record_id.rsplit('_', 1)[0]


def center_prior(size: int, sigma: float) -> np.ndarray:
  """[size, size] isotropic Gaussian centred on the image (sigma: a fraction of the side,
  `config.eval.center_prior_sigma`)."""
  axis = (np.arange(size) + 0.5) / size - 0.5
  return np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)


def binarize_threshold(eval_config) -> float | None:
  """The `threshold` that `localization.binarize` takes under `eval_config`'s protocol:
  `eval.threshold` for 'minmax', none for 'median'."""
  return eval_config.threshold if eval_config.threshold_protocol == 'minmax' else None


def source_maps(gt_kind: str, batch: dict, i: int, size: int) -> np.ndarray:
  """Ground truth of sample i of an eval batch as [S, size, size] source maps (S >= 1).

  boxes / consensus / masks give one map (the union, or the Flickr consensus);
  multisource gives one map per sounding source, from its mask when the record has
  masks and from its boxes otherwise.
  """
  boxes, groups = batch['boxes'][i], batch['box_groups'][i]
  masks = batch['masks'][i].astype(bool)
  if gt_kind == tfrecord.GT_CONSENSUS:
    return localization.consensus_map(boxes[groups >= 0], groups[groups >= 0], (size, size))[None]
  if gt_kind == tfrecord.GT_MASKS:
    return localization.mask_map(masks[:max(int(batch['num_sources'][i]), 1)])[None]
  if gt_kind == tfrecord.GT_MULTISOURCE:
    maps = []
    for k in range(int(batch['num_sources'][i])):
      if k < len(masks) and masks[k].any():  # box-only splits have no (or padded) masks
        maps.append(localization.mask_map(masks[k:k + 1]))
      else:
        maps.append(localization.box_map(boxes[groups == k], (size, size)))
    return np.stack(maps)
  return localization.box_map(boxes[groups >= 0], (size, size))[None]


class _SplitScores:
  """Accumulates per-sample scores of one split for one map variant. With mask ground
  truth it also keeps the maps for mIoU and the F-score, computed per video (`group`) as
  AVSBench does (one group: over the whole split)."""

  def __init__(self):
    self.cious, self.binary, self.soft, self.masks, self.groups = [], [], [], [], []

  def add(self, heatmap, gt, protocol, threshold, keep_masks, group=None) -> float:
    """Scores one map; returns its cIoU."""
    binary = localization.binarize(heatmap, protocol, threshold)
    self.cious.append(localization.ciou(binary, gt))
    if keep_masks:
      self.binary.append(binary)
      self.soft.append(localization.normalize_minmax(heatmap))
      self.masks.append(gt > 0)
      self.groups.append(group)
    return self.cious[-1]

  def summary(self) -> dict:
    scores = localization.summarize_cious(np.asarray(self.cious))
    if self.masks:
      gt = np.stack(self.masks)
      scores['miou'] = avsbench.miou(np.stack(self.binary), gt)
      scores['fscore'] = avsbench.fscore(np.stack(self.soft), gt,
                                         groups=[str(g) for g in self.groups])
    return scores


class Evaluator:
  """Evaluates model variables on the configured splits (see module docstring)."""

  def __init__(self, config, split_dirs: dict[str, str], workdir: str, log=print):
    self.config = config
    self.split_dirs = split_dirs
    self.workdir = workdir
    self.log = log
    self.size = config.data.image.size
    self.threshold = binarize_threshold(config.eval)
    self.method = methods.get_method(config.method)
    self.model = self.method.build_model(config)
    self.mesh = sharding.make_mesh()
    sharding.check_batch_size(config.eval.batch_size, self.mesh, 'eval.batch_size')
    replicated, batched = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self._localize = jax.jit(
        functools.partial(self.method.localize, self.model, config=config),
        in_shardings=(replicated, batched, batched), out_shardings=replicated)
    guidance = config.eval.object_guidance
    self._object_trunk = None
    if guidance.weights:
      self._object_trunk = weights.load_image_trunk(guidance.weights)
      self._object_prior = jax.jit(object_prior.object_prior_maps,
                                   in_shardings=(replicated, batched),
                                   out_shardings=replicated)
    self.manifests = {name: tfrecord.read_manifest(d) for name, d in split_dirs.items()}
    self.rows = {name: [] for name in split_dirs}  # (row label, metrics) per evaluation
    self.row_steps = {name: [] for name in split_dirs}  # the step of each row (or None)
    self.retrieval_chance = {}  # split -> {k: Recall@k of a random ranking}
    self.last_metrics = {}
    self.interrupt = None  # () -> bool, asked before every batch; True raises Preempted
    self.output_dir = epath.Path(workdir) / 'eval'
    self.output_dir.mkdir(parents=True, exist_ok=True)

  def evaluate(self, variables, step: int | None, writer) -> dict[str, float]:
    """Scores `variables` on every split; returns {'<split>/<variant>/<metric>': value}."""
    metrics = {}
    for split, directory in self.split_dirs.items():
      if not self.rows[split]:
        for baseline in self._baselines():
          self.rows[split].append((baseline, self._evaluate_split(baseline, split, directory)))
          self.row_steps[split].append(None)
      label = f'{self.config.method} ' + ('(checkpoint)' if step is None else f'step {step}')
      scores = self._evaluate_split(variables, split, directory, step)
      self.rows[split].append((label, scores))
      self.row_steps[split].append(step)
      metrics.update({f'{split}/{k}': v for k, v in scores.items()})
      self._write_split(split, step)
      self.log(self.table(split))
    if writer is not None and step is not None:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    self.last_metrics = metrics
    return metrics

  def resume(self, step: int) -> bool:
    """Takes back the table rows that `eval_<split>.json` holds from before a resume at
    checkpoint `step`: the baselines and the evaluations up to `step`. Returns whether
    every split already has its row for `step` (else the caller evaluates it again and
    rows of `step` are dropped)."""
    for split in self.split_dirs:
      path = epath.Path(self.workdir) / f'eval_{split}.json'
      if not path.exists():
        continue
      history = json.loads(path.read_text()).get('history', [])
      kept = [row for row in history if row.get('model') in self._baselines() or
              row.get('step') is not None and row['step'] <= step]
      self.row_steps[split] = [row.pop('step', None) for row in kept]
      self.rows[split] = [(row.pop('model'), row) for row in kept]
    complete = all(step in steps for steps in self.row_steps.values())
    if not complete:  # evaluated again: drop the rows of an interrupted evaluation
      for split, steps in self.row_steps.items():
        self.rows[split] = [r for r, s in zip(self.rows[split], steps) if s != step]
        self.row_steps[split] = [s for s in steps if s != step]
    return complete

  def _baselines(self) -> list[str]:
    return [CENTER_PRIOR] + ([OBJECT_PRIOR] if self._object_trunk is not None else [])

  def _outputs(self, model, batch, audio_order=None) -> dict:
    """Outputs for a host batch: of the model when `model` holds its variables, of a
    baseline when it is CENTER_PRIOR or OBJECT_PRIOR. With object guidance the model's
    outputs carry the object prior maps [B, H, W] as 'object_prior'. `audio_order` [B]
    pairs image i with the audio of sample audio_order[i]."""
    if model == CENTER_PRIOR:
      heatmap = center_prior(self.size, self.config.eval.center_prior_sigma)
      return {'heatmaps': {_PRIOR_VARIANT: np.broadcast_to(
          heatmap, (len(batch['index']),) + heatmap.shape)}}
    spectrogram = batch['spectrogram']
    if audio_order is not None:
      spectrogram = spectrogram[audio_order]
    local = sharding.process_slice(batch['image'].shape[0])
    inputs = sharding.global_batch(
        {'image': batch['image'][local], 'spectrogram': spectrogram[local]}, self.mesh)
    prior = None
    if self._object_trunk is not None:
      prior = jax.device_get(self._object_prior(self._object_trunk, inputs['image']))
    if isinstance(model, str):
      return {'heatmaps': {_PRIOR_VARIANT: prior}}
    outputs = jax.device_get(self._localize(model, inputs['image'], inputs['spectrogram']))
    outputs['heatmaps'] = self.method.heatmaps_in_order(outputs['heatmaps'], self.config)
    if prior is not None:
      outputs['object_prior'] = prior
    return outputs

  def _maps(self, outputs, i) -> dict[str, np.ndarray]:
    """Sample i's heatmaps by variant, then their object-guided versions (when guided)."""
    maps = {name: np.asarray(m[i]) for name, m in outputs['heatmaps'].items()}
    if 'object_prior' in outputs:
      alpha = self.config.eval.object_guidance.alpha
      maps.update({name + OGL_SUFFIX: localization.object_guided_map(
          heatmap, outputs['object_prior'][i], alpha) for name, heatmap in list(maps.items())})
    return maps

  def _swap_order(self, model, batch, chosen):
    """[B] audio order giving each chosen sample the audio of another class's clip (the
    others keep theirs; grounding.swap_partners), and [B] whether sample i got one; None
    for baselines or without `config.eval.audio_swap`."""
    if isinstance(model, str) or not self.config.eval.audio_swap:
      return None
    label_sets = [frozenset(int(c) for c in batch['source_labels'][i] if c >= 0)
                  for i in chosen]
    partners = grounding.swap_partners(label_sets)
    order, swapped = np.arange(len(batch['index'])), np.zeros(len(batch['index']), bool)
    order[chosen[partners >= 0]] = chosen[partners[partners >= 0]]
    swapped[chosen[partners >= 0]] = True
    return order, swapped

  def _evaluate_split(self, model, split, directory, step=None) -> dict[str, float]:
    manifest = self.manifests[split]
    config = self.config.eval
    keep_masks = manifest.gt == tfrecord.GT_MASKS
    per_video = manifest.dataset == 'avsbench'
    scores, embeddings, labels, multi, visuals = {}, ([], []), [], [], []
    correlations, extended = {}, {}  # per variant: [corr], [(ciou, conf, swapped conf)]
    seen = 0
    # Closed as soon as the loop is left, also by an exception (a preemption): the
    # input workers' batches in flight are freed then, not at interpreter exit.
    with contextlib.closing(pipeline.eval_batches(self.config, directory,
                                                  config.batch_size)) as batches:
      for batch in batches:
        if self.interrupt is not None and self.interrupt():
          raise preemption.Preempted(f'evaluation of {split} stopped at example {seen}')
        chosen = np.flatnonzero(batch['valid'])
        if config.max_examples:
          chosen = chosen[:max(config.max_examples - seen, 0)]
        if not len(chosen):
          break
        outputs = self._outputs(model, batch)
        swap = self._swap_order(model, batch, chosen)
        swapped_outputs = self._outputs(model, batch, audio_order=swap[0]) if swap else None
        for i in chosen:
          seen += 1
          gt_sources = source_maps(manifest.gt, batch, i, self.size)
          gt = np.clip(gt_sources.sum(0), 0, 1) if len(gt_sources) > 1 else gt_sources[0]
          maps = self._maps(outputs, i)
          group = avsbench_video(str(batch['id'][i])) if per_video else None
          cious = {name: scores.setdefault(name, _SplitScores()).add(
              heatmap, gt, config.threshold_protocol, self.threshold, keep_masks, group)
                   for name, heatmap in maps.items()}
          swapped_maps = self._maps(swapped_outputs, i) if swap and swap[1][i] else {}
          for name, heatmap in swapped_maps.items():
            scores.setdefault(name + SWAP_SUFFIX, _SplitScores()).add(
                heatmap, gt, config.threshold_protocol, self.threshold, False)
            correlations.setdefault(name, []).append(
                grounding.map_correlation(maps[name], heatmap))
          for name, score_map in outputs.get('scores', {}).items() if swapped_maps else ():
            extended.setdefault(name, []).append((
                cious[name], multisource.object_confidence(score_map[i]),
                multisource.object_confidence(swapped_outputs['scores'][name][i])))
          if 'image_embedding' in outputs:
            embeddings[0].append(outputs['image_embedding'][i])
            embeddings[1].append(outputs['audio_embedding'][i])
            labels.append(int(batch['label'][i]))
          if 'object_maps' in outputs:
            objects = np.asarray(outputs['object_maps'][i][outputs['object_valid'][i]])
            multi.append(multisource.evaluate_sample(
                objects, gt_sources, config.threshold_protocol, self.threshold))
          if len(visuals) < config.num_visualize:
            first = next(iter(maps))
            # A copy: a view would keep the whole batch of images.
            visuals.append((np.array(batch['image'][i]), gt, maps[first],
                            swapped_maps[first] if swapped_maps else None))
    if not seen:
      raise ValueError(f'{directory}: no examples to evaluate')
    result = {}
    for name, accumulated in scores.items():
      result.update({f'{name}/{k}': v for k, v in accumulated.summary().items()})
    for name, values in correlations.items():
      result[f'{name}{SWAP_SUFFIX}/corr'] = float(np.mean(values))
    for name, entries in extended.items():
      result.update({f'{name}/{k}': v for k, v in grounding.extended_protocol(
          *np.asarray(entries).T).items()})
    if labels and min(labels) >= 0:
      ks = tuple(k for k in config.recall_at if k <= len(labels))  # R@K needs K <= gallery
      result.update({f'retrieval/{k}': v for k, v in retrieval.recall_at_k(
          np.stack(embeddings[0]), np.stack(embeddings[1]), np.asarray(labels), ks).items()})
      self.retrieval_chance[split] = retrieval.chance_recall_at_k(np.asarray(labels), ks)
    if multi:
      if manifest.gt == tfrecord.GT_MULTISOURCE:
        summary = multisource.summarize_multisource(multi)
      else:
        summary = {**multisource.summarize_single_source(multi),
                   'count_acc': float(np.mean([r.num_objects == 1 for r in multi]))}
      result.update({f'objects/{k}': v for k, v in summary.items()})
    if not isinstance(model, str):  # a baseline draws no pictures
      self._save_visuals(split, step, visuals)
    return result

  def _save_visuals(self, split, step, visuals):
    """One row per sample: input, ground truth, the primary map, and the map with another
    class's audio (when swapped)."""
    rows = []
    for image, gt, heatmap, swapped in visuals:
      row = [visualize.label(image, 'input'),
             visualize.label(visualize.overlay(image, gt), 'ground truth'),
             visualize.label(visualize.overlay(image, visualize.normalize(heatmap)),
                             'prediction')]
      if swapped is not None:
        row.append(visualize.label(visualize.overlay(image, visualize.normalize(swapped)),
                                   'other audio'))
      rows.append(row)
    if rows:
      name = f'{split}_step{step}.png' if step is not None else f'{split}_checkpoint.png'
      visualize.save_png(self.output_dir / name, visualize.grid(rows))

  def table(self, split: str) -> str:
    """The split's rows in percent, paper style: the centre prior, then for every
    evaluation one row per map variant (retrieval / multi-source columns on the first)."""
    rows = [row for label, scores in self.rows[split] for row in _table_rows(label, scores)]
    columns = sorted({c for _, cells in rows for c in cells}, key=_column_order)
    manifest = self.manifests[split]
    widths = [max(len(label) for label, _ in rows)] + [max(len(c), 6) for c in columns]
    lines = [f'{split} ({manifest.num_examples} examples, ground truth: {manifest.gt})',
             ' | '.join(['model'.ljust(widths[0])] + [
                 c.rjust(w) for c, w in zip(columns, widths[1:])])]
    lines.append('-' * len(lines[-1]))
    for label, cells in rows:
      values = [f'{100 * cells[c]:.2f}' if c in cells else '-' for c in columns]
      lines.append(' | '.join([label.ljust(widths[0])] + [
          v.rjust(w) for v, w in zip(values, widths[1:])]))
    if split in self.retrieval_chance:  # Recall@K is class-level: chance is far above 1/N
      lines.append('retrieval chance (a random ranking, this split\'s class frequencies): ' +
                   ', '.join(f'R@{k} {100 * v:.2f}'
                             for k, v in self.retrieval_chance[split].items()))
    return '\n'.join(lines)

  def _write_split(self, split, step):
    rows = self.rows[split]
    record = {'split': split, 'directory': self.split_dirs[split],
              'gt': self.manifests[split].gt, 'step': step,
              'retrieval_chance': {f'r{k}': v for k, v in self.retrieval_chance.get(
                  split, {}).items()},
              'metrics': rows[-1][1], 'history': [
                  {'model': l, 'step': n, **s} for (l, s), n in zip(rows, self.row_steps[split])]}
    workdir = epath.Path(self.workdir)
    tfrecord.atomic_write_json(workdir / f'eval_{split}.json', record)
    columns = sorted({k for _, scores in rows for k in scores})
    table = io.StringIO(newline='')
    out = csv.writer(table)
    out.writerow(['model'] + columns)
    for label, scores in rows:
      out.writerow([label] + [scores.get(c, '') for c in columns])
    paths.write_bytes_atomic(workdir / f'eval_{split}.csv', [table.getvalue().encode('utf-8')])


def _table_rows(label: str, scores: dict) -> list[tuple[str, dict]]:
  """{'<variant>/<metric>', 'retrieval/<metric>', 'objects/<metric>'} -> one row per map
  variant; the retrieval and object metrics go on the first row."""
  shared = {k: v for k, v in scores.items() if k.startswith(('retrieval/', 'objects/'))}
  variants = list(dict.fromkeys(k.partition('/')[0] for k in scores
                                if not k.startswith(('retrieval/', 'objects/'))))
  rows = []
  for n, variant in enumerate(variants):
    cells = {k.partition('/')[2]: v for k, v in scores.items() if k.startswith(variant + '/')}
    shown = variant.replace(SWAP_SUFFIX, ', audio swapped')
    name = label if len(variants) == 1 or variant == _PRIOR_VARIANT else f'{label} [{shown}]'
    rows.append((name, {**cells, **(shared if n == 0 else {})}))
  return rows


def _column_order(column: str):
  """Map metrics, then retrieval, then object metrics; each in the papers' order."""
  group, _, metric = column.rpartition('/')
  order = ['ap50', 'auc', 'ciou', 'miou', 'fscore', 'ext_ap', 'ext_f1', 'corr', 'a2i_r1', 'a2i_r5', 'a2i_r10', 'i2a_r1',
           'i2a_r5', 'i2a_r10', 'cap', 'piap', 'ciou30', 'ap', 'iou50', 'count_acc']
  return (['', 'retrieval', 'objects'].index(group),
          order.index(metric) if metric in order else len(order), metric)
