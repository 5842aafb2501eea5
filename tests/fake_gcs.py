"""An offline stand-in for Cloud Storage, for tests of gs:// run paths.

gs:// paths reach it the way they reach a bucket on a TPU VM with gcsfs installed:
`etils.epath` -> epath's fsspec backend -> the fsspec filesystem registered for 'gcs'.
Here that filesystem is fsspec's in-memory one with GCS's behaviour where it matters:
bucket paths without a leading slash, and objects that cannot be appended to. It lives
in this process only (no input worker processes).
"""

import importlib

import fsspec
import pytest
from etils.epath import backend, gpath
from fsspec.implementations.memory import MemoryFileSystem

_REGISTRY = importlib.import_module('fsspec.registry')


class FakeGCS(MemoryFileSystem):
  protocol = ('gs', 'gcs')
  root_marker = ''
  store = {}  # 'bucket/path' -> file, this class's own (MemoryFileSystem shares one)
  pseudo_dirs = ['']

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ('gs://', 'gcs://'):
      path = path.removeprefix(prefix)
    return path.rstrip('/')

  def _open(self, path, mode='rb', **kwargs):
    if 'a' in mode:
      raise NotImplementedError(f'{path}: GCS objects cannot be appended to')
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def gcs(monkeypatch):
  """gs:// paths served by FakeGCS for one test; yields its object store
  {'bucket/path': file}."""
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)  # epath's fsspec backend
  for name in ('gs', 'gcs'):
    monkeypatch.setitem(_REGISTRY._registry, name, FakeGCS)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = ['']
  yield FakeGCS.store
  FakeGCS.store.clear()
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
