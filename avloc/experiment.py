"""One avloc run from a config: checks, data preparation, training and evaluation.

`avloc.main` is the command-line front of `run`; notebooks call `run` directly.
"""

import os

import ml_collections

from avloc import checkpointing, config as config_lib, evaluate, methods, sharding, train
from avloc.data import tfrecord

_CONVERTERS = {  # split-name prefix -> converter (first match)
    'vggsound_duet': 'data_prep.music', 'vggsound_trio': 'data_prep.music',
    'vggsound_mixed': 'data_prep.music', 'vggsound': 'data_prep.vggsound',
    'flickr': 'data_prep.flickr', 'vggss': 'data_prep.vggss', 'avsbench': 'data_prep.avsbench',
    'music': 'data_prep.music',
}


def check_workdir(workdir: str) -> str:
  """Creates `workdir` and checks that it is writable; returns its absolute path."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  probe = os.path.join(workdir, f'.write-probe-{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} is not writable: {e.strerror}') from e
  return workdir


def resolve_splits(config: ml_collections.ConfigDict, names: list[str],
                   log=print) -> dict[str, str]:
  """Prepared split directory for each name: `<data.root>/<name>`; the synthetic
  benchmark is generated on first use (data_prep.synthetic), other datasets must have
  been converted beforehand."""
  root = config_lib.resolve_data_root(config)
  dirs = {}
  synthetic_names = [name for name in names if name.startswith(config_lib.SYNTHETIC)]
  if synthetic_names:
    from data_prep import synthetic  # pylint: disable=g-import-not-at-top
    dirs.update(synthetic.prepare(config.data.synthetic, root, splits=synthetic_names, log=log))
  for name in names:
    if name in dirs:
      continue
    directory = os.path.join(root, name)
    if not os.path.exists(os.path.join(directory, tfrecord.MANIFEST_NAME)):
      converter = next((m for prefix, m in _CONVERTERS.items() if name.startswith(prefix)),
                       'data_prep.<dataset>')
      raise FileNotFoundError(
          f'prepared split {name!r} not found at {directory}: convert it first '
          f'(python -m {converter} --input_dir=<raw data> --output_dir={directory}) '
          'or point --config.data.root at the directory holding it')
    dirs[name] = directory
  return dirs


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = 'train_and_eval',
        log=print, checkpoint: str = '') -> dict:
  """Trains and/or evaluates; returns the last evaluation metrics ({} without one).

  mode 'eval' scores `checkpoint` (an export or training step directory, or a workdir)
  or, without one, the workdir's best export (else its latest training checkpoint).
  """
  if mode not in ('train', 'eval', 'train_and_eval'):
    raise ValueError(f"mode must be 'train', 'eval' or 'train_and_eval', got {mode!r}")
  if checkpoint and mode != 'eval':
    raise ValueError(f'a checkpoint to evaluate ({checkpoint}) needs mode eval, got {mode!r}')
  method = methods.get_method(config.method)
  config_lib.validate(config, method.check_config)
  mesh = sharding.make_mesh()
  if mode != 'eval':
    sharding.check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  if mode != 'train':
    sharding.check_batch_size(config.eval.batch_size, mesh, 'eval.batch_size')
  if mode == 'train_and_eval':
    config_lib.check_best_metric(config)
  workdir = check_workdir(workdir)
  eval_names = config_lib.eval_splits(config) if mode != 'train' else []
  train_names = [config.data.train_split] if mode != 'eval' else []
  split_dirs = resolve_splits(config, train_names + eval_names, log=log)
  variables = None
  if mode == 'eval':
    saved_config, variables = checkpointing.load_inference(checkpoint or workdir)
    config = config_lib.with_saved_model(config, saved_config, log)
  tfrecord.atomic_write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  evaluator = None
  if eval_names:
    evaluator = evaluate.Evaluator(config, {n: split_dirs[n] for n in eval_names}, workdir,
                                   log=log)
  if mode == 'eval':
    return evaluator.evaluate(variables, step=None, writer=None)
  train.train(config, workdir, split_dirs, evaluator, log=log)
  return evaluator.last_metrics if evaluator else {}
