"""Shared pieces of the benchmark scripts: timing, the matmul peak, model set-up, tables."""

import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from avloc import methods, sharding  # noqa: E402  pylint: disable=g-import-not-at-top
from avloc import platform as avloc_platform  # noqa: E402  pylint: disable=g-import-not-at-top
from avloc.models import pooling  # noqa: E402  pylint: disable=g-import-not-at-top


def timed(fn, *args, repeats: int = 3, warmup: int = 1) -> float:
  """Median wall time of fn(*args) in seconds over `repeats` calls after `warmup` calls,
  waiting on results."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


@dataclasses.dataclass
class Timing:
  """Medians per call: wall seconds, CPU seconds of this process (all its threads) and
  minor page faults."""
  wall: float
  cpu: float
  faults: float


def interleaved(calls: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, Timing]:
  """Times each call, the calls taking turns: after `warmup` rounds, `repeats` rounds of
  one call each, so that a change of machine load hits all of them alike. A call must
  return only when its work is done (jax: block on its results)."""
  samples = {name: [] for name in calls}
  for round_ in range(warmup + repeats):
    for name, call in calls.items():
      before = resource.getrusage(resource.RUSAGE_SELF)
      start = time.perf_counter()
      call()
      wall = time.perf_counter() - start
      after = resource.getrusage(resource.RUSAGE_SELF)
      if round_ >= warmup:
        samples[name].append((wall, after.ru_utime + after.ru_stime - before.ru_utime
                              - before.ru_stime, after.ru_minflt - before.ru_minflt))
  return {name: Timing(*(statistics.median(s[i] for s in values) for i in range(3)))
          for name, values in samples.items()}


_RESULT = 'RESULT '


def print_result(result: dict) -> None:
  """A child process's answer to `child_result`: one line of JSON."""
  print(_RESULT + json.dumps(result), flush=True)


def child_result(script: str, argv: list[str], environ: dict) -> dict:
  """Runs `script` with `argv` in a fresh Python process (in the repository root, with
  `environ` added to this process's environment) and returns what it `print_result`ed."""
  out = subprocess.run([sys.executable, os.path.abspath(script), *argv],
                       env={**os.environ, **environ}, cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  return json.loads(next(line[len(_RESULT):] for line in out.splitlines()
                         if line.startswith(_RESULT)))


def timing_result(timing: Timing, described: str) -> dict:
  """`Timing` as `print_result` sends it, with the settings in effect."""
  return {'wall': timing.wall, 'cpu': timing.cpu, 'faults': timing.faults,
          'described': described}


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, to print beside every table."""
  return 'load average ' + ' '.join(f'{x:.2f}' for x in os.getloadavg())


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


# Dense peak FLOP/s per chip for MFU, by device_kind substring (first match wins):
# (float32, bfloat16). float32 is the TF32 tensor-core rate on NVIDIA Ampere and later
# (XLA's default precision for float32 matmuls there), the MXU's rate on TPU (float32
# matmuls run as bfloat16 passes at default precision).
DEVICE_PEAKS = (
    ('H200', (494e12, 989e12)),
    ('H100', (494e12, 989e12)),
    ('A100', (156e12, 312e12)),
    ('L4', (60e12, 121e12)),
    ('A10', (62.5e12, 125e12)),
    ('V100', (15.7e12, 125e12)),
    ('T4', (8.1e12, 65e12)),
    ('TPU v6', (918e12, 918e12)),
    ('TPU v5 lite', (197e12, 197e12)),
    ('TPU v5e', (197e12, 197e12)),
    ('TPU v5', (459e12, 459e12)),
    ('TPU v4', (275e12, 275e12)),
    ('TPU v3', (123e12, 123e12)),
)


def device_peak(dtype: str, device=None) -> float | None:
  """The device's peak FLOP/s for `dtype` ('float32' / 'bfloat16') from DEVICE_PEAKS, or
  None (CPUs, unknown accelerators: measure a matmul instead, `matmul_peak`)."""
  device = device or jax.devices()[0]
  if device.platform == 'cpu':
    return None
  for name, (float32, bfloat16) in DEVICE_PEAKS:
    if name.lower() in device.device_kind.lower():
      return bfloat16 if dtype == 'bfloat16' else float32
  return None


def peak_flops(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s, what it is): the device table's peak on a known accelerator (MFU),
  else the measured FLOP/s of a large matmul of that dtype (utilization vs matmul)."""
  peak = device_peak(dtype)
  if peak is not None:
    return peak, 'MFU'
  return matmul_peak(dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32), 'util.'


def encoder_gradient(model, variables: dict, field: str):
  """jit(grad) of sum(f(x)^2) over the params for encoder `field` ('image_encoder' or
  'audio_encoder') of `model` in training mode: one encoder's forward + backward."""
  def loss(params, x):
    def forward(module, x):
      return getattr(module, field)(x, train=True)
    out, _ = model.apply({**variables, 'params': params}, x, method=forward,
                         mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss))


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


def k_within_batch(config, batch_size: int):
  """`config` with JSA's `loss.k` (its k-reciprocal neighbours are a top-k over the batch)
  at most `batch_size`, as `vs_official.py` gives the release (reciprocal_k = min(20, B));
  configs without `loss.k` unchanged. For benchmarks at batches below the paper's."""
  if 'k' in config.get('loss', {}):
    config.loss.k = min(config.loss.k, batch_size)
  return config


def train_setup(config, batch_size: int, devices=None, seed: int = 0, variables=None,
                inputs=None) -> TrainSetup:
  """Train state, compiled-on-first-call step and a random batch for `config`; with
  `variables` ({'params', 'batch_stats'}) the state starts from them, with `inputs`
  ({'image': uint8 [B, H, W, 3], 'spectrogram': [B, F, T, 1]}) the batch is those."""
  from avloc import train  # pylint: disable=g-import-not-at-top  (pulls in the data stack)
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh(devices)
  model = method.build_model(config)
  tx = train.make_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  state = train.create_train_state(config, model, tx, mesh)
  if variables is not None:
    # Replicated as the step's outputs are: another sharding would compile the step anew
    # on its second call.
    replicated = sharding.replicated(mesh)
    params = jax.device_put(variables['params'], replicated)
    state = state.replace(params=params,
                          opt_state=jax.jit(tx.init, out_shardings=replicated)(params),
                          batch_stats=jax.device_put(variables['batch_stats'], replicated))
  step = train.make_train_step(config, model, method, tx, mesh, steps_per_epoch=1)
  shapes = train.input_shapes(config, batch_size, train=True)
  rng = np.random.default_rng(seed)
  batch = sharding.global_batch(inputs or {
      'image': rng.integers(0, 256, shapes['image'].shape).astype(np.uint8),
      'spectrogram': rng.normal(size=shapes['spectrogram'].shape).astype(np.float32),
  }, mesh)
  return TrainSetup(mesh, state, step, batch)


class TrainStepCall:
  """One call = one jitted train step on `setup`'s batch; `state` is the latest state
  (the step donates the previous one)."""

  def __init__(self, setup: TrainSetup):
    self.step, self.batch, self.state = setup.step, setup.batch, setup.state

  def __call__(self) -> None:
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def cpu_speedups_off(config, setup: TrainSetup) -> dict[str, Callable[[], None]]:
  """The train step of `setup` with avloc's in-process CPU speed-ups switched off, each
  alone and both: XLA:CPU's default XNNPACK convolutions (a per-compile option) and
  XLA's own max-pool gradient. Names -> `TrainStepCall`s on copies of the state.
  (The process-wide settings, glibc's and jax's dispatch: benchmarks/process_settings.py.)"""
  from avloc import train  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.method)
  model = method.build_model(config)
  tx = train.make_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  variants = {}
  for name, gradient_off, options in (
      ('XNNPACK convolutions (XLA:CPU default)', False,
       avloc_platform.XNNPACK_CONVOLUTIONS),
      ('max-pool gradient of XLA', True, None),
      ('both', True, avloc_platform.XNNPACK_CONVOLUTIONS)):
    state = jax.tree_util.tree_map(lambda x: x.copy(), setup.state)
    context = pooling.windowed_gradient(False) if gradient_off else contextlib.nullcontext()
    with context:
      step = train.make_train_step(config, model, method, tx, setup.mesh, steps_per_epoch=1)
      step = step.lower(state, setup.batch).compile(compiler_options=options)
    variants[name] = TrainStepCall(dataclasses.replace(setup, state=state, step=step))
  return variants


def cpu_model(cpuinfo: str = '/proc/cpuinfo') -> str:
  """The CPU's model name and widest vector ISA (Linux), e.g. 'AMD EPYC, AVX-512': the
  speed ratios against torch move with it (benchmarks/RESULTS.md), so every table says
  which CPU measured it. `platform.processor()` elsewhere."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return platform.processor() or 'unknown CPU'
  fields = {key.strip(): value for key, value in (
      line.split(':', 1) for line in text.splitlines()[:40] if ':' in line)}
  name = fields.get('model name', '').strip() or 'unknown CPU'
  flags = set(fields.get('flags', '').split())
  isa = next((label for flag, label in (('avx512f', 'AVX-512'), ('avx2', 'AVX2'),
                                        ('avx', 'AVX'), ('asimd', 'NEON')) if flag in flags),
             None)
  return f'{name}, {isa}' if isa else name


def machine() -> str:
  device = jax.devices()[0]
  return (f'{platform.node() or "host"}: {os.cpu_count()} CPU cores ({cpu_model()}), '
          f'{jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}')


def parse_seeds(values: list[str], flag: str = 'seeds') -> list[int]:
  """The integers of a --seeds list flag, each once (UsageError naming `flag` if not)."""
  try:
    seeds = [int(value) for value in values]
  except ValueError as e:
    raise app.UsageError(f'--{flag}: integers, comma-separated; got {values}') from e
  if len(set(seeds)) != len(seeds):
    raise app.UsageError(f'--{flag}: each seed once; got {values}')
  return seeds


def seeds_caption(seeds: list[int]) -> str:
  """What a table's cells are over `seeds` (none given: each config's own seed)."""
  if not seeds:
    return "each config's seed"
  return f'seed {seeds[0]}' if len(seeds) == 1 else f'mean (min-max) over seeds {seeds}'


def over_seeds(values, digits: int = 1) -> str:
  """One table cell for a metric (a fraction) measured once per seed, in percent: the
  value of a single run, or 'mean (min-max)' over several; '-' where no run has it
  (None)."""
  present = [100 * v for v in values if v is not None]
  if not present:
    return '-'
  if len(present) == 1:
    return f'{present[0]:.{digits}f}'
  return (f'{statistics.fmean(present):.{digits}f} '
          f'({min(present):.{digits}f}-{max(present):.{digits}f})')


def against_reference(values, reference, digits: int = 1) -> str:
  """One table cell comparing runs with reference runs of the same seeds (fractions, in
  the same seed order): the mean of the differences in percentage points and on how many
  seeds the run is below its reference, e.g. '-12.3 (below at 3 of 3)'."""
  if len(values) != len(reference):
    raise ValueError(f'{len(values)} values against {len(reference)} reference values: '
                     'they pair by seed')
  differences = [100 * (v - r) for v, r in zip(values, reference)]
  below = sum(d < 0 for d in differences)
  return f'{statistics.fmean(differences):+.{digits}f} (below at {below} of {len(differences)})'


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
