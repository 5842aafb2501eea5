r"""Trains and evaluates an avloc model.

  python -m avloc.main --config=configs/jsa.py:synthetic --workdir=runs/jsa_synthetic
  python -m avloc.main --config=configs/jsa.py --workdir=runs/jsa_144k --mode=eval
  python -m avloc.main --config=configs/jsa.py --workdir=runs/eval_release --mode=eval \
      --checkpoint=converted/export/0 --config.eval.object_guidance.weights=resnet18.pth
  python -m avloc.main --config=configs/noprior.py --config.train.batch_size=64 ...

Exit status: 0 when done; 1 with one line on stderr naming the file or config field
when an input, a config value, a checkpoint or a save is bad, or the loss stops being
finite (`--verbosity=1` adds the traceback); 75 (`preemption.EXIT_STATUS`) after a
preemption (SIGTERM) saved a checkpoint: re-run the same command to resume.
"""

import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from avloc import checkpointing, experiment, preemption, sharding, train

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

# Errors a user fixes from the message alone: bad inputs, config values, checkpoints,
# failed saves, a diverged loss.
_USER_ERRORS = (ValueError, OSError, checkpointing.CheckpointError, train.NonFiniteLoss)


class _OrbaxTracebacks(std_logging.Filter):
  """Drops the tracebacks Orbax logs from its threads when a save or restore fails
  (three or four of them, ~180 lines, for one full disk): avloc reports that failure in
  one line (checkpointing.CheckpointError). `--verbosity=1` shows them."""

  def filter(self, record):
    return not (record.exc_info and f'{os.sep}orbax{os.sep}' in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  verbose = flags.FLAGS['verbosity'].present
  if not verbose:  # keep library INFO logs out of the progress lines
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_OrbaxTracebacks())
  sharding.initialize_distributed(_DISTRIBUTED.value)
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, _MODE.value, checkpoint=_CHECKPOINT.value)
  except preemption.Preempted as e:
    print(f'avloc.main: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_STATUS)
  except _USER_ERRORS as e:
    if verbose:
      raise
    print(f'avloc.main: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


def unknown_field_message(error: BaseException, argv: list[str]) -> str:
  """One line for an override of a config field that does not exist, from the KeyError
  ml_collections raises (with its "Did you mean" suggestion) and the command line."""
  while not isinstance(error, KeyError) and error.args and isinstance(
      error.args[0], BaseException):
    error = error.args[0]
  lines = str(error.args[0] if error.args else error).splitlines()
  key = lines[0].strip('\'"') if lines else ''
  override = next((arg.split('=', 1)[0] for arg in argv
                   if arg.startswith('--config.') and key in arg.split('=', 1)[0].split('.')),
                  '')
  if not override:
    return f'config has no field {key!r}'
  parts = override[2:].split('.')
  at = parts.index(key)
  message = f'{override}: {".".join(parts[:at])} has no field {key!r}'
  suggestion = re.search(r'Did you mean "([^"]+)"', '\n'.join(lines[1:]))
  if suggestion:
    message += f'; did you mean --{".".join(parts[:at] + [suggestion.group(1)] + parts[at + 1:])}?'
  return message


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that an override of a config field that does not exist
  ends the program with one line (ml_collections raises a chained KeyError)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    sys.exit(f'avloc.main: {unknown_field_message(e, argv)}')


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
