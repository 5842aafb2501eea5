"""Training checkpoints and inference exports (avloc/checkpointing.py): round trips of the
state, the input position and the config, retention, unrestorable checkpoints moved
aside, the best export, and what `load_inference` accepts."""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avloc import checkpointing, sharding


def _state(value: float) -> dict:
  mesh = sharding.make_mesh()
  state = {'params': {'w': jnp.full((4, 3), value)}, 'batch_stats': {'mean': jnp.arange(3.0)},
           'step': jnp.asarray(int(value), jnp.int32)}
  return jax.device_put(state, sharding.replicated(mesh))


def _abstract(state):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _iterator(consumed: int):
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(consumed):
    next(iterator)
  return iterator


CONFIG = ml_collections.ConfigDict({'method': 'toy', 'train': {'batch_size': 4}})


def test_state_input_position_and_config_round_trip_and_the_last_keep_stay(tmp_path):
  checkpointer = checkpointing.TrainCheckpointer(str(tmp_path), keep=2)
  assert checkpointer.latest_step is None
  for step in (1, 2, 3):
    assert checkpointer.save(step, _state(step), _iterator(10 * step), CONFIG)
  assert not checkpointer.save(3, _state(3), _iterator(30), CONFIG)  # already saved
  checkpointer.close()
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '3']

  resumed = checkpointing.TrainCheckpointer(str(tmp_path), keep=2)
  iterator = _iterator(0)
  state, config, step = resumed.restore(_abstract(_state(0)), iterator, log=print)
  resumed.close()
  assert step == 3 and config == CONFIG.to_dict()
  np.testing.assert_array_equal(state['params']['w'], np.full((4, 3), 3.0))
  assert int(state['step']) == 3
  assert next(iterator) == 30  # the input pipeline continues where it was saved


def test_a_checkpoint_that_does_not_restore_is_moved_aside(tmp_path):
  checkpointer = checkpointing.TrainCheckpointer(str(tmp_path), keep=3, async_save=False)
  for step in (1, 2):
    checkpointer.save(step, _state(step), _iterator(step), CONFIG)
  checkpointer.close()
  newest = tmp_path / 'checkpoints' / '2' / 'state'
  for path in newest.rglob('*'):
    if path.is_file():
      path.write_bytes(b'garbage')
  logs = []
  resumed = checkpointing.TrainCheckpointer(str(tmp_path), keep=3)
  state, _, step = resumed.restore(_abstract(_state(0)), _iterator(0), log=logs.append)
  resumed.close()
  assert step == 1 and float(state['params']['w'][0, 0]) == 1.0
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1', '2.unrestorable']
  assert logs[0].startswith(f'{tmp_path}/checkpoints/2: cannot restore this checkpoint')
  assert 'moved to 2.unrestorable' in logs[-1]


def test_the_export_keeps_the_best_evaluation_and_load_inference_reads_it(tmp_path):
  exporter = checkpointing.Exporter(str(tmp_path), best_metric='test/ap50')
  host = jax.device_get
  for step, score in ((1, 0.5), (2, 0.3)):
    exporter.export(step, host(_state(step)), CONFIG, {'test/ap50': score, 'test/auc': 0.1})
  with pytest.raises(KeyError, match="'test/ap50' is not among the evaluation metrics"):
    exporter.export(3, host(_state(3)), CONFIG, {'test/auc': 0.9})
  exporter.close()
  assert [p.name for p in (tmp_path / 'export').iterdir()] == ['1']
  for path in (tmp_path, tmp_path / 'export', tmp_path / 'export' / '1'):
    config, variables = checkpointing.load_inference(str(path))
    assert config.method == 'toy' and float(variables['params']['w'][0, 0]) == 1.0


def test_load_inference_falls_back_to_the_training_checkpoint(tmp_path):
  checkpointer = checkpointing.TrainCheckpointer(str(tmp_path), keep=1, async_save=False)
  checkpointer.save(4, _state(4), _iterator(0), CONFIG)
  checkpointer.close()
  config, variables = checkpointing.load_inference(str(tmp_path))
  assert set(variables) == {'params', 'batch_stats'} and config == CONFIG
  assert isinstance(variables['params']['w'], np.ndarray)  # host arrays


def test_load_inference_names_what_is_wrong_with_a_path(tmp_path, gcs):
  with pytest.raises(ValueError, match='no checkpoint given'):
    checkpointing.load_inference('')
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}/none: no such checkpoint'):
    checkpointing.load_inference(str(tmp_path / 'none'))
  # A bucket path reaches epath as it is (not made into a local path).
  with pytest.raises(FileNotFoundError, match='^gs://bucket/run: no such checkpoint'):
    checkpointing.load_inference('gs://bucket/run')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match='holds no avloc checkpoint'):
    checkpointing.load_inference(str(tmp_path / 'empty'))
