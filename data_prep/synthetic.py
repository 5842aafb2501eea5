"""The embedded synthetic audio-visual benchmark: raw clips in the real datasets' layouts,
converted by the real converters, so a fresh machine trains and evaluates with no data.

Each of `num_classes` categories has a visual signature (shape x colour) and an audio
signature (a harmonic stack at its own fundamental, harmonic roll-off and amplitude
modulation rate). A frame shows the sounding object(s) at a random position and scale
over a cluttered background, plus silent distractor objects of other categories; the
audio holds the sounding objects' signatures, with probability `offscreen_prob` an
off-screen category's sound, and background noise. A centre prior or a saliency
detector cannot tell the sounding object from a distractor; the audio can. The
`synthetic_alone` test split shows the sounding object without distractors (clutter,
off-screen sounds and noise stay): there saliency suffices, so the two single-source
splits side by side separate finding objects from finding the one that sounds.

Splits (raw layout -> converter -> prepared split):
  synthetic_train  VGGSound layout (frames/, audio/, vggsound.csv)    -> data_prep.vggsound
  synthetic_test   VGG-SS layout (frames/, audio/, vggss.json)        -> data_prep.vggss
  synthetic_alone  as synthetic_test, no distractors                  -> data_prep.vggss
  synthetic_duet   MUSIC layout (+ masks/<id>_srcK.png), 2 sources    -> data_prep.music
  synthetic_trio   3 sources                                          -> data_prep.music
  synthetic_mixed  1 to 3 sources                                     -> data_prep.music

  python -m data_prep.synthetic --output_dir=RAW [--train_size=...]   (raw data only)
Training runs call `prepare`, which generates, converts and caches the splits once per
distinct `config.data.synthetic`.
"""

import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os
import shutil

import ml_collections
import numpy as np
import soundfile
from absl import app, flags
from PIL import Image

from avloc import config as config_lib
from data_prep import common, music, vggss, vggsound

GENERATOR_VERSION = 2
SAMPLE_RATE = 16000
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'ring', 'cross')
READY_FILE = 'splits.json'


def class_name(c: int) -> str:
  return f'{SHAPES[c % len(SHAPES)]} {c}'


def class_colour(c: int) -> np.ndarray:
  """A saturated RGB colour per class, hues spread around the wheel. [3] in [0, 255]."""
  hue = (c * 0.618034) % 1.0  # golden-ratio steps keep neighbouring classes apart
  rgb = np.asarray(Image.new('HSV', (1, 1), (int(hue * 255), 230, 235)).convert('RGB'))
  return rgb.reshape(3).astype(np.float32)


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
  """bool [size, size]: a shape of radius r pixels centred at (cx, cy)."""
  y, x = np.mgrid[:size, :size] + 0.5
  dx, dy = x - cx, y - cy
  if shape == 'circle':
    return dx**2 + dy**2 <= r**2
  if shape == 'square':
    return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
  if shape == 'triangle':
    return (dy <= 0.8 * r) & (abs(dx) <= 0.6 * (dy + r))
  if shape == 'diamond':
    return abs(dx) + abs(dy) <= r
  if shape == 'ring':
    radius = np.sqrt(dx**2 + dy**2)
    return (radius <= r) & (radius >= 0.55 * r)
  return ((abs(dx) <= 0.33 * r) & (abs(dy) <= r)) | ((abs(dy) <= 0.33 * r) & (abs(dx) <= r))


def background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A low-saturation gradient with clutter rectangles and noise. float [size, size, 3]."""
  corners = rng.uniform(60, 190, (2, 2, 3))
  t = np.linspace(0, 1, size)[:, None, None]
  s = np.linspace(0, 1, size)[None, :, None]
  image = ((1 - t) * ((1 - s) * corners[0, 0] + s * corners[0, 1]) +
           t * ((1 - s) * corners[1, 0] + s * corners[1, 1]))
  for _ in range(rng.integers(4, 10)):
    x0, y0 = rng.integers(0, size, 2)
    w, h = rng.integers(size // 16, size // 4, 2)
    gray = rng.uniform(40, 220)
    image[y0:y0 + h, x0:x0 + w] = gray + rng.uniform(-20, 20, 3)
  return image + rng.standard_normal(image.shape, dtype=np.float32) * 6


def class_sound(c: int, rng: np.random.Generator, num_samples: int) -> np.ndarray:
  """A class's audio signature with per-clip jitter, unit peak. [num_samples]."""
  time = np.arange(num_samples) / SAMPLE_RATE
  f0 = 150.0 * 2 ** (c / 4) * rng.uniform(0.97, 1.03)
  rolloff = 1.0 + 0.6 * (c % 3)
  tone = sum(np.sin(2 * np.pi * n * f0 * time + rng.uniform(0, 2 * np.pi)) / n**rolloff
             for n in range(1, 7) if n * f0 < SAMPLE_RATE / 2)
  rate = 1.5 + 2.0 * (c % 4)
  envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rate * time + rng.uniform(0, 2 * np.pi))
  sound = tone * envelope
  return sound / np.abs(sound).max()


def _place(rng, size, placed, radius_range):
  """A centre and radius for a new object overlapping the placed ones little."""
  for _ in range(50):
    r = rng.uniform(*radius_range) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if all(np.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in placed):
      return cx, cy, r
  return cx, cy, r


def render_clip(cfg: ml_collections.ConfigDict, rng: np.random.Generator,
                sounding: list[int], max_distractors: int) -> dict:
  """One clip with the given sounding classes and 0..max_distractors silent objects.
  Returns image uint8 [S, S, 3], waveform [N], per-source masks bool [K, S, S], boxes
  [K, 4] normalized xyxy and the distractors' classes."""
  size, num_classes = cfg.image_size, cfg.num_classes
  others = [c for c in range(num_classes) if c not in sounding]
  distractors = list(rng.choice(others, rng.integers(0, max_distractors + 1), replace=False))
  image = background(rng, size)
  placed, drawn = [], []
  # Distractors first, sounding objects on top; a source's mask is what stays visible.
  for c in distractors + sounding:
    cx, cy, r = _place(rng, size, placed, (0.1, 0.2))
    placed.append((cx, cy, r))
    mask = shape_mask(SHAPES[c % len(SHAPES)], size, cx, cy, r)
    shade = 0.85 + 0.3 * (np.arange(size)[:, None] + 0.5 - cy + r) / (4 * r)
    colour = class_colour(c) * rng.uniform(0.9, 1.1)
    image[mask] = (colour[None] * np.broadcast_to(shade, mask.shape)[mask][:, None]).clip(0, 255)
    drawn = [m & ~mask for m in drawn] + [mask]
  masks = drawn[len(distractors):]
  boxes = []
  for mask in masks:
    ys, xs = np.nonzero(mask)
    boxes.append([xs.min() / size, ys.min() / size, (xs.max() + 1) / size, (ys.max() + 1) / size])
  num_samples = int(round(cfg.audio_seconds * SAMPLE_RATE))
  waveform = sum(class_sound(c, rng, num_samples) for c in sounding) / len(sounding)
  if rng.random() < cfg.offscreen_prob:
    offscreen = rng.choice([c for c in others if c not in distractors] or others)
    waveform = waveform + 0.5 * class_sound(offscreen, rng, num_samples)
  waveform = waveform + cfg.noise_level * rng.normal(0, 1, num_samples)
  waveform = 0.9 * waveform / np.abs(waveform).max()
  return dict(image=np.clip(image, 0, 255).astype(np.uint8), waveform=waveform,
              masks=np.stack(masks), boxes=np.asarray(boxes), distractors=distractors)


# Split name -> (layout, clip-count field of the config, number of sounding sources: an
# int, or None for 1..3, distractors: True for up to `max_distractors`). New splits go at
# the end: a split's index seeds its clips.
SPLITS = {
    'synthetic_train': ('vggsound', 'train_size', 1, True),
    'synthetic_test': ('vggss', 'test_size', 1, True),
    'synthetic_duet': ('music', 'multi_test_size', 2, True),
    'synthetic_trio': ('music', 'multi_test_size', 3, True),
    'synthetic_mixed': ('music', 'multi_test_size', None, True),
    'synthetic_alone': ('vggss', 'test_size', 1, False),
}


def _clip_id(split: str, i: int) -> str:
  return f'{split}_{i:06d}'


def _write_clips(cfg_dict: dict, split: str, directory: str, indices: list[int]) -> list[dict]:
  """Renders and writes clips `indices` of a split; returns their annotations."""
  cfg = ml_collections.ConfigDict(cfg_dict)
  layout, _, sources, distractors = SPLITS[split]
  entries = []
  for i in indices:
    rng = np.random.default_rng([cfg.seed, list(SPLITS).index(split), i])
    count = sources or int(rng.integers(1, 4))
    sounding = [int(c) for c in rng.choice(cfg.num_classes, count, replace=False)]
    clip = render_clip(cfg, rng, sounding, cfg.max_distractors if distractors else 0)
    clip_id = _clip_id(split, i)
    Image.fromarray(clip['image']).save(os.path.join(directory, 'frames', f'{clip_id}.jpg'),
                                        quality=92)
    soundfile.write(os.path.join(directory, 'audio', f'{clip_id}.wav'), clip['waveform'],
                    SAMPLE_RATE, subtype='PCM_16')
    if layout == 'music':
      for k, mask in enumerate(clip['masks']):
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            os.path.join(directory, 'masks', f'{clip_id}_src{k + 1}.png'))
    entries.append(dict(id=clip_id, classes=[class_name(c) for c in sounding],
                        boxes=clip['boxes'].tolist()))
  return entries


def _write_annotations(layout: str, directory: str, entries: list[dict]) -> None:
  if layout == 'vggsound':  # vggsound.csv: youtube_id, start_seconds, label, split
    with open(os.path.join(directory, 'vggsound.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      for e in entries:
        youtube_id, start = e['id'].rsplit('_', 1)
        writer.writerow([youtube_id, int(start), e['classes'][0], 'train'])
  elif layout == 'vggss':
    with open(os.path.join(directory, 'vggss.json'), 'w') as f:
      json.dump([{'file': e['id'], 'class': e['classes'][0], 'bbox': e['boxes']}
                 for e in entries], f)
  else:  # MUSIC: class_srcK and NORMALIZED xywh bbox_srcK
    annotations = []
    for e in entries:
      entry = {'file': e['id']}
      for k, (name, (x0, y0, x1, y1)) in enumerate(zip(e['classes'], e['boxes']), 1):
        entry[f'class_src{k}'] = name
        entry[f'bbox_src{k}'] = [x0, y0, x1 - x0, y1 - y0]
      annotations.append(entry)
    with open(os.path.join(directory, 'music_duet.json'), 'w') as f:
      json.dump(annotations, f)


def generate(cfg: ml_collections.ConfigDict, output_dir: str, splits=tuple(SPLITS),
             num_workers: int = 0, log=print) -> dict[str, str]:
  """Writes the raw clips of `splits` under `output_dir/<split>/`; returns their dirs."""
  dirs = {}
  workers = num_workers or os.cpu_count() or 1
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    for split in splits:
      layout, size_field = SPLITS[split][:2]
      directory = os.path.join(output_dir, split)
      for sub in ('frames', 'audio') + (('masks',) if layout == 'music' else ()):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
      chunks = np.array_split(np.arange(cfg[size_field]), 4 * workers)
      futures = [pool.submit(_write_clips, cfg.to_dict(), split, directory, c.tolist())
                 for c in chunks if len(c)]
      entries = [e for f in futures for e in f.result()]
      _write_annotations(layout, directory, entries)
      log(f'synthetic: generated {len(entries)} raw {split} clips ({layout} layout)')
      dirs[split] = directory
  return dirs


def _convert(split: str, raw_dir: str, output_dir: str, cfg, log) -> None:
  layout = SPLITS[split][0]
  kwargs = dict(split=split, options=common.Options(audio_seconds=cfg.audio_seconds,
                                                    sample_rate=SAMPLE_RATE), log=log)
  if layout == 'vggsound':
    vggsound.convert(raw_dir, output_dir, labels=os.path.join(raw_dir, 'vggsound.csv'),
                     dataset='synthetic', **kwargs)
  elif layout == 'vggss':
    vggss.convert(raw_dir, output_dir, **kwargs)
  else:
    music.convert(raw_dir, output_dir, dataset='synthetic', **kwargs)


def cache_dir(cfg: ml_collections.ConfigDict, data_root: str) -> str:
  key = json.dumps({'version': GENERATOR_VERSION, **cfg.to_dict()}, sort_keys=True)
  return os.path.join(data_root, f'synthetic-{hashlib.sha256(key.encode()).hexdigest()[:10]}')


def prepare(cfg: ml_collections.ConfigDict, data_root: str, splits=tuple(SPLITS),
            log=print) -> dict[str, str]:
  """Prepared synthetic splits {name: directory} for `splits`, generated and converted on
  first use under `<data_root>/synthetic-<hash of cfg>/` (the raw clips are deleted
  afterwards). A split is made once: later calls make only the splits still missing."""
  check_config(cfg)
  unknown = sorted(set(splits) - set(SPLITS))
  if unknown:
    raise ValueError(f'synthetic splits {unknown} do not exist; the synthetic benchmark has '
                     f'{list(SPLITS)}')
  base = cache_dir(cfg, data_root)
  ready = os.path.join(base, READY_FILE)
  done = []
  if os.path.exists(ready):
    with open(ready) as f:
      done = json.load(f)
  missing = [split for split in SPLITS if split in splits and split not in done]
  if missing:
    log(f'Generating the synthetic splits {", ".join(missing)} in {base} '
        '(once; cached for later runs).')
    raw = generate(cfg, os.path.join(base, 'raw'), splits=missing, log=log)
    for split, raw_dir in raw.items():
      _convert(split, raw_dir, os.path.join(base, split), cfg, log)
    shutil.rmtree(os.path.join(base, 'raw'))
    done = sorted(set(done) | set(missing))
    with open(ready + '.tmp', 'w') as f:
      json.dump(done, f)
    os.replace(ready + '.tmp', ready)
  return {name: os.path.join(base, name) for name in splits}


def check_config(cfg: ml_collections.ConfigDict) -> None:
  require = config_lib.require
  require(cfg.num_classes >= 4, 'data.synthetic.num_classes', 'must be >= 4', cfg.num_classes)
  require(cfg.max_distractors + 3 <= cfg.num_classes, 'data.synthetic.max_distractors',
          f'must leave 3 classes for the sounding objects (num_classes {cfg.num_classes})',
          cfg.max_distractors)
  for field in ('image_size', 'audio_seconds', 'train_size', 'test_size', 'multi_test_size'):
    require(cfg[field] > 0, f'data.synthetic.{field}', 'must be > 0', cfg[field])
  require(cfg.image_size >= 32, 'data.synthetic.image_size', 'must be >= 32', cfg.image_size)
  for field in ('offscreen_prob', 'noise_level'):
    require(0 <= cfg[field] <= 1, f'data.synthetic.{field}', 'must be in [0, 1]', cfg[field])


def main(argv):
  del argv
  cfg = config_lib.synthetic_config()
  for field in cfg:
    cfg[field] = type(cfg[field])(getattr(flags.FLAGS, field))
  check_config(cfg)
  generate(cfg, flags.FLAGS.output_dir)


if __name__ == '__main__':
  flags.DEFINE_string('output_dir', None, 'Where the raw splits are written.', required=True)
  for _name, _value in config_lib.synthetic_config().items():
    {int: flags.DEFINE_integer, float: flags.DEFINE_float}[type(_value)](
        _name, _value, f'config.data.synthetic.{_name}')
  app.run(main)
