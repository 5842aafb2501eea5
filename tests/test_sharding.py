"""Device mesh, batch placement and multi-process start-up (avloc/sharding.py), on the 4
fake CPU devices of tests/conftest.py."""

import jax
import numpy as np
import pytest

from avloc import config as config_lib
from avloc import sharding


def test_one_data_axis_over_every_device_and_the_two_placements():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == jax.device_count() == 4
  batch = {'image': np.arange(8 * 3, dtype=np.float32).reshape(8, 3),
           'label': np.arange(8)}
  placed = sharding.global_batch(batch, mesh)
  for name, array in placed.items():
    np.testing.assert_array_equal(np.asarray(array), batch[name])
    assert array.sharding == sharding.batch_sharded(mesh)
    # each device holds two consecutive samples
    assert sorted(tuple(s.data.shape) for s in array.addressable_shards) == [
        (2,) + batch[name].shape[1:]] * 4
  replicated = jax.device_put(np.ones(3), sharding.replicated(mesh))
  assert all(s.data.shape == (3,) for s in replicated.addressable_shards)


def test_batch_sizes_must_divide_by_the_devices():
  mesh = sharding.make_mesh()
  sharding.check_batch_size(8, mesh, 'train.batch_size')
  with pytest.raises(config_lib.ConfigError, match=r'config.eval.batch_size=6 must be '
                     r'divisible by the number of devices \(4\) and processes \(1\)'):
    sharding.check_batch_size(6, mesh, 'eval.batch_size')


def test_one_process_takes_the_whole_batch():
  assert sharding.process_slice(12) == slice(0, 12)


@pytest.mark.parametrize('environment,expected', [
    ({}, None),
    ({'TPU_WORKER_HOSTNAMES': 'host0'}, None),  # one TPU host
    ({'TPU_WORKER_HOSTNAMES': 'host0,host1'}, {}),
    ({'SLURM_NTASKS': '2'}, {}),
    ({'OMPI_COMM_WORLD_SIZE': '4'}, {}),
    ({'JAX_COORDINATOR_ADDRESS': 'h:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'},
     {'num_processes': 2, 'process_id': 1}),
])
def test_distributed_start_up_only_under_a_multi_process_launcher(
    environment, expected, monkeypatch):
  for name in ('TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE',
               'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  for name, value in environment.items():
    monkeypatch.setenv(name, value)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  sharding.initialize_distributed('auto')
  assert calls == ([] if expected is None else [expected])
  sharding.initialize_distributed('off')
  sharding.initialize_distributed('on')
  assert len(calls) == (1 if expected is None else 2)
  with pytest.raises(ValueError, match="--distributed must be 'auto', 'on' or 'off'"):
    sharding.initialize_distributed('yes')
