"""Grain pipelines (avloc.data.pipeline): batches, resume, process sharding, bad records."""

import os

import numpy as np
import pytest

from avloc.data import pipeline, tfrecord, workers
from configs import jsa as jsa_config
from configs import noprior as noprior_config
from tests import splits


def _config(method=jsa_config, **data):
  config = method.get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5)
  config.data.num_workers = 0
  config.data.update(data)
  return config


def _train(config, split_dir, batch=4, process_index=0, process_count=1, seed=0):
  return pipeline.train_dataset(config, split_dir, seed=seed, process_index=process_index,
                                process_count=process_count, global_batch_size=batch)


@pytest.fixture(scope='module')
def split_dir(tmp_path_factory):
  return splits.write_split(tmp_path_factory.mktemp('data') / 'split', num_examples=24,
                            image_size=40, audio_seconds=0.5, gt=tfrecord.GT_BOXES)


def test_train_batches_have_the_model_input_shapes(split_dir):
  batch = next(iter(_train(_config(), split_dir)))
  assert batch['image'].shape == (4, 32, 32, 3) and batch['image'].dtype == np.uint8
  assert batch['spectrogram'].shape == (4, 257, 51, 1)


def test_noprior_mixtures_put_frames_side_by_side_and_sum_waveforms(split_dir):
  config = _config(noprior_config, spec_augment=False)
  config.data.mixture.num_sources = 2
  config.data.image.update(flip=False, train_resize=32)  # no augmentation: exact frames
  batch = next(iter(_train(config, split_dir, batch=2)))
  assert batch['image'].shape == (2, 32, 64, 3)
  # The first mixture is the first two records of the shuffled order; find them.
  eval_batch = next(iter(pipeline.eval_dataset(_config(), split_dir, batch_size=24)))
  left, right = batch['image'][0, :, :32], batch['image'][0, :, 32:]
  matches = [[i for i in range(24) if np.abs(eval_batch['image'][i].astype(int) - half).max() < 3]
             for half in (left, right)]
  assert len(matches[0]) == 1 and len(matches[1]) == 1
  records = [tfrecord.decode_example(r) for shard in sorted(os.listdir(split_dir))
             if shard.endswith('.tfrecord') for r in tfrecord.iter_records(
                 os.path.join(split_dir, shard))]
  from avloc.data import audio  # pylint: disable=g-import-not-at-top
  waveform = sum(audio.fit_length(tfrecord.pcm16_waveform(records[m[0]]['audio']), 8000)
                 for m in matches)
  np.testing.assert_allclose(batch['spectrogram'][0, :, :, 0],
                             audio.log_spectrogram(waveform, config.data.audio), atol=1e-4)


def test_eval_batches_keep_every_record_once_with_scaled_ground_truth(split_dir):
  batches = list(pipeline.eval_dataset(_config(), split_dir, batch_size=10))
  assert len(batches) == 3
  valid = np.concatenate([b['valid'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  assert valid.sum() == 24 and sorted(index[valid]) == list(range(24))
  records = [tfrecord.decode_example(r) for s in range(2) for r in tfrecord.iter_records(
      os.path.join(split_dir, tfrecord.shard_name('split', s, 2)))]
  np.testing.assert_allclose(batches[0]['boxes'][3, 0], records[3]['boxes'])
  assert batches[0]['label'][3] == 0 and batches[0]['label'][4] == 1  # i % 3 classes
  assert batches[0]['box_groups'].shape == (10, 1) and batches[0]['masks'].shape[2:] == (32, 32)


def test_a_resumed_iterator_continues_with_the_same_batches(split_dir):
  config = _config(spec_augment=True)
  config.data.image.hard_augment = True
  iterator = iter(_train(config, split_dir))
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(5)]  # crosses an epoch boundary
  resumed = iter(_train(config, split_dir))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['spectrogram'], want['spectrogram'])


def _epoch_images(config, split_dir, process_index, process_count):
  """The first epoch's frames of one process, as bytes."""
  iterator = iter(_train(config, split_dir, batch=4 * process_count,
                         process_index=process_index, process_count=process_count))
  per_process = 24 // process_count
  return [img.tobytes() for _ in range(per_process // 4) for img in next(iterator)['image']]


def test_processes_read_disjoint_shares_that_cover_the_split(split_dir):
  config = _config()
  config.data.image.update(flip=False, train_resize=32)
  shares = [_epoch_images(config, split_dir, p, 3) for p in range(3)]
  everything = set(_epoch_images(config, split_dir, 0, 1))
  assert all(len(s) == 8 for s in shares)
  assert set().union(*map(set, shares)) == everything and len(everything) == 24


def test_epochs_are_reshuffled(split_dir):
  config = _config()
  config.data.image.update(flip=False, train_resize=32)
  iterator = iter(_train(config, split_dir, batch=24))
  first, second = next(iterator)['image'], next(iterator)['image']
  assert sorted(x.tobytes() for x in first) == sorted(x.tobytes() for x in second)
  assert not np.array_equal(first, second)


def _corrupt_copy(split_dir, tmp_path):
  """A copy of the split with one flipped byte inside record 2 of shard 0."""
  copy = tmp_path / 'corrupt'
  copy.mkdir()
  for name in os.listdir(split_dir):
    data = open(os.path.join(split_dir, name), 'rb').read()
    if name == tfrecord.shard_name('split', 0, 2):
      offsets = tfrecord.read_manifest(split_dir).shards[0].offsets
      position = offsets[2] + 40
      data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1:]
    (copy / name).write_bytes(data)
  return str(copy)


def test_eval_batches_are_the_same_with_worker_processes(split_dir):
  """Consecutive records per batch for any eval.num_workers, so the audio-swap partners
  (paired within a batch) do not depend on it."""
  config = _config()
  batches = {}
  for count in (0, 2):
    config.eval.num_workers = count
    batches[count] = list(pipeline.eval_dataset(config, split_dir, batch_size=10))
  assert [list(b['index']) for b in batches[2]] == [list(b['index']) for b in batches[0]]
  assert list(batches[0][1]['index']) == list(range(10, 20))
  np.testing.assert_array_equal(batches[2][2]['spectrogram'], batches[0][2]['spectrogram'])


def test_train_batches_are_the_same_with_worker_processes(split_dir):
  """Workers decode whole batches of consecutive inputs, so a run's batches (and with
  them its training) do not depend on data.num_workers."""
  config = _config(noprior_config)  # mixtures: consecutive records per input as well
  config.data.mixture.num_sources = 2
  batches = {}
  for count in (0, 2):
    config.data.num_workers = count
    iterator = iter(_train(config, split_dir, batch=3))
    batches[count] = [next(iterator) for _ in range(5)]  # crosses an epoch boundary
    workers.close(iterator)
  for want, got in zip(batches[0], batches[2]):
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['spectrogram'], want['spectrogram'])


@pytest.mark.parametrize('method,spec_augment,num_sources', [
    (jsa_config, False, None), (jsa_config, True, None), (noprior_config, False, 2)])
def test_every_batch_array_is_c_contiguous(split_dir, method, spec_augment, num_sources):
  """Grain's input workers hand only C-contiguous arrays over in shared memory; any other
  is pickled through a pipe (the log spectrograms were: 1.3-1.5x fewer samples/s with two
  workers, and a worker stopped with one in its pipe hung until Grain killed it, leaking
  the batch's shared memory). With SpecAugment, and NoPrior's two-source mixtures."""
  config = _config(method, spec_augment=spec_augment)
  if num_sources:
    config.data.mixture.num_sources = num_sources
  batches = {'train': next(iter(_train(config, split_dir))),
             'eval': next(iter(pipeline.eval_dataset(config, split_dir, batch_size=4)))}
  for name, batch in batches.items():
    for key, value in batch.items():
      assert value.flags.c_contiguous and not value.dtype.hasobject, (name, key)


def test_a_corrupt_record_names_the_shard_and_record(split_dir, tmp_path):
  corrupt = _corrupt_copy(split_dir, tmp_path)
  with pytest.raises(tfrecord.FormatError,
                     match=r'split-00000-of-00002\.tfrecord.*corrupt data CRC'):
    list(pipeline.eval_dataset(_config(), corrupt, batch_size=8))


def test_bad_records_are_skipped_when_the_config_says_so(split_dir, tmp_path):
  corrupt = _corrupt_copy(split_dir, tmp_path)
  batches = list(pipeline.eval_dataset(_config(skip_bad_records=True), corrupt, batch_size=8))
  index = np.concatenate([b['index'][b['valid']] for b in batches])
  assert sorted(index) == [i for i in range(24) if i != 2]


def test_a_bad_training_record_fails_or_skips_its_batch(split_dir, tmp_path):
  corrupt = _corrupt_copy(split_dir, tmp_path)
  config = _config()
  config.data.image.update(flip=False, train_resize=32)
  with pytest.raises(tfrecord.FormatError, match=r'split-00000-of-00002\.tfrecord'):
    list(zip(range(6), _train(config, corrupt)))  # one epoch: 6 batches of 4
  clean = [b['image'] for _, b in zip(range(6), _train(config, split_dir))]
  config.data.skip_bad_records = True
  skipping = [b['image'] for _, b in zip(range(5), _train(config, corrupt))]
  # The batch holding the bad record is left out; the others are unchanged.
  kept = [c for c in clean if not any(np.array_equal(c, s) for s in skipping)]
  assert len(kept) == 1 and all(any(np.array_equal(s, c) for c in clean) for s in skipping)


def test_undecodable_jpeg_names_the_record(tmp_path):
  directory = tmp_path / 'bad_jpeg'
  directory.mkdir()
  record = tfrecord.encode_example({'id': 'x', 'image': b'not a jpeg',
                                    'audio': tfrecord.pcm16_bytes(np.zeros(800))})
  shard = tfrecord.write_shard(str(directory / tfrecord.shard_name('bad', 0, 1)), [record])
  tfrecord.write_manifest(str(directory), tfrecord.Manifest(
      dataset='t', split='bad', gt='none', sample_rate=16000, audio_seconds=0.05,
      classes=[], shards=[shard]))
  with pytest.raises(tfrecord.FormatError, match=r'bad-00000-of-00001\.tfrecord \(record 0'):
    next(iter(_train(_config(), str(directory), batch=1)))


def test_sample_rate_mismatch_and_empty_split_are_reported(split_dir, tmp_path):
  config = _config()
  config.data.audio.sample_rate = 22050
  with pytest.raises(ValueError, match='holds 16000 Hz audio but config.data.audio.sample_rate'):
    _train(config, split_dir)
  empty = tmp_path / 'empty'
  empty.mkdir()
  tfrecord.write_manifest(str(empty), tfrecord.Manifest(
      dataset='t', split='empty', gt='none', sample_rate=16000, audio_seconds=1.0,
      classes=[], shards=[]))
  with pytest.raises(ValueError, match='the split has no records'):
    _train(_config(), str(empty))
