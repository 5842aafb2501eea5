"""One avloc run from a config: checks, data preparation, training and evaluation.

`avloc.main` is the command-line front of `run`; notebooks call `run` directly.
"""

import importlib
import os

import ml_collections

from avloc import checkpointing, config as config_lib, evaluate, methods, paths, sharding, train
from avloc.data import tfrecord

_CONVERTERS = {  # split-name prefix -> converter (first match)
    'vggsound_duet': 'data_prep.music', 'vggsound_trio': 'data_prep.music',
    'vggsound_mixed': 'data_prep.music', 'vggsound': 'data_prep.vggsound',
    'flickr': 'data_prep.flickr', 'vggss': 'data_prep.vggss', 'avsbench': 'data_prep.avsbench',
    'music': 'data_prep.music',
}


def check_workdir(workdir: str) -> str:
  """Creates `workdir` (a local path or a URI such as gs://bucket/run, see avloc.paths)
  and checks that it is writable; returns its absolute path."""
  workdir = paths.resolve(workdir)
  probe = workdir / f'.write-probe-{os.getpid()}'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'--workdir {workdir} is not writable: {e.strerror or e}') from e
  return str(workdir)


def generate_splits(config: ml_collections.ConfigDict, names: list[str], root: str,
                    log=print) -> dict[str, str]:
  """The generated benchmark's splits {name: directory}: made on first use by the
  `prepare(config.data.synthetic, root, splits=names, log=log)` of the module that
  `config.data.synthetic_generator` names (data_prep.synthetic), the library's only way
  into data preparation."""
  if not paths.is_local(root):
    raise ValueError(f'config.data.root {root}: the synthetic benchmark is generated under a '
                     'local data root only; generate it locally and copy the directory '
                     '(e.g. gcloud storage cp -r), or set a local config.data.root')
  name = config.data.synthetic_generator
  try:
    generator = importlib.import_module(name)
  except ImportError as e:
    raise config_lib.ConfigError(
        f'config.data.synthetic_generator {name!r} cannot be imported ({e}); install avloc '
        'with its data_prep package (pip install .) or run from a checkout') from e
  return generator.prepare(config.data.synthetic, root, splits=names, log=log)


def resolve_splits(config: ml_collections.ConfigDict, names: list[str],
                   log=print) -> dict[str, str]:
  """Prepared split directory for each name: `<data.root>/<name>`; the synthetic
  benchmark is generated on first use (data_prep.synthetic), other datasets must have
  been converted beforehand."""
  root = config_lib.resolve_data_root(config)
  synthetic_names = [name for name in names if name.startswith(config_lib.SYNTHETIC)]
  dirs = generate_splits(config, synthetic_names, root, log) if synthetic_names else {}
  for name in names:
    if name in dirs:
      continue
    directory = paths.resolve(root) / name
    if not (directory / tfrecord.MANIFEST_NAME).exists():
      converter = next((m for prefix, m in _CONVERTERS.items() if name.startswith(prefix)),
                       'data_prep.<dataset>')
      raise FileNotFoundError(
          f'prepared split {name!r} not found at {directory}: convert it first '
          f'(python -m {converter} --input_dir=<raw data> --output_dir={directory}) '
          'or point --config.data.root at the directory holding it')
    dirs[name] = str(directory)
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
  tfrecord.atomic_write_json(paths.resolve(workdir) / 'config.json', config.to_dict())
  evaluator = None
  if eval_names:
    evaluator = evaluate.Evaluator(config, {n: split_dirs[n] for n in eval_names}, workdir,
                                   log=log)
  if mode == 'eval':
    return evaluator.evaluate(variables, step=None, writer=None)
  train.train(config, workdir, split_dirs, evaluator, log=log)
  return evaluator.last_metrics if evaluator else {}
