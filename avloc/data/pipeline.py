"""Grain input pipelines over prepared TFRecord splits (avloc.data.tfrecord).

Reading: a random-access source over the byte offsets that every shard's index file
lists, rather than Grain's sequential `TFRecordIterDataset`. Random access gives a full
global shuffle each epoch (a different permutation per epoch, no shuffle buffer, no
file-order correlation) and an iterator state that is just a position, so a resumed run
sees exactly the batches it would have seen. The price is one seek per record, which is
negligible next to JPEG decoding (benchmarks/input_pipeline.py).

Training: shuffle (same permutation on every process) -> this process's share
(index % process_count) -> repeat, reshuffled per epoch -> NoPrior mixtures:
`mixture.num_sources` consecutive records -> batches of consecutive inputs -> decode +
augment with a per-batch RNG (deterministic), frames side by side and waveforms summed
-> spectrogram -> worker processes (`mp_prefetch`), each producing whole batches, so the
batches are the same for any `data.num_workers`.
Evaluation: every record in order, deterministic transforms, the last batch padded and
marked by `valid`.
"""

import functools
import os
import threading
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from avloc import sharding
from avloc.data import audio as audio_lib
from avloc.data import image as image_lib
from avloc.data import tfrecord, workers


class RecordSource:
  """Serialized records of a prepared split, by global index (shard order). Pipelines
  iterate over indices and read inside their transforms, so a corrupt record is
  reported (or skipped) like any other bad record."""

  def __init__(self, split_dir: epath.PathLike):
    self.split_dir = str(split_dir)  # a str pickles into worker processes as it is
    self.manifest = tfrecord.read_manifest(split_dir)
    self._locations = [(shard.file, offset) for shard in self.manifest.shards
                       for offset in shard.offsets]
    self._files = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._locations)

  def location(self, index: int) -> str:
    file, offset = self._locations[index]
    return f'{epath.Path(self.split_dir) / file} (record {index}, byte {offset})'

  def read(self, index: int) -> bytes:
    file, offset = self._locations[index]
    path = epath.Path(self.split_dir) / file
    with self._lock:  # file handles are per process (opened lazily, after fork)
      key = (os.getpid(), file)
      if key not in self._files:
        self._files[key] = path.open('rb')  # pylint: disable=consider-using-with
      return tfrecord.read_record_at(self._files[key], offset, str(path))

  def __getstate__(self):
    state = dict(self.__dict__)
    state.update(_files={}, _lock=None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f'RecordSource({self.split_dir!r}, {len(self)} records)'


def _check_split(source: RecordSource, config: ml_collections.ConfigDict) -> None:
  manifest = source.manifest
  if len(source) == 0:
    raise ValueError(f'{source.split_dir}: the split has no records '
                     f'(skipped inputs: {len(manifest.skipped)}; see its manifest.json)')
  if manifest.sample_rate != config.data.audio.sample_rate:
    raise ValueError(
        f'{source.split_dir} holds {manifest.sample_rate} Hz audio but '
        f'config.data.audio.sample_rate is {config.data.audio.sample_rate}: set the config '
        'field to match or re-run the converter with --sample_rate')


class _Decoder:
  """Record bytes -> example dict; bad records raise a FormatError naming the shard
  and record, or become None (counted and logged) with `data.skip_bad_records`."""

  def __init__(self, source: RecordSource, config: ml_collections.ConfigDict):
    self.source = source
    self.config = config
    self.skipped = 0

  def decode(self, index: int, transform):
    try:
      example = tfrecord.decode_example(self.source.read(index))
      example['image'] = image_lib.decode_image(example['image'])
      example['waveform'] = tfrecord.pcm16_waveform(example['audio'])
      if example['waveform'].size == 0:
        raise ValueError('empty audio')
      return transform(index, example)
    except Exception as e:  # pylint: disable=broad-except
      where = self.source.location(index)
      if not self.config.data.skip_bad_records:
        raise tfrecord.FormatError(f'{where}: bad record: {e}') from e
      self.skipped += 1
      logging.warning('Skipping bad record %s: %s (%d skipped in this worker)', where, e,
                      self.skipped)
      return None


def _spectrogram(waveform: np.ndarray, config: ml_collections.ConfigDict,
                 rng: np.random.Generator | None) -> np.ndarray:
  """[N] waveform -> [F, T, 1] log spectrogram (+ SpecAugment when training)."""
  spectrogram = audio_lib.log_spectrogram(waveform, config.data.audio)
  if rng is not None and config.data.spec_augment:
    spectrogram = audio_lib.spec_augment(spectrogram, rng, config.data.spec_augment_width)
  return spectrogram[..., None]


def mixture_sources(config: ml_collections.ConfigDict) -> int:
  """Clips per training input: `data.mixture.num_sources` (NoPrior), else 1."""
  return config.data.mixture.num_sources if 'mixture' in config.data else 1


def train_dataset(config: ml_collections.ConfigDict, split_dir: str, *, seed: int,
                  process_index: int, process_count: int,
                  global_batch_size: int) -> grain.IterDataset:
  """Infinite training batches of this process: {'image': uint8 [b, S, n*S, 3],
  'spectrogram': float32 [b, F, T, 1]}, b = global_batch_size / process_count."""
  source = RecordSource(split_dir)
  _check_split(source, config)
  if global_batch_size % process_count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the '
                     f'{process_count} processes')
  sources = mixture_sources(config)
  length = audio_lib.num_samples(config.data.audio)
  decoder = _Decoder(source, config)

  def example(indices, rng):
    """n records -> model inputs: frames side by side, waveforms summed before the
    spectrogram (NoPrior Sec. 4.1); n = 1 is a plain pair."""
    parts = [decoder.decode(index, lambda _, e: (
        image_lib.train_transform(e['image'], rng, config.data.image),
        audio_lib.fit_length(e['waveform'], length))) for index in indices]
    if any(part is None for part in parts):
      return None
    images, waveforms = zip(*parts)
    return {'image': np.concatenate(images, axis=1),
            'spectrogram': _spectrogram(np.sum(waveforms, axis=0), config, rng)}

  def decode_batch(inputs, rng):
    """[b][n] record indices -> the batch's b inputs; none (the batch skipped) if a
    record is bad and `data.skip_bad_records`, so that every batch has b inputs."""
    examples = [example(indices, rng) for indices in inputs]
    return [] if any(e is None for e in examples) else examples

  # A batch's inputs are chosen and decoded together, from record indices, before the
  # worker processes: each worker then turns whole batches into inputs and stacks them
  # back (Grain's batch, which writes to shared memory). Batching decoded inputs would
  # give each worker every n-th input, and the batches would depend on the number of
  # workers.
  batch_size = global_batch_size // process_count
  dataset = (grain.MapDataset.range(len(source)).seed(seed).shuffle()
             .slice(slice(process_index, None, process_count))
             .repeat(None)
             .batch(sources, drop_remainder=True, batch_fn=list)
             .batch(batch_size, drop_remainder=True, batch_fn=list)
             .random_map(decode_batch, seed=seed * 1000003 + process_index)
             .to_iter_dataset())
  dataset = grain.experimental.FlatMapIterDataset(dataset, _Inputs(batch_size)).batch(
      batch_size, drop_remainder=True)
  return _prefetch(dataset, config, config.data.num_workers)


class _Inputs(grain.experimental.FlatMapTransform):
  """A decoded batch's list of inputs -> the inputs (none for a skipped batch)."""

  def __init__(self, batch_size: int):
    self.max_fan_out = batch_size

  def flat_map(self, element):
    return element


def _prefetch(dataset: grain.IterDataset, config, num_workers: int) -> grain.IterDataset:
  """`num_workers` worker processes (none for 0), which end with this process."""
  if num_workers == 0:
    return dataset
  return dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers,
      per_worker_buffer_size=config.data.worker_buffer_size),
      worker_init_fn=functools.partial(workers.watch_parent, os.getpid()))


# Evaluation ---------------------------------------------------------------------------

EVAL_KEYS = ('image', 'spectrogram', 'index', 'id', 'valid', 'label', 'boxes', 'box_groups',
             'masks', 'num_sources', 'source_labels')


def eval_example(example: dict, index: int, classes: list[str],
                 config: ml_collections.ConfigDict) -> dict:
  """Decoded record -> evaluation inputs and ground truth of one sample:
  image uint8 [S, S, 3], spectrogram [F, T, 1], id (the record's clip id, str),
  boxes [N, 4] normalized xyxy,
  box_groups [N], masks bool [M, S, S], num_sources, label (class index, -1 unless
  exactly one source), source_labels [num_sources]."""
  size = config.data.image.size
  masks = [image_lib.resize_mask(image_lib.decode_mask(m), size) for m in example['masks']]
  labels = [label.decode('utf-8') for label in example['labels']]
  class_index = {name: i for i, name in enumerate(classes)}
  source_labels = [class_index.get(name, -1) for name in labels]
  num_sources = len(masks) or max(len(labels), 1)
  waveform = audio_lib.fit_length(example['waveform'], audio_lib.num_samples(config.data.audio))
  return dict(
      image=image_lib.eval_transform(example['image'], config.data.image),
      spectrogram=_spectrogram(waveform, config, None),
      index=index,
      id=example['id'].decode('utf-8'),
      valid=True,
      label=source_labels[0] if len(source_labels) == 1 else -1,
      boxes=np.asarray(example['boxes'], np.float32).reshape(-1, 4),
      box_groups=np.asarray(example['box_groups'], np.int64),
      masks=np.stack(masks) if masks else np.zeros((0, size, size), bool),
      num_sources=num_sources,
      source_labels=np.asarray(source_labels, np.int64),
  )


def _pad_to(arrays: list[np.ndarray], value) -> np.ndarray:
  """Stacks arrays whose first axis differs, padding it with `value`: [B, max N, ...]."""
  longest = max(1, max(a.shape[0] for a in arrays))
  out = np.full((len(arrays), longest) + arrays[0].shape[1:], value, arrays[0].dtype)
  for i, a in enumerate(arrays):
    out[i, :a.shape[0]] = a
  return out


def collate_eval(examples: list[dict], batch_size: int) -> dict:
  """Eval examples -> a batch of exactly `batch_size` (the tail padded, valid=False);
  variable-length ground truth padded (boxes 0, groups and labels -1, masks False)."""
  padding = batch_size - len(examples)
  examples = list(examples) + [dict(examples[-1], valid=False, index=-1)] * padding
  batch = {key: np.stack([e[key] for e in examples])
           for key in ('image', 'spectrogram', 'index', 'id', 'valid', 'label', 'num_sources')}
  batch['boxes'] = _pad_to([e['boxes'] for e in examples], 0.0)
  batch['box_groups'] = _pad_to([e['box_groups'] for e in examples], -1)
  batch['masks'] = _pad_to([e['masks'] for e in examples], False)
  batch['source_labels'] = _pad_to([e['source_labels'] for e in examples], -1)
  return batch


def eval_dataset(config: ml_collections.ConfigDict, split_dir: str,
                 batch_size: int) -> grain.IterDataset:
  """Every record of the split once, in order, as batches with EVAL_KEYS (see
  `eval_example` and `collate_eval`) of consecutive records (a bad record skipped with
  `data.skip_bad_records` leaves a padded slot). Every process reads all of it.

  Workers (`eval.num_workers`) decode whole batches, so the batches, and with them
  each image's swapped audio (`grounding.swap_partners` pairs within a batch), are the
  same for any number of workers; batching the decoded records inside the workers
  would give each worker every n-th record."""
  source = RecordSource(split_dir)
  _check_split(source, config)
  classes = source.manifest.classes
  decoder = _Decoder(source, config)

  def transform(index, example):
    return eval_example(example, index, classes, config)

  def decode_batch(indices):
    examples = [decoder.decode(index, transform) for index in indices]
    examples = [example for example in examples if example is not None]
    return collate_eval(examples, batch_size) if examples else None

  dataset = (grain.MapDataset.range(len(source)).batch(batch_size, batch_fn=list)
             .map(decode_batch).to_iter_dataset().filter(lambda batch: batch is not None))
  return _prefetch(dataset, config, config.eval.num_workers)


def eval_batches(config: ml_collections.ConfigDict, split_dir: str,
                 batch_size: int) -> Iterator[dict]:
  """`eval_dataset`'s batches as plain ndarrays, copied out of the input workers' shared
  memory: a batch still referenced when the loop is left (a local, a preempted run's
  traceback) would otherwise keep its segments until interpreter exit ("leaked
  shared_memory objects"). When the generator is closed (the loop ends or is left, also
  by an exception, under `contextlib.closing`) the workers stop and the batches in
  flight are freed (`workers.close`)."""
  iterator = iter(eval_dataset(config, split_dir, batch_size))
  try:
    # map, not a generator expression: that would keep the last shared batch bound.
    yield from map(_copied_out, iterator)
  finally:
    workers.close(iterator)


def _copied_out(batch: dict) -> dict:
  return {key: sharding.out_of_shared_memory(value) for key, value in batch.items()}
