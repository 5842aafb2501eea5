"""AVSBench (Zhou et al. 2022) S4 (single source) and MS3 (multiple sources) -> prepared
splits with segmentation masks, one record per annotated frame.

Layout of the official release (as its data loaders read it):
  S4:  s4_meta_data.csv (name, start, category, split)
       visual_frames/<split>/<category>/<name>/<name>_<k>.png     k = 1..5
       audio_wav/<split>/<category>/<name>.wav
       gt_masks/<split>/<category>/<name>/<name>_<k>.png
  MS3: ms3_meta_data.csv (video_id, split)
       visual_frames/<video_id>/<video_id>.mp4_<k>.png            k = 1..5
       audio_wav/<split>/<video_id>.wav
       gt_masks/<split>/<video_id>/<video_id>_<k>.png
Each of the 5 frames of a clip becomes a record `<name>_<k>` with its mask and the clip's
audio (the middle `audio_seconds` of the 5 s clip, as single-frame SSL evaluations feed
it); consecutive records of a clip let the evaluation compute AVSBench's per-video
F-score. Frames without a mask are skipped (reported).

  python -m data_prep.avsbench --subset=s4 --input_dir=RAW/s4_data \
      --output_dir=DATA/avsbench_s4 [--split=test]
"""

import csv
import os

from absl import app, flags

from avloc.data import tfrecord
from data_prep import common

FRAMES_PER_CLIP = 5


def read_meta(path: str, subset: str, split: str) -> list[dict]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: AVSBench {subset.upper()} meta data not found')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  key = 'name' if subset == 's4' else 'video_id'
  if rows and (key not in rows[0] or 'split' not in rows[0]):
    raise ValueError(f'{path}: expected columns {key}, split; got {list(rows[0])}')
  return [r for r in rows if r['split'] == split]


def list_clips(input_dir: str, subset: str, split: str, meta: str = '') -> tuple[list, list]:
  meta = meta or os.path.join(input_dir, f'{subset}_meta_data.csv')
  clips, classes = [], set()
  for row in read_meta(meta, subset, split):
    if subset == 's4':
      name, category = row['name'], row['category']
      folder = os.path.join(split, category, name)
      frames_dir = os.path.join(input_dir, 'visual_frames', folder)
      frame_name = lambda k, name=name: f'{name}_{k}'  # noqa: E731
      audio = os.path.join(input_dir, 'audio_wav', split, category, f'{name}.wav')
      labels = [category]
      classes.add(category)
    else:
      name = row['video_id']
      folder = os.path.join(split, name)
      frames_dir = os.path.join(input_dir, 'visual_frames', name)
      frame_name = lambda k, name=name: f'{name}.mp4_{k}'  # noqa: E731
      audio = os.path.join(input_dir, 'audio_wav', split, f'{name}.wav')
      labels = []
    for k in range(1, FRAMES_PER_CLIP + 1):
      mask = os.path.join(input_dir, 'gt_masks', folder, f'{name}_{k}.png')
      clips.append(common.Clip(
          id=f'{name}_{k}', image=common.find_file(frames_dir, frame_name(k),
                                                   common.IMAGE_EXTENSIONS)
          or os.path.join(frames_dir, frame_name(k) + '.png'),
          audio=audio, labels=labels, masks=[mask]))
  return clips, sorted(classes)


def convert(input_dir: str, output_dir: str, *, subset: str = 's4', split: str = 'test',
            meta: str = '', **kwargs) -> tfrecord.Manifest:
  if subset not in ('s4', 'ms3'):
    raise ValueError(f"subset must be 's4' or 'ms3', got {subset!r}")
  clips, classes = list_clips(input_dir, subset, split, meta)
  return common.convert(clips, output_dir, dataset='avsbench', split=f'avsbench_{subset}',
                        gt=tfrecord.GT_MASKS, classes=classes, source=input_dir, **kwargs)


def main(argv):
  del argv
  convert(flags.FLAGS.input_dir, flags.FLAGS.output_dir, subset=flags.FLAGS.subset,
          split=flags.FLAGS.split, meta=flags.FLAGS.meta, **common.flag_kwargs())


if __name__ == '__main__':
  common.define_flags()
  flags.DEFINE_enum('subset', 's4', ['s4', 'ms3'], 'AVSBench subset.')
  flags.DEFINE_string('split', 'test', 'Split of the meta data to convert.')
  flags.DEFINE_string('meta', '', 'Meta data csv (default <input_dir>/<subset>_meta_data.csv).')
  app.run(main)
