"""Flickr-SoundNet (Senocak et al. 2018) -> prepared splits.

Training subsets (10k / 144k): `<input_dir>/frames/<id>.jpg` + `<input_dir>/audio/<id>.wav`
(or `video/<id>.mp4`) and the subset's id list, exactly as VGGSound (data_prep.vggsound).
Test set (`--kind=test`): ids from `flickr_test.csv` (first field), boxes of several
annotators per image as pixel xmin, ymin, xmax, ymax on the 256x256 annotation canvas,
either from `flickr_test250_boxes.json` (`{"boxes": {id: [[x0, y0, x1, y1], ...]}}`) or
from a directory of the original per-image XML files (`<id>.xml`, `<bbox>` elements as the
LVS code reads them). Each annotator's box keeps its own group, so the evaluation builds
the consensus map of the benchmark.

  python -m data_prep.flickr --kind=test --input_dir=RAW --ids=flickr_test.csv \
      --annotations=flickr_test250_boxes.json --output_dir=DATA/flickr_test
  python -m data_prep.flickr --kind=train --input_dir=RAW --ids=flickr_144k.txt \
      --output_dir=DATA/flickr_144k --split=flickr_144k
"""

import os
import xml.etree.ElementTree as ElementTree

from absl import app, flags

from avloc.data import tfrecord
from data_prep import common, vggsound

CANVAS = 256.0  # the annotation canvas of the Flickr-SoundNet test boxes


def read_boxes(annotations: str) -> dict[str, list[list[float]]]:
  """{id: [[x0, y0, x1, y1] pixels on the 256 canvas, one per annotator box]}."""
  if os.path.isdir(annotations):
    boxes = {}
    for name in sorted(os.listdir(annotations)):
      if name.endswith('.xml'):
        path = os.path.join(annotations, name)
        try:
          root = ElementTree.parse(path).getroot()
          boxes[name[:-4]] = [[float(v.text) for v in bbox][:4]
                              for bbox in root.iter('bbox')]
        except (ElementTree.ParseError, ValueError, TypeError) as e:
          raise ValueError(f'{path}: not a Flickr-SoundNet annotation ({e})') from e
    return boxes
  return common.read_json(
      annotations, 'Flickr-SoundNet test annotations',
      lambda value: {str(k): v for k, v in value['boxes'].items()},
      'expected {"boxes": {id: [[x0, y0, x1, y1], ...]}}')


def test_clips(input_dir: str, ids: str, annotations: str) -> list[common.Clip]:
  boxes = read_boxes(annotations)
  clip_ids = common.read_id_list(ids) if ids else sorted(boxes)
  missing = [i for i in clip_ids if i not in boxes]
  if missing:
    raise ValueError(f'{annotations}: no boxes for {len(missing)} test ids, e.g. {missing[:3]}')
  return [common.Clip(id=i, **common.media_files(input_dir, i),
                      boxes=[[v / CANVAS for v in box] for box in boxes[i]],
                      box_groups=list(range(len(boxes[i])))) for i in clip_ids]


def convert(input_dir: str, output_dir: str, *, kind: str = 'test', ids: str = '',
            annotations: str = '', split: str = '', **kwargs) -> tfrecord.Manifest:
  if kind == 'train':
    return vggsound.convert(input_dir, output_dir, ids=ids, split=split or 'flickr',
                            dataset='flickr', **kwargs)
  if kind != 'test':
    raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
  clips = test_clips(input_dir, ids, annotations or os.path.join(input_dir, 'Annotations'))
  return common.convert(clips, output_dir, dataset='flickr', split=split or 'flickr_test',
                        gt=tfrecord.GT_CONSENSUS, classes=[], source=input_dir, **kwargs)


def main(argv):
  del argv
  convert(flags.FLAGS.input_dir, flags.FLAGS.output_dir, kind=flags.FLAGS.kind,
          ids=flags.FLAGS.ids, annotations=flags.FLAGS.annotations, split=flags.FLAGS.split,
          **common.flag_kwargs())


if __name__ == '__main__':
  common.define_flags()
  flags.DEFINE_enum('kind', 'test', ['train', 'test'], 'Training subset or the test set.')
  flags.DEFINE_string('ids', '', 'Id list (flickr_test.csv, or a training subset list).')
  flags.DEFINE_string('annotations', '',
                      'Test boxes: flickr_test250_boxes.json or a directory of <id>.xml.')
  flags.DEFINE_string('split', '', 'Split name (default flickr / flickr_test).')
  app.run(main)
