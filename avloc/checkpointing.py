"""Orbax checkpoints: resumable training checkpoints and inference exports.

A workdir holds
  checkpoints/<step>/  train state + input-iterator state + config (the last `keep`)
  export/<step>/       inference export: model variables + config, the best evaluation
                       by `config.eval.best_metric` (the last one when there is none)
Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-save never leaves a checkpoint that looks finished (the temporary
directory is removed when the run restarts). A checkpoint that no longer restores
(a corrupt file) is moved aside to `<step>.unrestorable` and training resumes from the
newest one that does. The workdir may be a URI (gs://...; avloc.paths): Orbax and Grain
write through epath and TensorStore, this module's own file operations through epath.
"""

import sys
import warnings

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental.multihost_utils import sync_global_devices

from avloc import paths

TRAIN_DIR = 'checkpoints'
EXPORT_DIR = 'export'
UNRESTORABLE_SUFFIX = '.unrestorable'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be saved or restored; the message names its directory."""


def _reason(error: BaseException) -> str:
  """The first line of an error (TensorStore's run to dozens), with its type."""
  lines = str(error).strip().splitlines()
  first = lines[0] if lines else ''
  first = first[:300] + ('...' if len(first) > 300 else '')
  return f'{type(error).__name__}: {first}' if first else type(error).__name__


def _quiet_closed_loop_errors() -> None:
  """When a restore or a save fails, TensorStore operations still in flight complete into
  the event loop that Orbax has already closed, and Python prints each 'Event loop is
  closed' error (dozens of tracebacks): as unraisable, or through sys.excepthook when
  TensorStore's thread prints it. Installed once, this drops exactly those; other errors
  still show. (`_quiet_abandoned_writes` drops the warnings of a failed save.)"""
  if getattr(sys.unraisablehook, 'avloc_quiet', False):
    return

  def closed_loop(error) -> bool:
    return isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'

  previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

  def unraisable_hook(unraisable):
    if not closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  def except_hook(kind, error, traceback):
    if not closed_loop(error):
      previous_except(kind, error, traceback)

  unraisable_hook.avloc_quiet = True
  sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _quiet_abandoned_writes() -> None:
  """After a failed save, Orbax's write coroutines for the other items are never awaited,
  and Python warns about each when the process exits ("coroutine ... was never
  awaited"): the failure itself has been reported, so these warnings are dropped."""
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)


def _train_manager(directory: str, keep: int, async_save: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory,
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
          cleanup_tmp_directories=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})


class TrainCheckpointer:
  """Periodic (asynchronous) saves of the train state, iterator state and config."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = str(epath.Path(workdir) / TRAIN_DIR)
    self._manager = _train_manager(self.directory, keep, async_save)
    self._saving = None  # the step of the save last started
    self._saved = self._manager.latest_step()  # the newest complete step
    _quiet_closed_loop_errors()

  @property
  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, config: ml_collections.ConfigDict) -> bool:
    """Starts saving `step` in the background, once the previous save has finished;
    False when that step is already saved."""
    if step in self._manager.all_steps():
      return False
    self._wait()
    self._saving = step
    return self._manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())))

  def check_for_errors(self) -> None:
    """Raises CheckpointError once a background save has failed (a full disk, a quota);
    cheap enough to call after every step."""
    if self._saving is not None and not self._manager.is_saving_in_progress():
      self._wait()

  def _wait(self) -> None:
    """Waits for the save in flight; CheckpointError if it failed."""
    if self._saving is None:
      return
    step, self._saving = self._saving, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except  # TensorStore, I/O, quota
      _quiet_abandoned_writes()
      last = f'step {self._saved}' if self._saved is not None else 'none'
      raise CheckpointError(
          f'{self.directory}/{step}: saving the checkpoint failed ({_reason(e)}); the last '
          f'complete checkpoint is {last}. Fix the cause (e.g. free disk space) and re-run '
          'to resume from it.') from e
    self._saved = step

  def restore(self, abstract_state, data_iterator, log=print):
    """Restores the newest checkpoint that restores into `data_iterator` (in place) and
    returns (state, saved config dict, step). Newer checkpoints that fail to restore are
    reported and moved aside. abstract_state: ShapeDtypeStructs with shardings."""
    failed = []
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f'{self.directory}: holds no checkpoint')
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            config=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  # TensorStore, JSON, I/O
        log(f'{self.directory}/{step}: cannot restore this checkpoint ({_reason(e)})')
        failed.append((step, e))
        continue
      for bad, _ in failed:
        self._move_aside(bad)
      if failed:
        log(f'Resuming from step {step}, the newest checkpoint that restores; the newer '
            f'one(s) were moved to {", ".join(f"{b}{UNRESTORABLE_SUFFIX}" for b, _ in failed)}.')
      self._saved = step
      return restored['state'], restored['config'], step
    step, error = failed[0]
    raise CheckpointError(
        f'{self.directory}: no checkpoint restores (the newest, {step}: {_reason(error)}); '
        'move the directory away to train from scratch') from error

  def _move_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      path = epath.Path(self.directory) / str(step)
      path.rename(path.with_name(path.name + UNRESTORABLE_SUFFIX))
    if jax.process_count() > 1:
      sync_global_devices(f'avloc checkpoint {step} moved aside')
    self._manager.reload()

  def close(self, raise_errors: bool = True, log=print) -> None:
    """Waits for the save in flight (a crash must not abandon it half-written), then
    closes; with `raise_errors=False` a failed save is logged, not raised (another error
    is already on its way)."""
    try:
      self._wait()
    except CheckpointError as e:
      if raise_errors:
        raise
      log(str(e))
    finally:
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
        epath.Path(workdir) / EXPORT_DIR, options=options,
        item_handlers={'variables': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def export(self, step: int, variables, config: ml_collections.ConfigDict,
             metrics: dict | None) -> None:
    if self._best_metric and (metrics is None or self._best_metric not in metrics):
      raise KeyError(f'config.eval.best_metric {self._best_metric!r} is not among the '
                     f'evaluation metrics {sorted(metrics or {})}')
    if step in self._manager.all_steps():  # re-evaluated after a resume
      return
    metrics = {self._best_metric: float(metrics[self._best_metric])} if self._best_metric else None
    self._manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables),
        config=ocp.args.JsonSave(config.to_dict())))
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _step_dirs(directory: epath.Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def load_inference(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) from a training workdir, an export or training checkpoint
  directory, or one step of either.

  A workdir gives its export (the best evaluation), or else the model variables of its
  latest training checkpoint. Arrays come back as host numpy arrays.
  """
  if not path:
    raise ValueError('no checkpoint given (an empty path): name a training workdir, its '
                     f'{EXPORT_DIR}/ or {TRAIN_DIR}/ directory, or one step of either')
  path = paths.resolve(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such checkpoint or workdir')
  for directory in (path / EXPORT_DIR, path, path / TRAIN_DIR):
    steps = _step_dirs(directory)
    if steps:
      return _restore_step(directory / str(steps[-1]))
  return _restore_step(path)


def _restore_step(step_dir: epath.Path) -> tuple[ml_collections.ConfigDict, dict]:
  for item in ('variables', 'state'):
    if (step_dir / item).is_dir():
      return _restore_item(step_dir, item)
  raise FileNotFoundError(
      f'{step_dir}: holds no avloc checkpoint (expected {EXPORT_DIR}/<step>, {TRAIN_DIR}/<step> '
      'or a step directory with variables/ or state/ and config/)')


def _restore_item(step_dir: epath.Path, item: str) -> tuple[ml_collections.ConfigDict, dict]:
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      **{item: ocp.StandardCheckpointHandler(), 'config': ocp.JsonCheckpointHandler()}))
  _quiet_closed_loop_errors()
  try:
    restored = checkpointer.restore(step_dir, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(), 'config': ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except  # TensorStore, JSON, I/O
    raise CheckpointError(f'{step_dir}: cannot restore this checkpoint ({_reason(e)})') from e
  tree = restored[item]
  variables = tree if item == 'variables' else {
      'params': tree['params'], 'batch_stats': tree['batch_stats']}
  return ml_collections.ConfigDict(restored['config']), jax.device_get(variables)
