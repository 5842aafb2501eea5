"""avloc.platform: the CPU defaults are appended to XLA_FLAGS only where jax will run on
the CPU, before it starts, and they reach the compiler."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from avloc import platform

_FLAG = platform.CPU_XLA_FLAGS[0]


def test_flags_appended_not_replaced():
  assert platform.with_cpu_flags('') == _FLAG
  assert platform.with_cpu_flags('--xla_force_host_platform_device_count=4') == (
      f'--xla_force_host_platform_device_count=4 {_FLAG}')
  own = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
  assert platform.with_cpu_flags(own) == own


@pytest.mark.parametrize('platforms, plugins, expected', [
    ('', [], True),
    ('', ['jax_cuda12_plugin'], False),
    ('', ['libtpu'], False),
    ('cpu', ['jax_cuda12_plugin'], True),
    ('cuda,cpu', [], False),
    ('tpu', [], False),
])
def test_cpu_is_default(monkeypatch, platforms, plugins, expected):
  assert jax.config.jax_platforms is None  # so the environment decides
  monkeypatch.setenv('JAX_PLATFORMS', platforms)
  monkeypatch.setattr(platform, '_accelerator_plugins', lambda: plugins)
  assert platform.cpu_is_default() is expected


def test_test_session_runs_with_the_cpu_defaults():
  """conftest's fake-device flag kept, ours appended, and the compiler applies it: the
  weight-gradient convolution is XLA's own, not an XNNPACK fusion."""
  flags = os.environ['XLA_FLAGS']
  assert '--xla_force_host_platform_device_count=4' in flags and _FLAG in flags
  assert 'convolutions outside XNNPACK' in platform.describe()
  x, w = jnp.ones((2, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  conv = lambda w, x: jax.lax.conv_general_dilated(  # noqa: E731
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  grad = jax.jit(jax.grad(lambda w, x: jnp.sum(conv(w, x) ** 2)))
  ours = grad.lower(w, x).compile().as_text()
  default = grad.lower(w, x).compile(compiler_options=platform.XNNPACK_CONVOLUTIONS).as_text()
  assert ours.count('__ynn_fusion') < default.count('__ynn_fusion')


@pytest.mark.parametrize('env, expected', [
    ({}, f'--xla_force_host_platform_device_count=2 {_FLAG}'),
    ({'JAX_PLATFORMS': 'cuda'}, '--xla_force_host_platform_device_count=2'),
])
def test_import_configures_a_fresh_process(env, expected):
  code = 'import os, avloc; print(os.environ["XLA_FLAGS"])'
  environ = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  environ.update(env, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', code], env=environ, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == expected


def _fresh_process(code: str, **env) -> str:
  environ = {k: v for k, v in os.environ.items()
             if k not in ('AVLOC_KEEP_FREED_MEMORY', 'JAX_CPU_ENABLE_ASYNC_DISPATCH')}
  environ.update(env)
  return subprocess.run([sys.executable, '-c', code], env=environ, check=True,
                        capture_output=True, text=True).stdout.strip()


# glibc's own account (malloc_info) of the arenas and mappings that a 256 MB allocation on
# the main thread, held, and a 74 KB one (oneDNN's sgemm scratch) on another thread add.
_ARENAS = '''
import ctypes, re, tempfile, threading
import avloc
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.fopen.restype = ctypes.c_void_p
def arenas_and_mappings():
  with tempfile.NamedTemporaryFile(suffix='.xml') as f:
    stream = ctypes.c_void_p(libc.fopen(f.name.encode(), b'w'))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    info = open(f.name).read()
  return (len(re.findall('<heap nr=', info)),
          int(re.search(r'<total type="mmap" count="(\\d+)"', info).group(1)))
arenas, mappings = arenas_and_mappings()
big = libc.malloc(256 << 20)
thread = threading.Thread(target=lambda: libc.free(ctypes.c_void_p(libc.malloc(74176))))
thread.start()
thread.join()
after = arenas_and_mappings()
print(after[0] - arenas, after[1] - mappings)
'''


def test_glibc_keeps_large_buffers_in_the_heap_and_threads_in_their_own_arenas():
  """A large buffer comes from the main heap, not a mapping of its own that freeing it
  would unmap; another thread allocates from an arena of its own (with one for all, the
  XLA thread pool's scratch allocations wait on its lock: 9-13 % of a paper-size step)."""
  assert _fresh_process(_ARENAS) == '1 0'  # the thread's arena, no mapping
  assert _fresh_process(_ARENAS, AVLOC_KEEP_FREED_MEMORY='0') == '1 1'  # glibc's defaults


# Page faults of a jitted call whose 256 MB temporary is allocated afresh each call: the
# median over calls 3 to 8. (On a loaded machine one of those may fault 65k pages with
# avloc's settings too, when a smaller block took part of the freed one and the heap had
# to grow; the first two calls grow it.)
_STEP_FAULTS = '''
import resource, statistics
import avloc, jax, jax.numpy as jnp
from avloc import platform
@jax.jit
def step(x):
  y = x[:, None, :] * jnp.arange(1024.)[None, :, None]  # [64, 1024, 1024]: 256 MB
  return jnp.sum(jnp.sin(y), axis=1)
x = jnp.ones((64, 1024))
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(statistics.median(faults[2:])), 'calling thread' in platform.describe())
'''


@pytest.mark.parametrize('env, reused', [
    ({}, True),
    ({'AVLOC_KEEP_FREED_MEMORY': '0'}, False),
])
def test_a_steps_buffers_are_reused_without_page_faults(env, reused):
  """Run on the calling thread, the step's buffers come from the main heap, which keeps
  them; with glibc's defaults they are mapped anew each call (65k pages for 256 MB).
  (With jax's asynchronous dispatch they are allocated on a thread whose arena maps them
  anew, 131k faults for 512 MB here, but whether a call is dispatched to another thread
  is jax's choice: not asserted.)"""
  faults, described = _fresh_process(_STEP_FAULTS, **env).split()
  assert (int(faults) < 5_000) is reused and (int(faults) > 60_000) is not reused
  assert described == str(reused)


def test_the_users_dispatch_setting_is_left_alone():
  _, described = _fresh_process(_STEP_FAULTS, JAX_CPU_ENABLE_ASYNC_DISPATCH='true').split()
  assert described == 'False'
