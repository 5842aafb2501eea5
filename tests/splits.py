"""Writes small prepared splits in avloc's on-disk format for tests."""

import io
import os

import numpy as np
from PIL import Image

from avloc.data import tfrecord


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def write_split(directory, num_examples: int, image_size: int = 32, audio_seconds: float = 1.0,
                gt: str = tfrecord.GT_NONE, num_classes: int = 3, num_shards: int = 2,
                sample_rate: int = 16000, seed: int = 0) -> str:
  """A split of random frames and tones; with gt='boxes' each record gets one box."""
  directory = str(directory)
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  classes = [f'class {c}' for c in range(num_classes)]
  time = np.arange(int(audio_seconds * sample_rate)) / sample_rate
  records = []
  for i in range(num_examples):
    label = i % num_classes
    image = rng.integers(0, 256, (image_size, image_size, 3)).astype(np.uint8)
    tone = 0.3 * np.sin(2 * np.pi * (200 + 150 * label) * time) + 0.05 * rng.normal(size=time.shape)
    values = {'id': f'clip{i:04d}', 'image': _jpeg(image), 'audio': tfrecord.pcm16_bytes(tone),
              'labels': [classes[label]]}
    if gt == tfrecord.GT_BOXES:
      x0, y0 = rng.uniform(0, 0.5, 2)
      values.update(boxes=[x0, y0, x0 + 0.4, y0 + 0.4], box_groups=[0])
    records.append(tfrecord.encode_example(values))
  shards = []
  for s, chunk in enumerate(np.array_split(np.arange(num_examples), num_shards)):
    path = os.path.join(directory, tfrecord.shard_name('split', s, num_shards))
    shards.append(tfrecord.write_shard(path, [records[i] for i in chunk]))
  tfrecord.write_manifest(directory, tfrecord.Manifest(
      dataset='test', split=os.path.basename(directory), gt=gt, sample_rate=sample_rate,
      audio_seconds=audio_seconds, classes=classes, shards=shards))
  return directory
