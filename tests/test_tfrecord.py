"""avloc's on-disk format: TFRecord framing, the Example codec, shards and manifests."""

import json
import os
import struct

import google_crc32c
import numpy as np
import pytest

from avloc.data import tfrecord


def _masked(crc):
  """TFRecord's CRC masking: rotate right by 15 bits, add 0xa282ead8 (mod 2^32)."""
  rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
  return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def test_framing_follows_the_tfrecord_layout():
  assert google_crc32c.value(b'123456789') == 0xE3069283  # CRC-32C check value
  data = b'hello avloc'
  frame = tfrecord.frame_record(data)
  assert len(frame) == 8 + 4 + len(data) + 4
  assert struct.unpack('<Q', frame[:8]) == (len(data),)
  assert struct.unpack('<I', frame[8:12]) == (_masked(google_crc32c.value(frame[:8])),)
  assert frame[12:-4] == data
  assert struct.unpack('<I', frame[-4:]) == (_masked(google_crc32c.value(data)),)


def test_records_round_trip_and_offsets(tmp_path):
  payloads = [b'', b'a', os.urandom(1000), b'xyz' * 50]
  path = str(tmp_path / 'x.tfrecord')
  info = tfrecord.write_shard(path, payloads)
  assert info.num_examples == 4 and info.offsets == tfrecord.scan_offsets(path)
  assert list(tfrecord.iter_records(path)) == payloads
  with open(path, 'rb') as f:
    assert tfrecord.read_record_at(f, info.offsets[2], path) == payloads[2]
  assert [n for n in os.listdir(tmp_path) if '.tmp' in n] == []


def test_corrupt_and_truncated_records_name_the_file_and_offset(tmp_path):
  path = str(tmp_path / 'x.tfrecord')
  info = tfrecord.write_shard(path, [b'first record', b'second record'])
  raw = bytearray(open(path, 'rb').read())
  raw[info.offsets[1] + 14] ^= 0xFF  # a byte of the second payload
  open(path, 'wb').write(raw)
  with open(path, 'rb') as f:
    assert tfrecord.read_record_at(f, 0, path) == b'first record'
    with pytest.raises(tfrecord.FormatError,
                       match=rf'{path}: corrupt data CRC of the record at byte {info.offsets[1]}'):
      tfrecord.read_record_at(f, info.offsets[1], path)
  open(path, 'wb').write(raw[:-3])
  with pytest.raises(tfrecord.FormatError, match=rf'{path}: truncated last record'):
    tfrecord.scan_offsets(path)


def test_example_codec_round_trip():
  values = {'id': 'clip_1', 'image': b'\xff\xd8jpeg', 'audio': tfrecord.pcm16_bytes([0.5, -1]),
            'labels': ['dog', 'cat'], 'boxes': np.array([[0.1, 0.2, 0.3, 0.4]]),
            'box_groups': [1], 'masks': [b'png']}
  decoded = tfrecord.decode_example(tfrecord.encode_example(values))
  assert decoded['id'] == b'clip_1' and decoded['labels'] == [b'dog', b'cat']
  np.testing.assert_allclose(decoded['boxes'], [0.1, 0.2, 0.3, 0.4], rtol=1e-7)
  np.testing.assert_array_equal(decoded['box_groups'], [1])
  np.testing.assert_allclose(tfrecord.pcm16_waveform(decoded['audio']), [0.5, -1], atol=1e-4)
  minimal = tfrecord.decode_example(tfrecord.encode_example(
      {'id': 'a', 'image': b'i', 'audio': b''}))
  assert minimal['labels'] == [] and minimal['boxes'].shape == (0,)


def test_example_codec_rejects_unknown_and_missing_features():
  with pytest.raises(tfrecord.FormatError, match=r"unknown features \['caption'\]"):
    tfrecord.encode_example({'id': 'a', 'image': b'', 'audio': b'', 'caption': 'x'})
  with pytest.raises(tfrecord.FormatError, match=r"missing required features \['audio'\]"):
    tfrecord.encode_example({'id': 'a', 'image': b''})


def test_pcm16_clips_and_round_trips():
  waveform = np.array([0.0, 0.25, -0.25, 1.0, -1.0, 3.0])
  restored = tfrecord.pcm16_waveform(tfrecord.pcm16_bytes(waveform))
  np.testing.assert_allclose(restored, np.clip(waveform, -1, 1), atol=1 / 32767)


def test_finished_shard_requires_both_files_and_a_consistent_index(tmp_path):
  path = str(tmp_path / tfrecord.shard_name('train', 0, 1))
  assert tfrecord.finished_shard(path) is None
  tfrecord.write_shard(path, [b'a', b'b'], skipped=[{'id': 'c', 'reason': 'corrupt JPEG'}])
  info = tfrecord.finished_shard(path)
  assert info.num_examples == 2 and info.skipped == [{'id': 'c', 'reason': 'corrupt JPEG'}]
  open(path, 'wb').write(b'')  # data file emptied after the index was written
  assert tfrecord.finished_shard(path) is None


def _manifest(shards):
  return tfrecord.Manifest(dataset='d', split='s', gt=tfrecord.GT_BOXES, sample_rate=16000,
                           audio_seconds=5.0, classes=['a'], shards=shards)


def test_manifest_round_trip_and_errors(tmp_path):
  shard = tfrecord.write_shard(str(tmp_path / tfrecord.shard_name('s', 0, 1)), [b'x'])
  tfrecord.write_manifest(str(tmp_path), _manifest([shard]))
  manifest = tfrecord.read_manifest(str(tmp_path))
  assert manifest.num_examples == 1 and manifest.gt == 'boxes' and manifest.classes == ['a']
  stored = json.load(open(tmp_path / 'manifest.json'))
  assert stored['num_examples'] == 1 and 'audio' in stored['features']

  with pytest.raises(FileNotFoundError, match=r'manifest\.json not found: .* is not a prepared'):
    tfrecord.read_manifest(str(tmp_path / 'elsewhere'))
  stored['format_version'] = 99
  json.dump(stored, open(tmp_path / 'manifest.json', 'w'))
  with pytest.raises(tfrecord.FormatError, match=r'format_version 99, this avloc reads 1'):
    tfrecord.read_manifest(str(tmp_path))
  tfrecord.write_manifest(str(tmp_path), _manifest([shard]))
  os.remove(tmp_path / shard.file)
  with pytest.raises(FileNotFoundError, match=rf'lists shard {shard.file}, which is missing'):
    tfrecord.read_manifest(str(tmp_path))
  with pytest.raises(tfrecord.FormatError, match=r'gt "pixels" is not one of'):
    tfrecord.write_manifest(str(tmp_path), tfrecord.Manifest(
        dataset='d', split='s', gt='pixels', sample_rate=1, audio_seconds=1.0, classes=[],
        shards=[]))
