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
