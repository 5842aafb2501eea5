"""Shared pieces of the benchmark scripts: timing, the matmul peak, model set-up, tables."""

import dataclasses
import os
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from avloc import methods, sharding  # noqa: E402  pylint: disable=g-import-not-at-top


def timed(fn, *args, repeats: int = 3, warmup: int = 1) -> float:
  """Mean wall time of fn(*args) in seconds, after `warmup` calls, waiting on results."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / repeats


def matmul_peak(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul on the default device: the achievable peak."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x: x @ x)
  return 2 * size**3 / timed(matmul, a, repeats=repeats)


def compiled_flops(jitted, *args) -> float:
  """FLOPs of one call from XLA's cost analysis of the compiled function."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  if isinstance(analysis, list):  # older jax returns one dict per device program
    analysis = analysis[0]
  return float(analysis.get('flops', float('nan')))


def peak_host_memory_gib() -> float:
  """Peak resident memory of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_memory_gib() -> float:
  """Peak bytes in use on device 0 where the backend reports it (GPU/TPU), else NaN."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return peak / 2**30 if peak else float('nan')


@dataclasses.dataclass
class TrainSetup:
  mesh: object
  state: object
  step: object
  batch: dict


def train_setup(config, batch_size: int, devices=None, seed: int = 0) -> TrainSetup:
  """Train state, compiled-on-first-call step and a random batch for `config`."""
  from avloc import train  # pylint: disable=g-import-not-at-top  (pulls in the data stack)
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh(devices)
  model = method.build_model(config)
  tx = train.make_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  state = train.create_train_state(config, model, tx, mesh)
  step = train.make_train_step(config, model, method, tx, mesh, steps_per_epoch=1)
  shapes = train.input_shapes(config, batch_size, train=True)
  rng = np.random.default_rng(seed)
  batch = sharding.global_batch({
      'image': rng.integers(0, 256, shapes['image'].shape).astype(np.uint8),
      'spectrogram': rng.normal(size=shapes['spectrogram'].shape).astype(np.float32),
  }, mesh)
  return TrainSetup(mesh, state, step, batch)


def machine() -> str:
  device = jax.devices()[0]
  return (f'{platform.node() or "host"}: {os.cpu_count()} CPU cores, '
          f'{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}')


def print_table(title: str, header: list[str], rows: list[list]) -> None:
  cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
  print(f'\n{title}')
  print(' | '.join(c.rjust(w) for c, w in zip(cells[0], widths)))
  print('-+-'.join('-' * w for w in widths))
  for row in cells[1:]:
    print(' | '.join(c.rjust(w) for c, w in zip(row, widths)))


def _cell(value) -> str:
  if isinstance(value, float):
    return f'{value:.3g}' if abs(value) < 1000 else f'{value:,.0f}'
  return str(value)
