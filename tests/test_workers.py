"""Worker processes end with their parent (avloc/data/workers.py)."""

import os
import subprocess
import sys
import time

from avloc.data import workers
from tests.test_faults_processes import REPO, _running, _until

# A parent that starts one worker (which watches it, with Grain's extra arguments) and
# prints the worker's pid.
_PARENT = '''
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, '-c', """
import sys, time
from avloc.data import workers
workers.watch_parent(int(sys.argv[1]), 0, 2)
print('watching', flush=True)
time.sleep(60)
""", str(os.getpid())])
print(worker.pid, flush=True)
time.sleep(60)
'''


def test_a_worker_ends_within_a_poll_of_its_parents_death():
  parent = subprocess.Popen([sys.executable, '-c', _PARENT], cwd=REPO, text=True,
                            stdout=subprocess.PIPE)
  try:
    worker = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == 'watching'
    assert _running(worker)
    parent.kill()
    parent.wait()
    killed = time.monotonic()
    assert _until(lambda: not _running(worker), timeout=workers.POLL_SECONDS + 5)
    assert time.monotonic() - killed < workers.POLL_SECONDS + 2
  finally:
    parent.kill()


def test_a_worker_started_after_its_parent_died_exits_at_once():
  result = subprocess.run(
      [sys.executable, '-c', 'from avloc.data import workers\n'
       f'workers.watch_parent({os.getpid() + 10**6})\nprint("still running")'],
      cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 1 and 'still running' not in result.stdout
