"""Progress lines (avloc/progress.py), one format for training, conversion and prediction."""

import pytest

from avloc import progress


@pytest.fixture
def clock(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
  return now


def test_rates_and_eta_are_measured_since_the_previous_line(clock):
  lines = progress.Progress('step', 1000, 'steps', timed_from_start=False,
                            per_unit={'samples': 32})
  clock[0] += 30.0  # compilation: the first line shows no rate
  assert lines.line(10, 'loss 2.5') == 'step 10/1000 (1%) | loss 2.5'
  clock[0] += 20.0
  assert lines.line(110, 'loss 2') == (
      'step 110/1000 (11%) | loss 2 | 5.00 steps/s 160.0 samples/s | ETA 2m58s')
  clock[0] += 3600.0
  assert lines.line(210) == 'step 210/1000 (21%) | 0.03 steps/s 0.9 samples/s | ETA 7h54m'


def test_work_timed_from_the_start_has_a_rate_on_its_first_line(clock):
  shards = progress.Progress('vggss: shards written', 8, 'shards', done=2)
  clock[0] += 4.0
  assert shards.line(4) == 'vggss: shards written 4/8 (50%) | 0.50 shards/s | ETA 0m08s'


def test_format_duration():
  assert progress.format_duration(0) == '0m00s'
  assert progress.format_duration(75.9) == '1m15s'
  assert progress.format_duration(3 * 3600 + 125) == '3h02m'
  assert progress.format_duration(-5) == '0m00s'
