"""Where training and evaluation figures go: DIR/metrics.jsonl, TensorBoard event files
(DIR/tensorboard/) and progress lines (avloc.progress) on stdout. Only process 0 writes.
A resumed run first drops what the interrupted one logged after its checkpoint, so no
step appears twice.

Both files are written through `etils.epath`, so DIR may be a URI (gs://..., see
avloc.paths). Objects in a bucket cannot be appended to: there each file is kept in
memory and uploaded whole at every flush (a few kB per thousand steps); a local file is
appended to. Event files are TFRecord frames of `Event` protos (avloc.data.tfrecord's
framing), written here rather than by a TensorBoard writer with its own file handling.
"""

import json
import socket
import sys
import time

import numpy as np
from etils import epath
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2

from avloc import paths, progress
from avloc.data import tfrecord


class _AppendedFile:
  """A file that only grows: appended to locally, re-uploaded whole on an object store.
  `initial` replaces the file's content when given (a truncated metrics.jsonl)."""

  def __init__(self, path: epath.Path, initial: bytes | None = None):
    self._path = path
    self._buffer = None
    if initial is not None:
      paths.write_bytes_atomic(path, [initial])
    if paths.is_local(path):
      self._file = path.open('ab')
    else:
      self._file = None
      self._buffer = bytearray(path.read_bytes() if path.exists() else b'')

  def write(self, data: bytes) -> None:
    if self._file is not None:
      self._file.write(data)
    else:
      self._buffer += data

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
    else:
      self._path.write_bytes(bytes(self._buffer))

  def close(self) -> None:
    self.flush()
    if self._file is not None:
      self._file.close()


def _kept_rows(path: epath.Path, last_step: int) -> bytes:
  """The rows of metrics.jsonl up to `last_step` (a row cut short by a kill is dropped)."""
  kept = []
  for line in path.read_text().splitlines(keepends=True):
    try:
      if json.loads(line)['step'] <= last_step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  return ''.join(kept).encode('utf-8')


class MetricWriter:
  """Appends scalars to metrics.jsonl and TensorBoard; prints progress lines."""

  def __init__(self, workdir: str, total_steps: int, enabled: bool = True, stream=None,
               resume_step: int = 0):
    """resume_step > 0: the run continues from that checkpoint step; rows of later steps
    (logged before an interruption) are removed from metrics.jsonl, and TensorBoard is
    told to hide the events of those steps (SessionLog.START at resume_step + 1)."""
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self._progress = None
    self._jsonl = None
    self._events = None
    if enabled:
      workdir = epath.Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      path = workdir / 'metrics.jsonl'
      kept = _kept_rows(path, resume_step) if resume_step and path.exists() else None
      self._jsonl = _AppendedFile(path, kept)
      directory = workdir / 'tensorboard'
      directory.mkdir(parents=True, exist_ok=True)
      name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
      self._events = _AppendedFile(directory / name)
      self._write_event(event_pb2.Event(file_version='brain.Event:2'))
      if resume_step:
        self._write_event(event_pb2.Event(step=resume_step + 1, session_log=event_pb2.SessionLog(
            status=event_pb2.SessionLog.START)))
      self._events.flush()

  def _write_event(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._events.write(tfrecord.frame_record(event.SerializeToString()))

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    row = json.dumps({'step': int(step), 'time': time.time(), **values}) + '\n'
    self._jsonl.write(row.encode('utf-8'))
    self._jsonl.flush()
    for name, value in values.items():
      self._write_event(event_pb2.Event(step=int(step), summary=tb_summary.scalar(name, value)))
    self._events.flush()

  def progress(self, step: int, scalars: dict, samples_per_step: int) -> None:
    """Prints 'step s/N (p%) | losses | steps/s samples/s | ETA' (rates since the last
    call; the first line has none: its interval holds the compilation)."""
    if self._progress is None:
      self._progress = progress.Progress('step', self.total_steps, 'steps',
                                         timed_from_start=False,
                                         per_unit={'samples': samples_per_step})
    shown = ' '.join(f'{k} {float(np.asarray(v)):.4g}' for k, v in scalars.items())
    line = self._progress.line(step, shown)
    if self.enabled:
      print(line, file=self.stream, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()
