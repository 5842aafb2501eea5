"""VGGSound training subsets (10k / 144k, as LVS / EZ-VSL) -> prepared training split.

Layout: `<input_dir>/frames/<id>.jpg` + `<input_dir>/audio/<id>.wav` (extracted, as the
EZ-VSL code reads them) or `<input_dir>/video/<id>.mp4` (raw download), with
`id = <youtube id>_<start seconds, 6 digits>`. `--ids` is the subset's id list
(e.g. EZ-VSL's `vggsound_144k.txt`); without it every clip found is used. `--labels`
is the published `vggsound.csv` (youtube_id, start_seconds, label, split); labels are
stored for retrieval metrics but never used for training.

  python -m data_prep.vggsound --input_dir=RAW --output_dir=DATA/vggsound_144k \
      --ids=vggsound_144k.txt [--labels=vggsound.csv] [--split=vggsound_144k]
"""

import csv
import os

from absl import app, flags

from avloc.data import tfrecord
from data_prep import common


def read_labels(path: str) -> dict[str, str]:
  """vggsound.csv -> {clip id: class}."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: VGGSound label file not found')
  labels = {}
  with open(path, newline='') as f:
    for line, row in enumerate(csv.reader(f), 1):
      if not row or row[0] == 'youtube_id':
        continue
      try:
        labels[f'{row[0]}_{int(row[1]):06d}'] = row[2]
      except (IndexError, ValueError) as e:
        raise ValueError(f'{path}:{line}: expected youtube_id,start_seconds,label,split '
                         f'({e})') from e
  return labels


def found_ids(input_dir: str) -> list[str]:
  ids = set()
  for folder, extensions in (('frames', common.IMAGE_EXTENSIONS),
                             ('video', common.VIDEO_EXTENSIONS)):
    directory = os.path.join(input_dir, folder)
    if os.path.isdir(directory):
      ids.update(os.path.splitext(n)[0] for n in os.listdir(directory)
                 if n.lower().endswith(extensions))
  return sorted(ids)


def convert(input_dir: str, output_dir: str, *, ids: str = '', labels: str = '',
            split: str = 'vggsound', dataset: str = 'vggsound', log=print,
            **kwargs) -> tfrecord.Manifest:
  clip_ids = common.read_id_list(ids) if ids else found_ids(input_dir)
  label_of = read_labels(labels) if labels else {}
  unlabelled = [i for i in clip_ids if i not in label_of]
  if labels and unlabelled:
    log(f'warning: {len(unlabelled)} of {len(clip_ids)} clips have no label in {labels} '
        f'(e.g. {", ".join(unlabelled[:3])}); labels are found by the id '
        '<youtube id>_<start seconds, 6 digits>, as vggsound.csv lists them')
  clips = [common.Clip(id=i, **common.media_files(input_dir, i),
                       labels=[label_of[i]] if i in label_of else [])
           for i in clip_ids]
  classes = sorted(set(label_of.values()))
  return common.convert(clips, output_dir, dataset=dataset, split=split,
                        gt=tfrecord.GT_NONE, classes=classes, source=input_dir, log=log,
                        **kwargs)


def main(argv):
  del argv
  convert(flags.FLAGS.input_dir, flags.FLAGS.output_dir, ids=flags.FLAGS.ids,
          labels=flags.FLAGS.labels, split=flags.FLAGS.split, **common.flag_kwargs())


if __name__ == '__main__':
  common.define_flags()
  flags.DEFINE_string('ids', '', 'Id list of the subset (default: every clip found).')
  flags.DEFINE_string('labels', '', 'vggsound.csv with the class of each clip.')
  flags.DEFINE_string('split', 'vggsound', 'Split name written into the shard names.')
  app.run(main)
