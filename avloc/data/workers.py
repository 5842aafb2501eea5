"""Worker processes that end when their parent dies.

Grain's `mp_prefetch` input workers and the converters' process pool are spawned children:
when the parent is killed (SIGKILL, the OOM killer) nothing tells them, and they keep
decoding batches (~0.5 GB each) or writing shards. `watch_parent`, run first in every
worker, starts a daemon thread that ends the worker within `POLL_SECONDS` of its parent's
death (the worker is then re-parented, so `os.getppid()` changes). A parent-death signal
(prctl PR_SET_PDEATHSIG) would be immediate, but it fires when the *thread* that started
the child exits, and Grain starts its workers from its own prefetch threads.

`close` stops an input iterator's workers and frees the shared memory of the batches it
had in flight before the process may exit (a preempted run exits right after).
"""

import gc
import os
import threading
import time

import grain

POLL_SECONDS = 0.5


def watch_parent(parent_pid: int, *unused) -> None:
  """Ends this process (exit status 1) as soon as `parent_pid` is no longer its parent.
  Extra arguments are ignored (Grain passes the worker index and count)."""
  del unused
  if os.getppid() != parent_pid:
    os._exit(1)  # pylint: disable=protected-access

  def watch():
    while os.getppid() == parent_pid:
      time.sleep(POLL_SECONDS)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name='avloc-watch-parent', daemon=True).start()


def close(iterator: grain.DatasetIterator) -> None:
  """Closes a Grain iterator: its worker processes stop, and the shared memory of the
  batches it had in flight (in its buffers, in the workers' queues, and in the reference
  cycles through which its finished prefetch threads still hold their last batches) is
  closed and unlinked before this returns. Grain unlinks segments on a background thread
  (`SharedMemoryArray`'s asynchronous deletion: one thread, whose private pool is handed
  a no-op that runs after them; a Grain without it is not waited for); a process exiting
  before that thread is done leaves the segments to multiprocessing's resource tracker
  ("leaked shared_memory objects"): tests/test_faults_processes.py."""
  iterator.close()
  gc.collect()
  deletions = getattr(grain.multiprocessing.SharedMemoryArray, '_del_thread_pool', None)
  if deletions is not None:
    deletions.apply(int)
