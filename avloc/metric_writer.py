"""Where training and evaluation figures go: DIR/metrics.jsonl, TensorBoard event files,
and progress lines on stdout. Only process 0 writes. A resumed run first drops what the
interrupted one logged after its checkpoint, so no step appears twice."""

import json
import os
import sys
import time

import numpy as np
import tensorboardX


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


def _truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the rows of metrics.jsonl up to `last_step` (atomically)."""
  with open(path) as f:
    kept = []
    for line in f:
      try:
        if json.loads(line)['step'] <= last_step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):  # a row cut short by a kill
        continue
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard; prints progress lines."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, stream=None,
               resume_step: int = 0):
    """resume_step > 0: the run continues from that checkpoint step; rows and events of
    later steps (logged before an interruption) are removed."""
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      path = os.path.join(workdir, 'metrics.jsonl')
      if resume_step and os.path.exists(path):
        _truncate_jsonl(path, resume_step)
      self._jsonl = open(path, 'a', buffering=1)  # pylint: disable=consider-using-with
      # purge_step: TensorBoard hides the events of steps >= it from earlier files.
      self._tensorboard = tensorboardX.SummaryWriter(
          os.path.join(workdir, 'tensorboard'), purge_step=resume_step + 1 if resume_step else None)
    self._last_time = None
    self._last_step = None

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), 'time': time.time(), **values}) + '\n')
    for name, value in values.items():
      self._tensorboard.add_scalar(name, value, step)
    self._tensorboard.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    if self.enabled:
      self._tensorboard.add_image(name, image, step, dataformats='HWC')
      self._tensorboard.flush()

  def progress(self, step: int, scalars: dict, samples_per_step: int) -> None:
    """Prints 'step s/N | losses | steps/s, samples/s | ETA' (rates since the last call)."""
    now = time.time()
    rate = ''
    if self._last_time is not None and step > self._last_step:
      steps_per_second = (step - self._last_step) / (now - self._last_time)
      eta = (self.total_steps - step) / max(steps_per_second, 1e-9)
      rate = (f' | {steps_per_second:.2f} steps/s {steps_per_second * samples_per_step:.1f}'
              f' samples/s | ETA {format_duration(eta)}')
    self._last_time, self._last_step = now, step
    if not self.enabled:
      return
    shown = ' '.join(f'{k} {float(np.asarray(v)):.4g}' for k, v in scalars.items())
    percent = 100.0 * step / max(self.total_steps, 1)
    print(f'step {step}/{self.total_steps} ({percent:.0f}%) | {shown}{rate}', file=self.stream,
          flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tensorboard.close()
