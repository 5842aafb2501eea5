"""What every converter shares: the clip description, encoding one clip as a record,
and writing a split as shards in parallel, resumably, with a report of skipped inputs.

A converter only has to list its dataset's clips (`Clip`) from the dataset's own layout
and annotation files, then call `convert`. Shards are written by worker processes, each
atomically (avloc.data.tfrecord.write_shard); a re-run skips finished shards, so an
interrupted conversion resumes where it stopped and never leaves a half shard.
"""

import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import warnings
from collections.abc import Sequence

import numpy as np
from absl import flags
from PIL import Image

from avloc import progress
from avloc.data import audio as audio_lib
from avloc.data import image as image_lib
from avloc.data import media, tfrecord
from avloc.data import workers as worker_processes

EXAMPLES_PER_SHARD = 1000
IMAGE_EXTENSIONS = media.IMAGE_EXTENSIONS
AUDIO_EXTENSIONS = media.AUDIO_EXTENSIONS
VIDEO_EXTENSIONS = media.VIDEO_EXTENSIONS


@dataclasses.dataclass
class Clip:
  """One input of a converter. Files that are '' come from `video` (the middle frame,
  the audio track)."""

  id: str
  image: str = ''
  audio: str = ''
  video: str = ''
  labels: Sequence[str] = ()
  boxes: Sequence[Sequence[float]] = ()  # [N, 4] normalized xmin, ymin, xmax, ymax
  box_groups: Sequence[int] = ()  # [N] annotator (consensus) or source index
  masks: Sequence[str] = ()  # one mask image file per source


@dataclasses.dataclass(frozen=True)
class Options:
  audio_seconds: float = 5.0
  sample_rate: int = 16000
  resampler: str = 'sinc_hann'  # avloc.data.audio.RESAMPLERS: the releases' by default


def find_file(directory: str, stem: str, extensions: Sequence[str]) -> str:
  """`directory/stem.<ext>` for the first extension that exists; '' if none does."""
  for extension in extensions:
    path = os.path.join(directory, stem + extension)
    if os.path.isfile(path):
      return path
  return ''


def media_files(root: str, clip_id: str) -> dict[str, str]:
  """The files of a clip in the layouts the LVS / EZ-VSL code reads
  (`<root>/frames/<id>.jpg`, `<root>/audio/<id>.wav`) or as a raw download
  (`<root>/video/<id>.mp4`)."""
  return dict(image=find_file(os.path.join(root, 'frames'), clip_id, IMAGE_EXTENSIONS),
              audio=find_file(os.path.join(root, 'audio'), clip_id, AUDIO_EXTENSIONS),
              video=find_file(os.path.join(root, 'video'), clip_id, VIDEO_EXTENSIONS))


def _frame_bytes(path: str) -> bytes:
  """The JPEG file as it is when it decodes to upright RGB at full size (no re-encoding
  loss), otherwise the decoded, upright RGB image (reduced when above Pillow's
  decompression-bomb limit, see media.load_image) re-encoded as JPEG."""
  image = media.load_image(path)
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as original:
        unchanged = (original.format == 'JPEG' and original.mode == 'RGB' and
                     original.size == (image.shape[1], image.shape[0]) and
                     original.getexif().get(media.EXIF_ORIENTATION, 1) == 1)
  except Image.DecompressionBombError:
    unchanged = False
  return data if unchanged else image_lib.encode_jpeg(image)


def _mask_bytes(path: str) -> bytes:
  mask = media.load_image(path).max(axis=-1) > 0
  return image_lib.encode_png(mask.astype(np.uint8) * 255)


def encode_clip(clip: Clip, options: Options) -> bytes:
  """Reads a clip's media and annotations -> a serialized record; MediaError or
  ValueError naming the file / field when an input is missing or broken."""
  frame, waveform = None, None
  if clip.video and (not clip.image or not clip.audio):
    frame, waveform = media.read_video(clip.video, options.sample_rate)
  if clip.image:
    image = _frame_bytes(clip.image)
  elif frame is not None:
    image = image_lib.encode_jpeg(frame)
  else:
    raise media.MediaError(f'{clip.id}: no frame (no image file and no video stream)')
  if clip.audio:
    waveform = media.load_audio(clip.audio, options.sample_rate, options.resampler)
  if waveform is None or waveform.size == 0:
    raise media.MediaError(f'{clip.id}: no audio (no audio file and no audio stream)')
  media.check_waveform(clip.audio or clip.video, waveform)
  boxes = np.asarray(clip.boxes, np.float64).reshape(-1, 4)
  if boxes.size and (boxes.min() < -1e-6 or boxes.max() > 1 + 1e-6 or
                     (boxes[:, 2:] < boxes[:, :2]).any()):
    raise ValueError(f'{clip.id}: boxes must be normalized xmin, ymin, xmax, ymax in [0, 1], '
                     f'got {boxes.tolist()}')
  if len(clip.box_groups) != len(boxes):
    raise ValueError(f'{clip.id}: {len(boxes)} boxes but {len(clip.box_groups)} box groups')
  segment = media.middle_segment(waveform, options.sample_rate, options.audio_seconds)
  return tfrecord.encode_example(dict(
      id=clip.id, image=image, audio=tfrecord.pcm16_bytes(np.clip(segment, -1, 1)),
      labels=list(clip.labels), boxes=np.clip(boxes, 0, 1).reshape(-1),
      box_groups=list(clip.box_groups), masks=[_mask_bytes(m) for m in clip.masks]))


def _write_shard(path: str, clips: Sequence[Clip], options: Options) -> tfrecord.ShardInfo:
  records, skipped = [], []
  for clip in clips:
    try:
      records.append(encode_clip(clip, options))
    except (ValueError, OSError) as e:
      skipped.append({'id': clip.id, 'reason': str(e)})
  return tfrecord.write_shard(path, records, skipped)


def convert(clips: Sequence[Clip], output_dir: str, *, dataset: str, split: str, gt: str,
            classes: Sequence[str], options: Options = Options(), num_shards: int = 0,
            num_workers: int = 0, source: str = '', log=print) -> tfrecord.Manifest:
  """Writes `clips` as a prepared split in `output_dir` (see module docstring)."""
  if not clips:
    raise ValueError(f'{split}: no clips to convert (check --input_dir and the annotations)')
  if gt not in tfrecord.GT_KINDS:
    raise ValueError(f'gt must be one of {tfrecord.GT_KINDS}, got {gt!r}')
  os.makedirs(output_dir, exist_ok=True)
  stale = tfrecord.remove_stale_temporaries(output_dir)
  if stale:
    log(f'{split}: removed {len(stale)} temporary file(s) of an interrupted conversion.')
  num_shards = num_shards or max(1, -(-len(clips) // EXAMPLES_PER_SHARD))
  chunks = np.array_split(np.arange(len(clips)), num_shards)
  paths = [os.path.join(output_dir, tfrecord.shard_name(split, s, num_shards))
           for s in range(num_shards)]
  infos = [tfrecord.finished_shard(p) for p in paths]
  todo = [s for s, info in enumerate(infos) if info is None]
  if len(todo) < num_shards:
    log(f'{split}: {num_shards - len(todo)} of {num_shards} shards already written; resuming.')
  done, shards = 0, progress.Progress(f'{split}: shards written', len(todo), 'shards')
  workers = min(num_workers or os.cpu_count() or 1, max(len(todo), 1))

  def finished(shard, info):
    nonlocal done
    infos[shard], done = info, done + 1
    log(shards.line(done))

  jobs = {s: (paths[s], [clips[i] for i in chunks[s]], options) for s in todo}
  if workers == 1:
    for shard, job in jobs.items():
      finished(shard, _write_shard(*job))
  else:
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=worker_processes.watch_parent,
        initargs=(os.getpid(),)) as pool:
      futures = {pool.submit(_write_shard, *job): shard for shard, job in jobs.items()}
      for future in concurrent.futures.as_completed(futures):
        finished(futures[future], future.result())
  manifest = tfrecord.Manifest(
      dataset=dataset, split=split, gt=gt, sample_rate=options.sample_rate,
      audio_seconds=options.audio_seconds, classes=list(classes), shards=infos,
      source=source)
  tfrecord.write_manifest(output_dir, manifest)
  report(manifest, len(clips), log)
  if manifest.num_examples == 0:
    raise ValueError(f'{output_dir}: every input was skipped; see the reasons above')
  return manifest


def report(manifest: tfrecord.Manifest, num_clips: int, log=print, shown: int = 20) -> None:
  skipped = manifest.skipped
  log(f'{manifest.split}: {manifest.num_examples} of {num_clips} clips written, '
      f'{len(skipped)} skipped.')
  for entry in skipped[:shown]:
    log(f'  skipped {entry["id"]}: {entry["reason"]}')
  if len(skipped) > shown:
    log(f'  ... and {len(skipped) - shown} more (all listed in manifest.json)')


def read_json(path: str, what: str, parse, expected: str):
  """`parse(the JSON value of path)`; a missing file raises FileNotFoundError('<path>:
  <what> not found'), invalid JSON or a structure `parse` rejects (ValueError, KeyError,
  TypeError, AttributeError) raises ValueError('<path>: <expected> (<cause>)')."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: {what} not found')
  try:
    with open(path) as f:
      return parse(json.load(f))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'{path}: {expected} ({e!r})') from e


def read_id_list(path: str) -> list[str]:
  """Clip ids from a list file: one per line, first comma-separated field (the published
  csv / txt lists); blank lines and a header named 'id'/'file'/'name' are ignored."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: id list not found')
  ids = []
  with open(path) as f:
    for line in f:
      field = line.strip().split(',')[0].strip()
      if field and field.lower() not in ('id', 'file', 'name', 'video_id', 'youtube_id'):
        ids.append(os.path.splitext(field)[0] if field.endswith(VIDEO_EXTENSIONS +
                                                                  IMAGE_EXTENSIONS) else field)
  return ids


def define_flags() -> None:
  """The flags every converter's command line has (called by its `__main__` block, so
  importing a converter defines no flags)."""
  flags.DEFINE_string('input_dir', None, 'Raw dataset directory.', required=True)
  flags.DEFINE_string('output_dir', None, 'Prepared split directory.', required=True)
  flags.DEFINE_float('audio_seconds', 5.0,
                     'Middle seconds of audio kept (5 for JSA, 3 for NoPrior).')
  flags.DEFINE_integer('sample_rate', 16000, 'Stored audio sample rate.')
  flags.DEFINE_enum('resampler', 'sinc_hann', list(audio_lib.RESAMPLERS),
                    'Audio at other rates is resampled as the releases do (sinc_hann: '
                    "torchaudio's Resample) or with libsoxr (soxr_hq).")
  flags.DEFINE_integer('num_shards', 0, '0: about 1000 clips per shard.')
  flags.DEFINE_integer('num_workers', 0, '0: all CPU cores.')


def flag_kwargs() -> dict:
  """convert() keyword arguments from the flags of `define_flags`."""
  values = flags.FLAGS
  return dict(options=Options(audio_seconds=values.audio_seconds,
                              sample_rate=values.sample_rate, resampler=values.resampler),
              num_shards=values.num_shards, num_workers=values.num_workers)
