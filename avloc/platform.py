"""Per-platform XLA settings that make avloc faster without changing what it computes.

XLA:CPU (jax 0.10.2 to 0.12) hands every convolution to an XNNPACK ("YNN") fusion.
Forward and input-gradient convolutions run as fast there as on XLA's own (Eigen) path,
but weight-gradient convolutions 3-4x slower, and less accurately (relative error
against float64 ~4.5e-6 instead of ~4e-7). On CPU avloc therefore leaves convolutions
out of XNNPACK (`CPU_XLA_FLAGS`; dots and reductions stay there): the paper-size JSA
train step gets 1.3-1.5x faster on 2 cores of one VM and 1.01x on an AVX-512 EPYC one
(benchmarks/vs_official.py --changes, benchmarks/RESULTS.md).

XLA:CPU also allocates each step's buffers afresh (hundreds of MB to GBs for the paper
models, above glibc's 32 MB ceiling for reusing freed blocks), so glibc maps them anew
and the kernel zero-fills every page: ~280k page faults and ~12% of the CPU time of a
paper-size JSA step. On Linux with glibc, avloc therefore makes the allocator keep freed
memory (`keep_freed_memory`: no mmap, no trimming; the process then holds on to its peak
memory, which a training step reaches every step anyway), and has jax run a step on the
thread that calls it (`jax_cpu_enable_async_dispatch` off) instead of a thread of its
own: glibc gives every thread an arena of its own, and only the main thread's grows to
any size without new mappings (another thread's allocation beyond 64 MB is mapped anew
whatever M_MMAP_MAX says), so the step's buffers must be allocated on the main thread.
Threads keep their own arenas: with one for all, the XLA thread pool's ~41k scratch
allocations per paper-size step (oneDNN's sgemm under XLA's convolutions, 74 KB each)
wait on its lock and search its fragmented heap, 9-13% of the step's CPU time on an
AVX-512 CPU. AVLOC_KEEP_FREED_MEMORY=0 in the environment leaves glibc's defaults and
jax's asynchronous dispatch; JAX_CPU_ENABLE_ASYNC_DISPATCH, if set, decides the latter.

All three have to happen before jax starts its backends (threads, flags, dispatch), so
`configure()` runs when avloc is imported and decides the platform from what it can see
then: the first of JAX_PLATFORMS (environment or jax.config) if set, else the CPU unless
a GPU or TPU plugin of jax is installed. It appends to XLA_FLAGS (never replaces it), does
nothing on a machine that may run on a GPU or TPU, and leaves XLA_FLAGS alone when it
already sets the same option (`--xla_cpu_experimental_ynn_fusion_type=individual_dot,
individual_convolution,reduce` restores XLA's default). Imported after jax has started,
avloc applies none of them; `describe()` says what is in effect.
"""

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

_YNN_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
# Convolutions out of XNNPACK fusions on XLA:CPU (a delta on XLA's default set).
CPU_XLA_FLAGS = (f'--{_YNN_OPTION}=-individual_convolution',)
# XLA:CPU's default fusion set, as a per-compile option (`.compile(compiler_options=...)`):
# benchmarks use it to time the default next to `CPU_XLA_FLAGS` in one process.
XNNPACK_CONVOLUTIONS = {_YNN_OPTION: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,'
                                     'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                                     'LIBRARY_FUSION_TYPE_REDUCE'}


def _requested_platforms() -> str:
  jax = sys.modules.get('jax')
  configured = getattr(getattr(jax, 'config', None), 'jax_platforms', None) if jax else None
  return (configured or os.environ.get('JAX_PLATFORMS', '')).strip().lower()


def _accelerator_plugins() -> list[str]:
  """Installed jax plugins (CUDA, ROCm, ...) and libtpu."""
  found = [entry.name for entry in importlib.metadata.entry_points(group='jax_plugins')]
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    found += [module.name for module in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  if importlib.util.find_spec('libtpu') is not None:
    found.append('libtpu')
  return found


def cpu_is_default() -> bool:
  """Whether jax will run on the CPU, as far as can be told before its backends start."""
  requested = _requested_platforms()
  if requested:
    return requested.split(',')[0].strip() == 'cpu'
  return not _accelerator_plugins()


def _backends_started() -> bool:
  bridge = sys.modules.get('jax._src.xla_bridge')
  return bool(bridge and getattr(bridge, 'backends_are_initialized', lambda: False)())


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_ASYNC_DISPATCH = 'jax_cpu_enable_async_dispatch'
_kept_freed_memory = False
_dispatches_synchronously = False


def keep_freed_memory() -> bool:
  """glibc only: allocations never come from fresh mappings where the arena can grow
  instead (no mmap), and freed memory is never returned to the system (no trimming), so
  that large buffers are reused without page faults. True if glibc accepted it."""
  global _kept_freed_memory
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement  (glibc, not musl)
  except (OSError, AttributeError):
    return False
  _kept_freed_memory = all(libc.mallopt(parameter, value) == 1 for parameter, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))  # -1: never trim
  return _kept_freed_memory


def with_cpu_flags(flags: str) -> str:
  """XLA_FLAGS `flags` with CPU_XLA_FLAGS appended, unless they set the option already."""
  if _YNN_OPTION in flags:
    return flags
  return ' '.join([flags, *CPU_XLA_FLAGS]).strip()


def configure(environ=os.environ) -> None:
  """On a CPU machine, before jax starts: appends CPU_XLA_FLAGS to XLA_FLAGS, makes
  glibc keep freed memory and jax run steps on the calling thread (see above)."""
  global _dispatches_synchronously
  if _backends_started() or not cpu_is_default():
    return
  environ['XLA_FLAGS'] = with_cpu_flags(environ.get('XLA_FLAGS', ''))
  if (environ.get('AVLOC_KEEP_FREED_MEMORY', '1') != '0' and keep_freed_memory()
      and _ASYNC_DISPATCH.upper() not in environ):
    import jax  # pylint: disable=g-import-not-at-top  (importing it starts no backend)
    jax.config.update(_ASYNC_DISPATCH, False)
    _dispatches_synchronously = True


def describe() -> str:
  """One line for benchmark tables: the settings in effect."""
  flags = os.environ.get('XLA_FLAGS', '')
  if all(flag in flags for flag in CPU_XLA_FLAGS):
    described = ['XLA:CPU convolutions outside XNNPACK']
  elif _YNN_OPTION in flags:
    described = [f'XLA_FLAGS sets {_YNN_OPTION}']
  else:
    described = ['XLA default fusions']
  if _kept_freed_memory:
    described.append('glibc keeps freed memory')
  if _dispatches_synchronously:
    described.append('steps run on the calling thread')
  return ', '.join(described)
