"""Where training and evaluation figures go: DIR/metrics.jsonl, TensorBoard event files,
and progress lines on stdout. Only process 0 writes."""

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


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard; prints progress lines."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, stream=None):
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self._jsonl = None
    self._tensorboard = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', buffering=1)
      self._tensorboard = tensorboardX.SummaryWriter(os.path.join(workdir, 'tensorboard'))
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
