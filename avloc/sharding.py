"""Device mesh, batch placement and multi-host start-up for data-parallel training.

One mesh axis, 'data', spans every device of every process: parameters are replicated
and batches are split along their leading axis. Losses that contrast samples (InfoNCE,
k-reciprocal neighbours, AVC negatives) see the global batch: under `jax.jit` XLA inserts
the collectives, so an N-device step computes the same function as a 1-device step.
"""

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avloc import config as config_lib

DATA_AXIS = 'data'

def initialize_distributed(mode: str) -> None:
  """Calls `jax.distributed.initialize()` for multi-process runs.

  mode 'auto' initializes when a multi-process launcher is detected (a TPU pod slice with
  several hosts, SLURM or MPI with several tasks, or an explicit coordinator address);
  'on' always, 'off' never. Must run before any other JAX call. Without a launcher the
  processes are described by JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID.
  """
  if mode not in ('auto', 'on', 'off'):
    raise ValueError(f"--distributed must be 'auto', 'on' or 'off', got {mode!r}")
  if mode == 'off':
    return
  if mode == 'auto':
    hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
    several = (
        'JAX_COORDINATOR_ADDRESS' in os.environ
        or len([h for h in hosts.split(',') if h]) > 1
        or int(os.environ.get('SLURM_NTASKS', '1')) > 1
        or int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
    )
    if not several:
      return
  explicit = {name: int(os.environ[var]) for name, var in (
      ('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID'))
              if var in os.environ}
  jax.distributed.initialize(**explicit)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices (of all processes) with the 'data' axis."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str) -> None:
  if global_batch_size % mesh.size or global_batch_size % jax.process_count():
    raise config_lib.ConfigError(
        f'config.{field}={global_batch_size} must be divisible by the number of devices '
        f'({mesh.size}) and processes ({jax.process_count()})')


def process_slice(global_size: int) -> slice:
  """This process's contiguous share of a global batch of `global_size` samples."""
  per_process = global_size // jax.process_count()
  start = jax.process_index() * per_process
  return slice(start, start + per_process)


def out_of_shared_memory(value) -> np.ndarray:
  """`value` as a plain ndarray: arrays that Grain's worker processes hand over in shared
  memory (ndarray subclasses) are copied out, so that nothing still referencing them
  keeps their segments alive past the end of the run ("leaked shared_memory objects")."""
  return value if type(value) is np.ndarray else np.array(value)  # pylint: disable=unidiomatic-typecheck


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's share of a batch (numpy) -> global jax.Arrays sharded on 'data'.

  Arrays in Grain's shared memory are copied out first (`out_of_shared_memory`): XLA:CPU
  would alias them."""
  sharding = batch_sharded(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, out_of_shared_memory(value))
          for name, value in local_batch.items()}
