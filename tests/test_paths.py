"""Run paths (avloc/paths.py): local paths as before, URIs through etils.epath; atomic
writes locally and on a (fake, offline) Cloud Storage bucket."""

import json
import os

import pytest
from etils import epath

from avloc import evaluate, experiment, paths, train
from avloc.data import tfrecord
from tests import linear_method, splits


def test_local_paths_are_expanded_and_absolute_uris_are_kept(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert str(paths.resolve('runs/a')) == str(tmp_path / 'runs' / 'a')
  assert str(paths.resolve('~/data')) == str(tmp_path / 'home' / 'data')
  assert str(paths.resolve('gs://bucket/runs/a')) == 'gs://bucket/runs/a'
  assert isinstance(paths.resolve('gs://bucket/x'), epath.Path)
  assert paths.is_local('/tmp/x') and paths.is_local('x') and not paths.is_local('gs://b/x')


def test_a_local_write_replaces_the_file_whole_or_not_at_all(tmp_path):
  target = tmp_path / 'table.csv'
  paths.write_bytes_atomic(target, [b'a,', b'b\n'])
  assert target.read_bytes() == b'a,b\n'

  def broken():
    yield b'half'
    raise OSError('disk full')

  with pytest.raises(OSError, match='disk full'):
    paths.write_bytes_atomic(target, broken())
  assert target.read_bytes() == b'a,b\n'  # the old file, untouched
  assert os.listdir(tmp_path) == ['table.csv']  # no temporary left


def test_an_object_store_write_is_one_upload(gcs):
  paths.write_bytes_atomic('gs://bucket/run/eval.json', [b'{"a": ', b'1}'])
  assert list(gcs) == ['bucket/run/eval.json']  # no temporary object, no rename
  assert epath.Path('gs://bucket/run/eval.json').read_bytes() == b'{"a": 1}'


def _upload(directory, uri: str) -> str:
  for path in epath.Path(directory).iterdir():
    (epath.Path(uri) / path.name).write_bytes(path.read_bytes())
  return uri


def test_a_run_reads_its_splits_from_a_bucket_and_evaluates_into_one(gcs, tmp_path):
  """Data root and evaluation outputs in a (fake) bucket: the manifest check, the TFRecord
  reads of training and evaluation, the tables, JSON, CSV and PNGs all go through epath
  (the training checkpoints stay local: Orbax writes gs:// through TensorStore)."""
  linear_method.register()
  config = linear_method.get_config()
  config.data.update(root='gs://bucket/data', train_split='toy_train')
  config.train.update(max_steps=2, checkpoint_every_steps=2)
  config.eval.update(splits='boxes', batch_size=4)
  _upload(splits.write_split(tmp_path / 'toy_train', 16), 'gs://bucket/data/toy_train')
  _upload(splits.write_split(tmp_path / 'boxes', 6, gt=tfrecord.GT_BOXES), 'gs://bucket/data/boxes')
  dirs = experiment.resolve_splits(config, ['toy_train', 'boxes'])
  assert dirs == {'toy_train': 'gs://bucket/data/toy_train', 'boxes': 'gs://bucket/data/boxes'}
  workdir = experiment.check_workdir('gs://bucket/run')
  assert workdir == 'gs://bucket/run' and not list(epath.Path(workdir).iterdir())  # probe gone
  evaluator = evaluate.Evaluator(config, {'boxes': dirs['boxes']}, workdir, log=lambda _: None)
  train.train(config, str(tmp_path / 'run'), dirs, evaluator, log=lambda _: None)
  record = json.loads(epath.Path('gs://bucket/run/eval_boxes.json').read_text())
  assert [row['model'] for row in record['history']] == ['center prior', 'linear step 0',
                                                          'linear step 2']
  assert record['directory'] == 'gs://bucket/data/boxes'
  assert 'bucket/run/eval_boxes.csv' in gcs
  assert {'bucket/run/eval/boxes_step0.png', 'bucket/run/eval/boxes_step2.png'} <= set(gcs)
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()


def test_the_synthetic_benchmark_needs_a_local_data_root():
  config = linear_method.get_config()
  config.data.root = 'gs://bucket/data'
  with pytest.raises(ValueError, match='generated under a local data root only'):
    experiment.resolve_splits(config, ['synthetic_train'])
