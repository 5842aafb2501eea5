"""benchmarks/common.py's machine description: the CPU line every table carries."""

import importlib.util
import os
import platform

import pytest

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     'benchmarks', 'common.py')


@pytest.fixture(scope='module')
def common():
  spec = importlib.util.spec_from_file_location('benchmark_common', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('flags,expected', [
    ('fpu sse2 avx avx2 fma avx512f avx512bw', 'AMD EPYC, AVX-512'),
    ('fpu sse2 avx avx2 fma', 'AMD EPYC, AVX2'),
    ('fpu sse2', 'AMD EPYC'),
])
def test_cpu_model_names_the_widest_vector_isa(common, tmp_path, flags, expected):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(f'processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n'
                     f'flags\t\t: {flags}\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n')
  assert common.cpu_model(str(cpuinfo)) == expected


def test_cpu_model_without_proc_cpuinfo(common, tmp_path):
  assert common.cpu_model(str(tmp_path / 'missing')) == (platform.processor() or 'unknown CPU')
