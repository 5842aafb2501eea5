"""Run paths (workdirs, checkpoints, data roots, weights, exports) as `etils.epath.Path`s.

A local path behaves as it always did (`~` expanded, made absolute); a URI of an object
store that epath knows (`gs://bucket/...`, `s3://...`) is kept as given and reached
through epath's backends: TensorFlow's gfile when TensorFlow is installed, else fsspec
(gs:// needs `pip install gcsfs`, s3:// `s3fs`). Orbax and Grain take these paths as they
are (Orbax writes arrays to gs:// through TensorStore's own GCS driver).
"""

import os

from etils import epath

TMP_INFIX = '.tmp-'  # local temporaries: <path>.tmp-<pid of the writer>


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` names the local file system (no `scheme://` prefix)."""
  return '://' not in os.fspath(path)


def resolve(path: epath.PathLike) -> epath.Path:
  """A run path: local ones expanded and made absolute, URIs unchanged."""
  if is_local(path):
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  return epath.Path(path)


def write_bytes_atomic(path: epath.PathLike, chunks) -> None:
  """Writes the byte `chunks` so that `path` is either absent, as before, or complete:
  locally through a temporary `<path>.tmp-<pid>`, synced, then renamed into place (the
  temporary of a killed writer is left for avloc.data.tfrecord.remove_stale_temporaries);
  on an object store as one upload (an object appears whole or not at all)."""
  path = epath.Path(path)
  if not is_local(path):
    path.write_bytes(b''.join(chunks))
    return
  tmp = f'{path}{TMP_INFIX}{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      for chunk in chunks:
        f.write(chunk)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)

