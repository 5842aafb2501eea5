"""VGG-SS test set (Chen et al. 2021) -> prepared split.

Layout: `<input_dir>/frames/<id>.jpg` + `<input_dir>/audio/<id>.wav` (as the LVS / EZ-VSL
code reads them) or `<input_dir>/video/<id>.mp4`; annotations `vggss.json`:
`[{"file": id, "class": name, "bbox": [[xmin, ymin, xmax, ymax] in 0..1, ...]}, ...]`.
An id list (`vggss_heard_test.csv`, `vggss_unheard_test.csv`) selects a subset. Box
coordinates outside [0, 1] are clipped as the official evaluations do (`vggss_box`).

  python -m data_prep.vggss --input_dir=RAW --output_dir=DATA/vggss \
      [--annotations=RAW/vggss.json] [--ids=vggss_heard_test.csv --split=vggss_heard110]
"""

import os

import numpy as np
from absl import app, flags

from avloc.data import tfrecord
from data_prep import common


def read_annotations(path: str) -> list[dict]:
  def parse(entries):
    for entry in entries:
      entry['file'], entry['class'], entry['bbox']  # pylint: disable=pointless-statement
    return entries
  return common.read_json(path, 'VGG-SS annotation file', parse,
                          'not a vggss.json annotation list')


def vggss_box(box) -> list[float]:
  """A vggss.json box as the official evaluations read it (EZ-VSL and JSA `dataset.py:
  load_all_bboxes`: `np.clip(bbox, 0, 1)`, then `bbox2gtmap` fills `[ymin:ymax,
  xmin:xmax]`): each coordinate clipped to [0, 1]. A box whose max falls below its min
  (12 test clips have a coordinate of -2.88e16) covers no pixel there; its max is raised
  to its min: an empty box (zero width or height) that no map can hit."""
  xmin, ymin, xmax, ymax = np.clip(np.asarray(box, np.float64), 0.0, 1.0).tolist()
  return [xmin, ymin, max(xmax, xmin), max(ymax, ymin)]


def list_clips(input_dir: str, annotations: str, ids: str = '') -> tuple[list, list[str]]:
  entries = read_annotations(annotations)
  if ids:
    wanted = set(common.read_id_list(ids))
    entries = [e for e in entries if e['file'] in wanted]
  classes = sorted({e['class'] for e in entries})
  clips = [common.Clip(id=e['file'], **common.media_files(input_dir, e['file']),
                       labels=[e['class']], boxes=[vggss_box(b) for b in e['bbox']],
                       box_groups=[0] * len(e['bbox']))
           for e in entries]
  return clips, classes


def convert(input_dir: str, output_dir: str, *, annotations: str = '', ids: str = '',
            split: str = 'vggss', **kwargs) -> tfrecord.Manifest:
  annotations = annotations or os.path.join(input_dir, 'vggss.json')
  clips, classes = list_clips(input_dir, annotations, ids)
  return common.convert(clips, output_dir, dataset='vggss', split=split,
                        gt=tfrecord.GT_BOXES, classes=classes, source=input_dir, **kwargs)


def main(argv):
  del argv
  convert(flags.FLAGS.input_dir, flags.FLAGS.output_dir, annotations=flags.FLAGS.annotations,
          ids=flags.FLAGS.ids, split=flags.FLAGS.split, **common.flag_kwargs())


if __name__ == '__main__':
  common.define_flags()
  flags.DEFINE_string('annotations', '', 'vggss.json (default: <input_dir>/vggss.json).')
  flags.DEFINE_string('ids', '', 'Optional id list selecting a subset.')
  flags.DEFINE_string('split', 'vggss', 'Split name written into the shard names.')
  app.run(main)
