"""MUSIC solo / duet (Zhao et al. 2018) test annotations -> prepared split with
per-source ground truth.

Layout: `<input_dir>/frames/<file>.jpg` + `<input_dir>/audio/<file>.wav` (or
`<input_dir>/video/<file>.mp4`); annotations as the published `music_duet.json`:
`[{"file": id, "class_src1": name, "bbox_src1": [x, y, w, h], "class_src2": ...}]` with
boxes as NORMALIZED xywh (converted to xyxy here), any number of sources K
(`class_srcK` / `bbox_srcK`). Optional per-source masks `<input_dir>/masks/<file>_srcK.png`.
An id list (e.g. AVGN's `music_duet_test.csv`, first field) selects a subset.

  python -m data_prep.music --input_dir=RAW --output_dir=DATA/music_duet \
      [--annotations=RAW/music_duet.json] [--ids=music_duet_test.csv] [--split=music_duet]
"""

import os

from absl import app, flags

from avloc.data import tfrecord
from data_prep import common


def xywh_to_xyxy(box) -> list[float]:
  x, y, w, h = (float(v) for v in box)
  return [x, y, x + w, y + h]


def sources(entry: dict) -> list[tuple[str, list[float]]]:
  """(class, xyxy box) of sources 1..K of an annotation entry."""
  out, k = [], 1
  while f'class_src{k}' in entry:
    out.append((entry[f'class_src{k}'], xywh_to_xyxy(entry[f'bbox_src{k}'])))
    k += 1
  return out


def read_annotations(path: str) -> list[dict]:
  def parse(entries):
    for entry in entries:
      if not sources(entry):
        raise KeyError(f'{entry.get("file")}: no class_src1 / bbox_src1')
    return entries
  return common.read_json(path, 'MUSIC annotation file', parse, 'not a MUSIC annotation list')


def list_clips(input_dir: str, annotations: str, ids: str = '') -> tuple[list, list[str], int]:
  """Clips (those of the id list `ids` when given), classes and the largest number of
  sources of a clip."""
  entries = read_annotations(annotations)
  if ids:
    wanted = set(common.read_id_list(ids))
    entries = [e for e in entries if e['file'] in wanted]
  clips, classes, most = [], set(), 1
  for entry in entries:
    srcs = sources(entry)
    names = [name for name, _ in srcs]
    masks = [common.find_file(os.path.join(input_dir, 'masks'), f'{entry["file"]}_src{k + 1}',
                              ('.png',)) for k in range(len(srcs))]
    clips.append(common.Clip(
        id=entry['file'], **common.media_files(input_dir, entry['file']), labels=names,
        boxes=[box for _, box in srcs], box_groups=list(range(len(srcs))),
        masks=masks if all(masks) else []))
    classes.update(names)
    most = max(most, len(srcs))
  return clips, sorted(classes), most


def convert(input_dir: str, output_dir: str, *, annotations: str = '', ids: str = '',
            split: str = 'music_duet', dataset: str = 'music', **kwargs) -> tfrecord.Manifest:
  annotations = annotations or os.path.join(input_dir, 'music_duet.json')
  clips, classes, most = list_clips(input_dir, annotations, ids)
  gt = tfrecord.GT_MULTISOURCE if most > 1 else tfrecord.GT_BOXES
  return common.convert(clips, output_dir, dataset=dataset, split=split, gt=gt,
                        classes=classes, source=input_dir, **kwargs)


def main(argv):
  del argv
  convert(flags.FLAGS.input_dir, flags.FLAGS.output_dir, annotations=flags.FLAGS.annotations,
          ids=flags.FLAGS.ids, split=flags.FLAGS.split, **common.flag_kwargs())


if __name__ == '__main__':
  common.define_flags()
  flags.DEFINE_string('annotations', '', 'Annotation json (default: music_duet.json).')
  flags.DEFINE_string('ids', '', 'Optional id list selecting a subset.')
  flags.DEFINE_string('split', 'music_duet', 'Split name written into the shard names.')
  app.run(main)
