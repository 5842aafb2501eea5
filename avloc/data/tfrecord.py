"""avloc's on-disk format, defined once: TFRecord shards of `tf.train.Example`s.

`data_prep` converters write it and `avloc.data.pipeline` reads it. A prepared split is
a directory holding

  <split>-00000-of-000NN.tfrecord   records, TFRecord framing with masked CRC32C
  <split>-00000-of-000NN.index.json  per shard: record count, byte offsets, skipped inputs
  manifest.json                      counts, sample rate, ground-truth kind, classes, spec

Each record is a `tf.train.Example` with the features of `FEATURES`. Audio is stored as
16-bit PCM waveform rather than a spectrogram: it is 3x smaller than a float32 257x501
log spectrogram, NoPrior mixes waveforms of several clips before the STFT, and the STFT
costs about 2 ms per 5 s clip in the input workers (see benchmarks/input_pipeline.py).

Shards and their index files are written to a temporary name and renamed into place,
so an interrupted writer never leaves a half shard behind. Reading goes through
`etils.epath`, so a split may also lie in Cloud Storage (`gs://...`, see avloc.paths).
"""

import dataclasses
import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import google_crc32c
import numpy as np
from etils import epath
from tensorflow_datasets.proto import tf_example_pb2

from avloc import paths

FORMAT_VERSION = 1
MANIFEST_NAME = 'manifest.json'

# Ground-truth kinds a split can carry (manifest field "gt").
GT_NONE = 'none'  # training data: no localization labels
GT_BOXES = 'boxes'  # union of normalized xyxy boxes (VGG-SS, MUSIC-Solo, synthetic)
GT_CONSENSUS = 'consensus'  # several annotators' boxes (Flickr-SoundNet test)
GT_MASKS = 'masks'  # binary segmentation masks (AVSBench S4 / MS3, synthetic)
GT_MULTISOURCE = 'multisource'  # per-source boxes/masks of a mixture (MUSIC-Duet, synthetic)
GT_KINDS = (GT_NONE, GT_BOXES, GT_CONSENSUS, GT_MASKS, GT_MULTISOURCE)


@dataclasses.dataclass(frozen=True)
class Feature:
  kind: str  # 'bytes', 'float' or 'int64'
  scalar: bool  # exactly one value per record
  description: str


FEATURES: Mapping[str, Feature] = {
    'id': Feature('bytes', True, 'clip id, utf-8'),
    'image': Feature('bytes', True, 'JPEG-encoded RGB frame'),
    'audio': Feature(
        'bytes', True, 'mono waveform, int16 little-endian PCM at the manifest sample rate'
    ),
    'labels': Feature(
        'bytes', False, 'class name of each sounding source, utf-8 (may be empty)'
    ),
    'boxes': Feature(
        'float', False, '[N*4] boxes as normalized xmin, ymin, xmax, ymax in [0, 1]'
    ),
    'box_groups': Feature(
        'int64', False, '[N] group of each box: the annotator (consensus) or the source'
    ),
    'masks': Feature(
        'bytes', False, 'PNG-encoded binary masks, one per source, image-sized'
    ),
}
REQUIRED_FEATURES = ('id', 'image', 'audio')


class FormatError(ValueError):
  """A file does not follow avloc's format; the message names the file and record."""


# ----------------------------------------------------------------------------- framing


def _masked_crc(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """One TFRecord frame: length, CRC of length, data, CRC of data."""
  length = struct.pack('<Q', len(data))
  return b''.join([
      length,
      struct.pack('<I', _masked_crc(length)),
      data,
      struct.pack('<I', _masked_crc(data)),
  ])


def read_record_at(f: BinaryIO, offset: int, path: str = '?') -> bytes:
  """Reads and CRC-checks the record framed at `offset` of the open file `f`."""
  f.seek(offset)
  header = f.read(12)
  if len(header) != 12:
    raise FormatError(f'{path}: truncated record header at byte {offset}')
  (length,) = struct.unpack('<Q', header[:8])
  (length_crc,) = struct.unpack('<I', header[8:])
  if _masked_crc(header[:8]) != length_crc:
    raise FormatError(f'{path}: corrupt length CRC of the record at byte {offset}')
  payload = f.read(length + 4)
  if len(payload) != length + 4:
    raise FormatError(f'{path}: truncated record at byte {offset}')
  data = payload[:length]
  (data_crc,) = struct.unpack('<I', payload[length:])
  if _masked_crc(data) != data_crc:
    raise FormatError(f'{path}: corrupt data CRC of the record at byte {offset}')
  return data


def scan_offsets(path: epath.PathLike) -> list[int]:
  """Byte offsets of every record of a TFRecord file (reads headers only)."""
  offsets = []
  path = epath.Path(path)
  size = path.stat().length
  with path.open('rb') as f:
    offset = 0
    while offset < size:
      f.seek(offset)
      header = f.read(12)
      if len(header) != 12:
        raise FormatError(f'{path}: truncated record header at byte {offset}')
      (length,) = struct.unpack('<Q', header[:8])
      if _masked_crc(header[:8]) != struct.unpack('<I', header[8:])[0]:
        raise FormatError(f'{path}: corrupt length CRC of the record at byte {offset}')
      offsets.append(offset)
      offset += 12 + length + 4
    if offset != size:
      raise FormatError(f'{path}: truncated last record at byte {offsets[-1]}')
  return offsets


def iter_records(path: epath.PathLike) -> Iterator[bytes]:
  """Yields the CRC-checked payloads of a TFRecord file in order."""
  with epath.Path(path).open('rb') as f:
    for offset in scan_offsets(path):
      yield read_record_at(f, offset, path)


# ----------------------------------------------------------------------------- Example codec


def encode_example(values: Mapping[str, Any]) -> bytes:
  """Serializes a dict of `FEATURES` values to a `tf.train.Example`.

  Bytes features take `bytes` or `str` (utf-8); float/int features take numbers or
  arrays (flattened). Unknown names and missing required features raise FormatError.
  """
  unknown = set(values) - set(FEATURES)
  if unknown:
    raise FormatError(f'unknown features {sorted(unknown)}; known: {list(FEATURES)}')
  missing = [name for name in REQUIRED_FEATURES if name not in values]
  if missing:
    raise FormatError(f'missing required features {missing}')
  example = tf_example_pb2.Example()
  for name, value in values.items():
    spec = FEATURES[name]
    items = [value] if spec.scalar else list(value) if spec.kind == 'bytes' else value
    feature = example.features.feature[name]
    if spec.kind == 'bytes':
      feature.bytes_list.value.extend(
          v.encode('utf-8') if isinstance(v, str) else bytes(v) for v in items
      )
    elif spec.kind == 'float':
      feature.float_list.value.extend(np.asarray(items, np.float32).ravel().tolist())
    else:
      feature.int64_list.value.extend(np.asarray(items, np.int64).ravel().tolist())
  return example.SerializeToString()


def decode_example(data: bytes) -> dict[str, Any]:
  """Parses a serialized Example into python/numpy values.

  Scalar bytes features come back as `bytes`; list bytes features as `list[bytes]`;
  float and int64 features as 1-D numpy arrays. Absent list features are empty.
  """
  example = tf_example_pb2.Example.FromString(data)
  features = example.features.feature
  out = {}
  for name, spec in FEATURES.items():
    if name not in features:
      if spec.scalar:
        raise FormatError(f'record has no "{name}" feature')
      out[name] = (
          [] if spec.kind == 'bytes'
          else np.zeros((0,), np.float32 if spec.kind == 'float' else np.int64)
      )
      continue
    feature = features[name]
    if spec.kind == 'bytes':
      values = list(feature.bytes_list.value)
    elif spec.kind == 'float':
      values = np.asarray(feature.float_list.value, np.float32)
    else:
      values = np.asarray(feature.int64_list.value, np.int64)
    if spec.scalar:
      if len(values) != 1:
        raise FormatError(f'feature "{name}" has {len(values)} values, expected 1')
      values = values[0]
    out[name] = values
  return out


def pcm16_bytes(waveform: np.ndarray) -> bytes:
  """Float waveform in [-1, 1] -> int16 little-endian PCM bytes (clipped)."""
  pcm = np.clip(np.round(np.asarray(waveform, np.float64) * 32767.0), -32768, 32767)
  return pcm.astype('<i2').tobytes()


def pcm16_waveform(data: bytes) -> np.ndarray:
  """int16 little-endian PCM bytes -> float32 waveform in [-1, 1]."""
  return np.frombuffer(data, '<i2').astype(np.float32) / 32767.0


# ----------------------------------------------------------------------------- shards


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}.tfrecord'


def _index_path(shard_path: str) -> str:
  return shard_path[: -len('.tfrecord')] + '.index.json'


def _running(pid: int) -> bool:
  """Whether process `pid` exists and has not ended. A killed writer whose parent died
  too stays a zombie until init reaps it (os.kill still reaches it): read its state."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except OSError:  # no procfs (macOS): trust kill()
    return True


def remove_stale_temporaries(directory: str) -> list[str]:
  """Removes the temporary files (`<file>.tmp-<pid>`) that writers killed mid-write left
  in `directory`, those of processes no longer running; returns their names."""
  removed = []
  for name in sorted(os.listdir(directory)):
    pid = name.rpartition(paths.TMP_INFIX)[2]
    if paths.TMP_INFIX in name and pid.isdigit() and not _running(int(pid)):
      os.remove(os.path.join(directory, name))
      removed.append(name)
  return removed


def atomic_write_json(path: epath.PathLike, value: Any) -> None:
  paths.write_bytes_atomic(path, [json.dumps(value, indent=1).encode('utf-8')])


@dataclasses.dataclass
class ShardInfo:
  file: str  # basename of the .tfrecord file
  num_examples: int
  offsets: list[int]
  skipped: list[dict[str, str]]  # [{"id": ..., "reason": ...}] inputs left out


def write_shard(
    path: str, records: Sequence[bytes], skipped: Sequence[Mapping[str, str]] = ()
) -> ShardInfo:
  """Writes serialized records and the shard's index, each atomically.

  The index is renamed into place last, so a shard counts as finished (see
  `finished_shard`) only when both files are complete.
  """
  offsets, position = [], 0
  frames = []
  for record in records:
    frame = frame_record(record)
    offsets.append(position)
    position += len(frame)
    frames.append(frame)
  paths.write_bytes_atomic(path, frames)
  info = ShardInfo(os.path.basename(path), len(offsets), offsets, [dict(s) for s in skipped])
  atomic_write_json(_index_path(path), dataclasses.asdict(info))
  return info


def finished_shard(path: str) -> ShardInfo | None:
  """The ShardInfo of a completely written shard, or None if it must be (re)written."""
  index = _index_path(path)
  if not (os.path.exists(path) and os.path.exists(index)):
    return None
  try:
    with open(index) as f:
      info = ShardInfo(**json.load(f))
  except (ValueError, TypeError):
    return None
  if info.file != os.path.basename(path) or (
      info.offsets and info.offsets[-1] >= os.path.getsize(path)
  ):
    return None
  return info


# ----------------------------------------------------------------------------- manifest


@dataclasses.dataclass
class Manifest:
  """What a prepared split holds; `manifest.json` in the split directory."""

  dataset: str
  split: str
  gt: str  # one of GT_KINDS
  sample_rate: int
  audio_seconds: float
  classes: list[str]
  shards: list[ShardInfo]
  source: str = ''  # where the raw data came from
  format_version: int = FORMAT_VERSION

  @property
  def num_examples(self) -> int:
    return sum(s.num_examples for s in self.shards)

  @property
  def skipped(self) -> list[dict[str, str]]:
    return [s for shard in self.shards for s in shard.skipped]


def write_manifest(directory: str, manifest: Manifest) -> str:
  if manifest.gt not in GT_KINDS:
    raise FormatError(f'manifest gt "{manifest.gt}" is not one of {GT_KINDS}')
  value = dataclasses.asdict(manifest)
  value['num_examples'] = manifest.num_examples
  value['features'] = {n: dataclasses.asdict(f) for n, f in FEATURES.items()}
  path = os.path.join(directory, MANIFEST_NAME)
  atomic_write_json(path, value)
  return path


def read_manifest(directory: epath.PathLike) -> Manifest:
  """Reads and checks `<directory>/manifest.json`; errors name the file."""
  path = epath.Path(directory) / MANIFEST_NAME
  if not path.exists():
    raise FileNotFoundError(
        f'{path} not found: {directory} is not a prepared avloc split '
        '(run a data_prep converter first, see README "Preparing datasets")'
    )
  try:
    value = json.loads(path.read_text())
  except ValueError as e:
    raise FormatError(f'{path}: not valid JSON ({e})') from e
  if value.get('format_version') != FORMAT_VERSION:
    raise FormatError(
        f'{path}: format_version {value.get("format_version")}, this avloc reads '
        f'{FORMAT_VERSION}; re-run the converter'
    )
  try:
    shards = [ShardInfo(**s) for s in value['shards']]
    manifest = Manifest(
        dataset=value['dataset'], split=value['split'], gt=value['gt'],
        sample_rate=int(value['sample_rate']),
        audio_seconds=float(value['audio_seconds']),
        classes=list(value['classes']), shards=shards, source=value.get('source', ''),
    )
  except (KeyError, TypeError) as e:
    raise FormatError(f'{path}: malformed manifest ({e!r})') from e
  if manifest.gt not in GT_KINDS:
    raise FormatError(f'{path}: gt "{manifest.gt}" is not one of {GT_KINDS}')
  for shard in shards:
    if not (epath.Path(directory) / shard.file).exists():
      raise FileNotFoundError(f'{path}: lists shard {shard.file}, which is missing')
  return manifest
