"""Orbax checkpoints: resumable training checkpoints and inference exports.

A workdir holds
  checkpoints/<step>/  train state + input-iterator state + config (the last `keep`)
  export/<step>/       inference export: model variables + config, the best evaluation
                       by `config.eval.best_metric` (the last one when there is none)
Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save never leaves a checkpoint that looks finished.
"""

import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

TRAIN_DIR = 'checkpoints'
EXPORT_DIR = 'export'


def _train_manager(directory: str, keep: int, async_save: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})


class TrainCheckpointer:
  """Periodic (asynchronous) saves of the train state, iterator state and config."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self._manager = _train_manager(os.path.join(workdir, TRAIN_DIR), keep, async_save)

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict,
           force: bool = False) -> bool:
    return self._manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())))

  def restore(self, abstract_state, data_iterator):
    """Restores the latest step into `data_iterator` (in place) and returns
    (state, saved config dict). abstract_state: ShapeDtypeStructs with shardings."""
    restored = self._manager.restore(self.latest_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        config=ocp.args.JsonRestore()))
    return restored['state'], restored['config']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class Exporter:
  """Inference exports (variables + config); keeps the best by `best_metric`."""

  def __init__(self, workdir: str, best_metric: str):
    self._best_metric = best_metric
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=(lambda metrics: metrics[best_metric]) if best_metric else None,
        best_mode='max', keep_checkpoints_without_metrics=not best_metric)
    self._manager = ocp.CheckpointManager(
        os.path.join(workdir, EXPORT_DIR), options=options,
        item_handlers={'variables': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def export(self, step: int, variables, config: ml_collections.ConfigDict,
             metrics: dict | None) -> None:
    if self._best_metric and (metrics is None or self._best_metric not in metrics):
      raise KeyError(f'config.eval.best_metric {self._best_metric!r} is not among the '
                     f'evaluation metrics {sorted(metrics or {})}')
    metrics = {self._best_metric: float(metrics[self._best_metric])} if self._best_metric else None
    self._manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        config=ocp.args.JsonSave(config.to_dict())))
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _step_dirs(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def load_inference(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) from a training workdir, an export or training checkpoint
  directory, or one step of either.

  A workdir gives its export (the best evaluation), or else the model variables of its
  latest training checkpoint. Arrays come back as host numpy arrays.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such checkpoint or workdir')
  for directory in (os.path.join(path, EXPORT_DIR), path, os.path.join(path, TRAIN_DIR)):
    steps = _step_dirs(directory)
    if steps:
      return _restore_step(os.path.join(directory, str(steps[-1])))
  return _restore_step(path)


def _restore_step(step_dir: str) -> tuple[ml_collections.ConfigDict, dict]:
  for item in ('variables', 'state'):
    if os.path.isdir(os.path.join(step_dir, item)):
      return _restore_item(step_dir, item)
  raise FileNotFoundError(
      f'{step_dir}: holds no avloc checkpoint (expected {EXPORT_DIR}/<step>, {TRAIN_DIR}/<step> '
      'or a step directory with variables/ or state/ and config/)')


def _restore_item(step_dir: str, item: str) -> tuple[ml_collections.ConfigDict, dict]:
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      **{item: ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler()}))
  restored = checkpointer.restore(step_dir, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(), 'config': ocp.args.JsonRestore()}))
  tree = restored[item]
  variables = tree if item == 'variables' else {
      'params': tree['params'], 'batch_stats': tree['batch_stats']}
  return ml_collections.ConfigDict(restored['config']), jax.device_get(variables)
