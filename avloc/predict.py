r"""Sound source localization on your own media (`avloc-predict`).

  avloc-predict --checkpoint=runs/jsa_synthetic --image=dog.jpg --audio=dog.wav --output=dog.png
  avloc-predict --checkpoint=runs/jsa_synthetic --video=clip.mp4 --output=clip.gif
  avloc-predict --checkpoint=runs/noprior_synthetic/export --input_dir=media \
      --output=predictions --save_maps=predictions/maps.npz

--checkpoint is a training workdir, its export directory or one step of either; the
model and its preprocessing come from the checkpoint's config. --input_dir pairs every
`<stem>.<image ext>` with `<stem>.<audio ext>` and takes every video. --output is a .png
(.gif for a video) file or a directory (one `<stem>.png` / `<stem>.gif` per input).

An image gives a PNG: every heatmap on the frame and a colour bar, and for NoPrior one
coloured mask per found object with their count. A video gives an animated GIF: one map
per sampled frame (--video_fps), from the `data.audio.seconds` of audio centred on it.
--save_maps writes an .npz per run: `heatmap_<name>` [S, S] (upsampled, as evaluated),
`lowres_<name>` [h, w], NoPrior `object_maps` [K, S, S] and `object_valid` [K]; video
maps have a leading frame axis and come with `times` [T] (seconds); with --input_dir
every key is prefixed by `<input file name>/`.

A bad input (missing, undecodable, empty, silent, without an audio track) prints one
line naming the file on stderr and makes the exit status 1; the other inputs are still
done. Every output is written to a temporary file and renamed into place.
"""

import collections
import dataclasses
import errno
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable

import numpy as np
from absl import app, flags, logging
from PIL import Image

from avloc import checkpointing, inference, progress, visualize
from avloc.data import media

_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'Training workdir, export directory or checkpoint step directory.')
_IMAGE = flags.DEFINE_string('image', None, 'Image file (with --audio).')
_AUDIO = flags.DEFINE_string('audio', None, 'Audio file (any rate, channels, length).')
_VIDEO = flags.DEFINE_string('video', None, 'Video file with an audio track.')
_INPUT_DIR = flags.DEFINE_string(
    'input_dir', None, 'Folder of <stem>.<image ext> + <stem>.<audio ext> pairs and videos.')
_OUTPUT = flags.DEFINE_string(
    'output', 'predictions', 'Output .png / .gif file, or a directory for one per input.')
_SAVE_MAPS = flags.DEFINE_string('save_maps', None, '.npz file for the raw maps.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Inputs (or video frames) per model call.')
_VIDEO_FPS = flags.DEFINE_float('video_fps', 2.0, 'Frames per second sampled from videos.')
_MAX_FRAMES = flags.DEFINE_integer('max_frames', 60, 'Most frames sampled from one video.')

PNG_SIDE = 512  # longer side of the frames drawn, at most
GIF_SIDE = 320


@dataclasses.dataclass(frozen=True)
class Item:
  """One input: an image + audio pair or a video. `name` is its (image) file name."""

  name: str
  image: str | None = None
  audio: str | None = None
  video: str | None = None

  @property
  def stem(self) -> str:
    return os.path.splitext(self.name)[0]


@dataclasses.dataclass
class Summary:
  """What a `predict` call wrote and which inputs it could not do."""

  written: list[str] = dataclasses.field(default_factory=list)  # output files
  failed: list[str] = dataclasses.field(default_factory=list)  # one message per bad input


def input_kind(path: str) -> str | None:
  """'image', 'audio', 'video' or None, by the file name's extension."""
  extension = os.path.splitext(path)[1].lower()
  for kind, extensions in (('image', media.IMAGE_EXTENSIONS), ('audio', media.AUDIO_EXTENSIONS),
                           ('video', media.VIDEO_EXTENSIONS)):
    if extension in extensions:
      return kind
  return None


def find_inputs(directory: str) -> tuple[list[Item], list[str]]:
  """A folder's inputs (sorted by name) and its files that make no input (one message
  each: an image without audio, an audio file without an image, several of a stem)."""
  if not os.path.isdir(directory):
    raise media.MediaError(f'{directory}: no such directory')
  files = collections.defaultdict(lambda: collections.defaultdict(list))
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isfile(path) and input_kind(name):
      files[os.path.splitext(name)[0]][input_kind(name)].append(path)
  items, problems = [], []
  for stem, found in sorted(files.items()):
    items += [Item(os.path.basename(video), video=video) for video in found['video']]
    images, audios = found['image'], found['audio']
    if len(images) > 1 or len(audios) > 1:
      problems.append(f'{", ".join(images + audios)}: several image or audio files named '
                      f'{stem}.*; cannot pair them')
    elif images and not audios:
      problems.append(f'{images[0]}: no audio file {stem}.<{"|".join(media.AUDIO_EXTENSIONS)}>')
    elif audios and not images:
      problems.append(f'{audios[0]}: no image file {stem}.<{"|".join(media.IMAGE_EXTENSIONS)}>')
    elif images:
      items.append(Item(os.path.basename(images[0]), image=images[0], audio=audios[0]))
  if not items and not problems:
    raise media.MediaError(f'{directory}: holds no image + audio pairs and no videos')
  return items, problems


class _MapsWriter:
  """Arrays into one .npz (none without a path), written to a temporary file opened on
  the first `add` and renamed into place by `close(keep=True)`."""

  def __init__(self, path: str | None):
    self.path = path
    self._zip = None

  def add(self, prefix: str, arrays: dict) -> None:
    if not self.path:
      return
    if self._zip is None:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      self._zip = zipfile.ZipFile(self._tmp, 'w', allowZip64=True)
    for key, array in arrays.items():
      with self._zip.open(f'{prefix}{key}.npy', 'w', force_zip64=True) as f:
        np.lib.format.write_array(f, np.asarray(array))

  @property
  def _tmp(self) -> str:
    return f'{self.path}.tmp-{os.getpid()}'

  def close(self, keep: bool) -> bool:
    """Returns whether the file was written."""
    if self._zip is None:
      return False
    self._zip.close()
    if keep:
      os.replace(self._tmp, self.path)
      return True
    os.remove(self._tmp)
    return False


def map_arrays(prediction: dict) -> dict:
  """One input's outputs -> the arrays --save_maps stores (see the module docstring)."""
  arrays = {f'heatmap_{name}': m for name, m in prediction['heatmaps'].items()}
  arrays.update({f'lowres_{name}': m for name, m in prediction['lowres'].items()})
  arrays.update({k: prediction[k] for k in ('object_maps', 'object_valid') if k in prediction})
  return arrays


def _save_gif(path: str, frames: list[np.ndarray], fps: float) -> None:
  """Writes an endlessly looping GIF atomically: a temporary file renamed into place."""
  tmp = f'{path}.tmp-{os.getpid()}.gif'
  try:
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _check_arguments(image, audio, video, input_dir, output, save_maps, batch_size, video_fps,
                     max_frames) -> None:
  modes = [bool(image or audio), bool(video), bool(input_dir)]
  if sum(modes) != 1:
    raise ValueError('give --image and --audio, or --video, or --input_dir (one of them)')
  if modes[0] and not (image and audio):
    raise ValueError('--image and --audio go together')
  if input_dir and output.lower().endswith(('.png', '.gif')):
    raise ValueError(f'--output {output}: --input_dir needs an output directory')
  if output.lower().endswith('.gif' if image else '.png') and not input_dir:
    raise ValueError(f'--output {output}: an image gives a .png, a video a .gif')
  if input_dir and os.path.abspath(output) == os.path.abspath(input_dir):
    raise ValueError('--output must not be the --input_dir')
  if save_maps and not save_maps.endswith('.npz'):
    raise ValueError(f'--save_maps {save_maps}: must be an .npz file')
  if batch_size < 1 or video_fps <= 0 or max_frames < 1:
    raise ValueError('--batch_size and --max_frames must be >= 1 and --video_fps > 0')


def _check_output(output: str, single: bool) -> None:
  """Checks, before any model runs and without leaving anything behind, that the --output
  directory (the file's directory for one input written to a .png / .gif) can be
  created or written to."""
  is_file = single and output.lower().endswith(('.png', '.gif'))
  directory = os.path.abspath(os.path.dirname(output) if is_file else output)
  existing = directory
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    if not os.path.isdir(existing):
      raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), existing)
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ValueError(f'--output {output}: cannot write to {directory} '
                     f'({e.strerror or e})') from e


def predict(checkpoint: str, output: str, *, image: str | None = None,
            audio: str | None = None, video: str | None = None, input_dir: str | None = None,
            save_maps: str | None = None, batch_size: int = 8, video_fps: float = 2.0,
            max_frames: int = 60, localizer: inference.Localizer | None = None,
            report=print, show_progress: bool = False) -> Summary:
  """Localizes one image + audio pair, one video, or every input of `input_dir` (see
  the module docstring). Every bad input is passed to `report` (one line naming the
  file) and listed in the summary; argument and checkpoint errors raise ValueError /
  OSError (checkpointing.CheckpointError for one that does not restore). `localizer`
  replaces loading `checkpoint` (a notebook's model). With `show_progress` and several
  inputs, a progress line (avloc.progress) goes to stderr after every model call."""
  _check_arguments(image, audio, video, input_dir, output, save_maps, batch_size, video_fps,
                   max_frames)
  if not checkpoint and localizer is None:
    raise ValueError('--checkpoint is empty: name a training workdir, its export/ '
                     'directory, or one step of either')
  _check_output(output, not input_dir)
  summary = Summary()

  def fail(message):
    summary.failed.append(message)
    report(message)

  if input_dir:
    items, problems = find_inputs(input_dir)
    for problem in problems:
      fail(problem)
  else:
    path = image or video
    items = [Item(os.path.basename(path), image=image, audio=audio, video=video)]
  localizer = localizer or inference.Localizer.from_checkpoint(checkpoint)
  run = _Run(localizer, output, not input_dir, batch_size, _MapsWriter(save_maps), summary, fail)
  lines = progress.Progress('inputs done', len(items), 'inputs')
  finished = 0

  def advance(count):
    nonlocal finished
    finished += count
    if show_progress and not run.single:
      print(lines.line(finished), file=sys.stderr, flush=True)

  done = False
  try:
    pairs = [item for item in items if not item.video]
    for start in range(0, len(pairs), batch_size):
      run.pairs(pairs[start:start + batch_size])
      advance(len(pairs[start:start + batch_size]))
    for item in (item for item in items if item.video):
      try:
        run.video(item, video_fps, max_frames)
      except media.MediaError as e:
        fail(str(e))
      advance(1)
    done = True
  finally:
    if run.writer.close(keep=done):
      summary.written.append(save_maps)
  return summary


@dataclasses.dataclass
class _Run:
  """What every input of one `predict` call shares."""

  localizer: inference.Localizer
  output: str
  single: bool  # one input: `output` may be a file
  batch_size: int
  writer: _MapsWriter
  summary: Summary
  fail: Callable[[str], None]

  def _output_path(self, item: Item) -> str:
    if self.single and self.output.lower().endswith(('.png', '.gif')):
      path = self.output
    else:
      path = os.path.join(self.output, item.stem + ('.gif' if item.video else '.png'))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path

  def _prefix(self, item: Item) -> str:
    return '' if self.single else f'{item.name}/'

  def pairs(self, items: list[Item]) -> None:
    """Image + audio pairs, one model call (bad ones reported and left out)."""
    localizer, loaded = self.localizer, []
    for item in items:
      try:
        frame = media.load_image(item.image)
        waveform = media.check_waveform(item.audio, media.load_audio(
            item.audio, localizer.sample_rate, localizer.resampler))
      except media.MediaError as e:
        self.fail(str(e))
        continue
      loaded.append((item, frame, localizer.prepare_image(frame),
                     localizer.prepare_audio(waveform)))
    if not loaded:
      return
    outputs = localizer.localize_inputs(np.stack([x[2] for x in loaded]),
                                        np.stack([x[3] for x in loaded]), self.batch_size)
    for i, (item, frame, _, _) in enumerate(loaded):
      prediction = inference.sample(outputs, i)
      path = self._output_path(item)
      visualize.save_png(path, localizer.render(frame, prediction, max_side=PNG_SIDE))
      self.writer.add(self._prefix(item), map_arrays(prediction))
      self.summary.written.append(path)

  def video(self, item: Item, fps: float, max_frames: int) -> None:
    """A video: one map per sampled frame, from the audio window centred on it."""
    localizer = self.localizer
    _, waveform = media.read_video(item.video, localizer.sample_rate, frame=False)
    waveform = media.check_waveform(item.video, waveform)
    times, frames, images = [], [], []
    for time, frame in media.iter_frames(item.video, fps, max_frames):
      times.append(time)
      frames.append(inference.display_frame(frame, GIF_SIDE))
      images.append(localizer.prepare_image(frame))
    windows = inference.sliding_windows(waveform, localizer.sample_rate, localizer.seconds,
                                        times)
    outputs = localizer.localize_inputs(
        np.stack(images), np.stack([localizer.prepare_audio(w) for w in windows]),
        self.batch_size)
    animation = [localizer.render(frame, inference.sample(outputs, i), f't={time:.1f}s',
                                  GIF_SIDE) for i, (time, frame) in enumerate(zip(times, frames))]
    path = self._output_path(item)
    _save_gif(path, animation, fps)
    self.writer.add(self._prefix(item),
                    {**map_arrays(outputs), 'times': np.asarray(times, np.float32)})
    self.summary.written.append(path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # keep library INFO logs off the terminal
    logging.set_verbosity(logging.WARNING)

  def report(message):
    print(f'avloc-predict: {message}', file=sys.stderr, flush=True)

  try:
    summary = predict(
        _CHECKPOINT.value, _OUTPUT.value, image=_IMAGE.value, audio=_AUDIO.value,
        video=_VIDEO.value, input_dir=_INPUT_DIR.value, save_maps=_SAVE_MAPS.value,
        batch_size=_BATCH_SIZE.value, video_fps=_VIDEO_FPS.value, max_frames=_MAX_FRAMES.value,
        report=report, show_progress=True)
  except (ValueError, OSError, checkpointing.CheckpointError) as e:
    report(str(e))
    sys.exit(1)
  for path in summary.written:
    print(f'wrote {path}')
  if summary.failed:
    sys.exit(1)


def run():
  flags.mark_flag_as_required('checkpoint')
  app.run(main)


if __name__ == '__main__':
  run()
