r"""Trains and evaluates an avloc model.

  python -m avloc.main --config=configs/jsa.py:synthetic --workdir=runs/jsa_synthetic
  python -m avloc.main --config=configs/jsa.py --workdir=runs/jsa_144k --mode=eval
  python -m avloc.main --config=configs/jsa.py --workdir=runs/eval_release --mode=eval \
      --checkpoint=converted/export/0 --config.eval.object_guidance.weights=resnet18.pth
  python -m avloc.main --config=configs/noprior.py --config.train.batch_size=64 ...
"""

from absl import app, flags, logging
from ml_collections import config_flags

from avloc import experiment, sharding

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file and variant, e.g. configs/jsa.py:synthetic.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics, TensorBoard and evaluation outputs.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', ['train', 'eval', 'train_and_eval'],
                          'train, evaluate the workdir\'s checkpoint, or both.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', '', 'With --mode=eval: the checkpoint to evaluate (an export or training '
    'step directory, or another workdir); default: the workdir\'s best export, else its '
    'latest training checkpoint.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'on', 'off'],
    'jax.distributed.initialize() for multi-process runs (auto: when a launcher is detected).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # keep library INFO logs out of the progress lines
    logging.set_verbosity(logging.WARNING)
  sharding.initialize_distributed(_DISTRIBUTED.value)
  experiment.run(_CONFIG.value, _WORKDIR.value, _MODE.value, checkpoint=_CHECKPOINT.value)


def run():
  app.run(main)


if __name__ == '__main__':
  run()
