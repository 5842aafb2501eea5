r"""PyTorch weights -> avloc exports (`avloc-convert`): torchvision's ImageNet ResNet-18 and
checkpoints of the official releases of JSA, EZ-VSL, LVS and FNAC.

  python -m avloc.convert --kind=imagenet_resnet18 --input=resnet18-f37072fd.pth --output=DIR
  python -m avloc.convert --kind=jsa --input=vggss_best.pth --output=DIR \
      --config=configs/jsa.py:vggsound_144k
  python -m avloc.convert --kind=ezvsl --input=best.pth --output=DIR \
      --config=configs/ezvsl.py:vggsound_144k      (likewise lvs, fnac)

Writes the inference export DIR/export/0 (`avloc.weights.convert_checkpoint`, which also
documents the layouts). Exit status 1 with one line for a checkpoint that does not fit.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from avloc import weights

_KIND = flags.DEFINE_enum('kind', None, list(weights.KINDS), 'What the PyTorch checkpoint holds.')
_INPUT = flags.DEFINE_string('input', None, 'PyTorch checkpoint (.pth).')
_OUTPUT = flags.DEFINE_string('output', None, 'Directory for the export (output/export/0).')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'For a method (--kind=jsa, ezvsl, lvs, fnac): config and variant of the '
    'architecture, e.g. configs/jsa.py:vggsound_144k.', lock_config=True)
flags.mark_flags_as_required(['kind', 'input', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  kind, config = _KIND.value, _CONFIG.value
  if kind != weights.TRUNK_KIND and config is None:
    raise app.UsageError(f'--kind={kind} needs --config=configs/{kind}.py[:variant], the '
                         'architecture the checkpoint was trained with')
  try:
    path = weights.convert_checkpoint(kind, _INPUT.value, _OUTPUT.value, config)
  except (ValueError, OSError) as e:  # ConversionError is a ValueError
    print(f'avloc.convert: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
  print(f'Wrote {path}')


def run():
  app.run(main)


if __name__ == '__main__':
  run()
