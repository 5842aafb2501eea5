"""Metrics of a run (avloc/metric_writer.py): metrics.jsonl, TensorBoard event files and
progress lines, in a local workdir and in a (fake, offline) Cloud Storage bucket, and
what a resumed run keeps."""

import io
import json

import pytest
from etils import epath
from tensorboardX.proto import event_pb2

from avloc import metric_writer, progress
from avloc.data import tfrecord


def _rows(workdir):
  return [json.loads(line) for line in (epath.Path(workdir) / 'metrics.jsonl').read_text()
          .splitlines()]


def _events(workdir):
  """Every event of every file under tensorboard/, files in name order."""
  events = []
  for path in sorted((epath.Path(workdir) / 'tensorboard').iterdir()):
    events += [event_pb2.Event.FromString(r) for r in tfrecord.iter_records(path)]
  return events


def _scalars(events):
  return {(e.step, v.tag): v.simple_value for e in events if e.HasField('summary')
          for v in e.summary.value}


@pytest.fixture(params=['local', 'gcs'])
def workdir(request, tmp_path):
  if request.param == 'local':
    return str(tmp_path / 'run')
  request.getfixturevalue('gcs')
  return 'gs://bucket/run'


def test_scalars_go_to_jsonl_and_tensorboard(workdir):
  writer = metric_writer.MetricWriter(workdir, total_steps=10, stream=io.StringIO())
  writer.write_scalars(2, {'train/loss': 1.5, 'train/grad_norm': 3})
  writer.write_scalars(4, {'train/loss': 1.25})
  writer.close()
  rows = _rows(workdir)
  assert [(r['step'], r['train/loss']) for r in rows] == [(2, 1.5), (4, 1.25)]
  assert rows[0]['train/grad_norm'] == 3.0 and rows[0]['time'] <= rows[1]['time']
  events = _events(workdir)
  assert events[0].file_version == 'brain.Event:2'
  assert _scalars(events) == {(2, 'train/loss'): 1.5, (2, 'train/grad_norm'): 3.0,
                              (4, 'train/loss'): 1.25}
  assert not [e for e in events if e.HasField('session_log')]  # a fresh run purges nothing


def test_a_resumed_run_drops_what_followed_its_checkpoint(workdir):
  first = metric_writer.MetricWriter(workdir, total_steps=10, stream=io.StringIO())
  for step in (2, 4, 6):
    first.write_scalars(step, {'train/loss': float(step)})
  first.close()
  path = epath.Path(workdir) / 'metrics.jsonl'
  path.write_text(path.read_text() + '{"step": 8, "train/lo')  # a row cut short by a kill
  resumed = metric_writer.MetricWriter(workdir, total_steps=10, stream=io.StringIO(),
                                       resume_step=4)
  resumed.write_scalars(6, {'train/loss': 60.0})
  resumed.close()
  assert [(r['step'], r['train/loss']) for r in _rows(workdir)] == [
      (2, 2.0), (4, 4.0), (6, 60.0)]
  # TensorBoard keeps both files; the START event at step 5 hides the first file's step 6.
  starts = [e.step for e in _events(workdir)
            if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [5]


def test_progress_lines_and_only_process_zero_writes(tmp_path, monkeypatch):
  now = [0.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
  stream = io.StringIO()
  writer = metric_writer.MetricWriter(str(tmp_path / 'run'), total_steps=100, stream=stream)
  writer.progress(10, {'loss': 2.34567, 'loss_a': 1}, samples_per_step=8)
  now[0] = 4.0
  writer.progress(30, {'loss': 2.0}, samples_per_step=8)
  writer.close()
  assert stream.getvalue().splitlines() == [
      'step 10/100 (10%) | loss 2.346 loss_a 1',
      'step 30/100 (30%) | loss 2 | 5.00 steps/s 40.0 samples/s | ETA 0m14s']
  quiet = io.StringIO()
  other = metric_writer.MetricWriter(str(tmp_path / 'other'), total_steps=100, enabled=False,
                                     stream=quiet)
  other.write_scalars(1, {'loss': 1.0})
  other.progress(1, {'loss': 1.0}, samples_per_step=8)
  other.close()
  assert not quiet.getvalue() and not (tmp_path / 'other').exists()
