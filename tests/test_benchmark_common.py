"""benchmarks/common.py: the machine description every table carries, and the cells of the
multi-seed tables, the benchmarks' configs."""

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


def test_over_seeds_is_the_value_of_one_run_or_mean_and_range_of_several(common):
  assert common.over_seeds([0.1234]) == '12.3'
  assert common.over_seeds([0.10, 0.40, 0.25]) == '25.0 (10.0-40.0)'
  assert common.over_seeds([0.1, 0.2], digits=2) == '15.00 (10.00-20.00)'
  assert common.over_seeds([None, None]) == '-'  # a score the method does not have


def test_against_reference_pairs_the_runs_by_seed(common):
  # seed by seed: -30, +10, -20 percentage points
  assert common.against_reference([0.1, 0.5, 0.2], [0.4, 0.4, 0.4]) == '-13.3 (below at 2 of 3)'
  assert common.against_reference([0.5], [0.5]) == '+0.0 (below at 0 of 1)'
  with pytest.raises(ValueError, match='pair by seed'):
    common.against_reference([0.1, 0.2], [0.3])


@pytest.mark.parametrize('values,message', [
    (['0', 'one'], 'integers'),
    (['1', '2', '1'], 'each seed once'),
])
def test_parse_seeds_names_the_flag(common, values, message):
  with pytest.raises(common.app.UsageError, match=f'--seeds: {message}'):
    common.parse_seeds(values)


def test_seeds_caption(common):
  assert common.seeds_caption([]) == "each config's seed"
  assert common.seeds_caption([3]) == 'seed 3'
  assert common.seeds_caption([0, 1, 2]) == 'mean (min-max) over seeds [0, 1, 2]'


def test_parse_seeds(common):
  assert common.parse_seeds(['2', '0', '-1']) == [2, 0, -1]
  assert not common.parse_seeds([])


def test_k_within_batch(common):
  from configs import jsa, noprior  # pylint: disable=g-import-not-at-top
  assert common.k_within_batch(jsa.get_config('vggsound_144k'), 8).loss.k == 8
  assert common.k_within_batch(jsa.get_config('vggsound_144k'), 64).loss.k == 20
  config = noprior.get_config()
  assert common.k_within_batch(config, 8).to_dict() == noprior.get_config().to_dict()


def test_child_result_reads_the_line_a_fresh_process_printed(common, tmp_path):
  script = tmp_path / 'child.py'
  script.write_text(
      'import json, os, sys\n'
      'print("compiling")\n'
      'print("RESULT " + json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),\n'
      '                              "value": os.environ["AVLOC_TEST_VALUE"]}))\n'
      'print("done")\n')
  result = common.child_result(str(script), ['--a=1', 'b'], {'AVLOC_TEST_VALUE': 'x y'})
  assert result == {'argv': ['--a=1', 'b'], 'cwd': common.REPO, 'value': 'x y'}
