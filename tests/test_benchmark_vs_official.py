"""benchmarks/vs_official.py's table of convolutions: what each side's calls compute
(against a NumPy reference of the convolution and its two gradients), the grouping of equal
layers and the weighted totals. In a subprocess: the script defines absl flags that other
modules define too. torch's side only where torch is installed."""

import importlib.util

import numpy as np
import pytest

from tests.benchmark_scripts import printed_table, run_stubbed

_TORCH = pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                            reason='torch is not installed')

_PRELUDE = '''
import json, sys
sys.path.insert(0, 'benchmarks')
import numpy as np
import vs_official
from absl import flags
flags.FLAGS(['vs_official.py', '--repeats=3'])
'''

# Each side's three calls on one small strided, padded convolution, with their inputs.
_CALLS = _PRELUDE + '''
side = sys.argv[1]
c = vs_official.Convolution(height=7, width=6, channels=2, features=3, kernel=3, stride=2,
                            padding=1, input_gradient=True)
make = vs_official.avloc_convolution if side == 'avloc' else vs_official.official_convolution
calls = make(c, 2)
x, kernel, cotangent = vs_official._convolution_inputs(c, 2)
out = {'x': x.tolist(), 'kernel': kernel.tolist(), 'cotangent': cotangent.tolist()}
for name, call in calls.items():
  value = call()
  if side == 'avloc':
    value = np.asarray(value[0] if isinstance(value, tuple) else value)
  else:  # NCHW / OIHW
    if name != 'forward':  # convolution_backward's (input, weight, bias) gradients
      value = next(v for v in value if v is not None)
    value = value.numpy().transpose((2, 3, 1, 0) if name == 'weight gradient' else (0, 2, 3, 1))
  out[name] = value.tolist()
print('CALLS ' + json.dumps(out))
'''


def _reference(x, kernel, cotangent, stride, padding):
  """The convolution, its input gradient and its weight gradient by loops over the
  output positions (NHWC, HWIO)."""
  height, width = x.shape[1:3]
  k = kernel.shape[0]
  padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out_h, out_w = cotangent.shape[1:3]
  forward = np.zeros(cotangent.shape)
  input_gradient = np.zeros(padded.shape)
  weight_gradient = np.zeros(kernel.shape)
  for i in range(out_h):
    for j in range(out_w):
      window = padded[:, i * stride:i * stride + k, j * stride:j * stride + k]  # [B, k, k, C]
      forward[:, i, j] = np.einsum('bhwc,hwco->bo', window, kernel)
      input_gradient[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          'bo,hwco->bhwc', cotangent[:, i, j], kernel)
      weight_gradient += np.einsum('bhwc,bo->hwco', window, cotangent[:, i, j])
  return {'forward': forward, 'weight gradient': weight_gradient,
          'input gradient': input_gradient[:, padding:padding + height, padding:padding + width]}


@pytest.mark.parametrize('side', [
    'avloc',
    pytest.param('official', marks=_TORCH),
])
def test_each_side_computes_the_convolution_and_its_gradients(side):
  out, _ = run_stubbed(_CALLS, side)
  arrays = {name: np.asarray(value, np.float64) for name, value in out.items()}
  assert arrays['x'].shape == (2, 7, 6, 2) and arrays['cotangent'].shape == (2, 4, 3, 3)
  expected = _reference(arrays['x'], arrays['kernel'], arrays['cotangent'], 2, 1)
  assert set(expected) <= set(arrays)
  for name, value in expected.items():
    np.testing.assert_allclose(arrays[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_first_layer_has_no_input_gradient_call():
  out, _ = run_stubbed(_PRELUDE + '''
c = vs_official.Convolution(8, 8, 1, 4, 7, 2, 3, input_gradient=False)
print('CALLS ' + json.dumps(sorted(vs_official.avloc_convolution(c, 1))))
''')
  assert out == ['forward', 'weight gradient']


# common.interleaved stubbed: each side's call answers with the seconds of the table below.
_ROWS = _PRELUDE + '''
import types
SECONDS = {  # (layer features, operation) -> (official, avloc)
    (8, 'forward'): (0.010, 0.020), (8, 'weight gradient'): (0.030, 0.015),
    (16, 'forward'): (0.004, 0.002), (16, 'input gradient'): (0.006, 0.003),
    (16, 'weight gradient'): (0.008, 0.008),
}
timed = []

def calls(convolution, batch):
  names = ['forward', 'weight gradient'] + ['input gradient'] * convolution.input_gradient
  return {name: (convolution.features, name) for name in names}

def interleaved(sides, repeats):
  key = sides['official']
  assert sides['avloc'] == key and repeats == 3
  timed.append(list(key))
  return {side: types.SimpleNamespace(wall=seconds)
          for side, seconds in zip(('official', 'avloc'), SECONDS[key])}

vs_official.common.interleaved = interleaved
C = vs_official.Convolution
stem = C(32, 48, 1, 8, 7, 2, 3, input_gradient=False)
block = C(16, 24, 8, 16, 3, 1, 1, input_gradient=True)
rows = vs_official.convolution_rows(
    {'audio encoder': [('conv1', stem), ('layer1.0.conv1', block), ('layer1.0.conv2', block)]},
    batch=2, official=calls, ours=calls)
vs_official.common.print_table('convolutions', ['layer', 'input', 'kernel',
    'features', 'GFLOP', 'fwd', 'dx', 'dw', 'fwd speed', 'dx speed', 'dw speed'],
    [row[1:] for row in rows])
print('CALLS ' + json.dumps({'timed': timed, 'encoders': [row[0] for row in rows],
                             'flops': block.flops(2)}))
'''


def test_equal_layers_are_timed_once_and_counted_in_the_totals():
  out, lines = run_stubbed(_ROWS)
  # The two equal blocks are timed once, the stem without an input gradient.
  assert out['timed'] == [[8, 'forward'], [8, 'weight gradient'],
                          [16, 'forward'], [16, 'input gradient'], [16, 'weight gradient']]
  assert out['encoders'] == ['audio encoder'] * 3 + ['both']
  # 2 samples x 16 x 24 outputs x 16 features x (3 x 3 x 8) multiply-adds x 2.
  assert out['flops'] == 2 * 2 * 16 * 24 * 16 * 72
  _, table = printed_table(lines, 'convolutions')
  cells = {layer: list(row.values())[1:] for layer, row in table.items()}
  assert cells['conv1'] == ['32x48x1', '7x7/2', '8', '0.0', '10.0 / 20.0', '-',
                            '30.0 / 15.0', '0.50x', '-', '2.00x']
  assert cells['layer1.0.conv1 (x2)'] == [
      '16x24x8', '3x3/1', '16', f'{2 * out["flops"] / 1e9:.1f}', '4.0 / 2.0', '6.0 / 3.0',
      '8.0 / 8.0', '2.00x', '2.00x', '1.00x']
  # Totals weigh the block twice: forward 10 + 2 x 4 = 18 against 20 + 2 x 2 = 24 ms.
  assert cells['all'] == ['', '', '', '', '18.0 / 24.0', '12.0 / 6.0', '46.0 / 31.0',
                          '0.75x', '2.00x', '1.48x']


def test_grouping_keeps_first_occurrence_order():
  out, _ = run_stubbed(_PRELUDE + '''
C = vs_official.Convolution
a, b = C(4, 4, 2, 2, 3, 1, 1, True), C(4, 4, 2, 4, 1, 2, 0, True)
groups = vs_official.group_convolutions([('x', a), ('y', b), ('z', a)])
print('CALLS ' + json.dumps([[names, c.features] for names, c in groups]))
''')
  assert out == [[['x', 'z'], 2], [['y'], 4]]

# A release-shaped model: two encoders of Conv2d layers; their shapes as the hooks see them.
_LAYERS = _PRELUDE + '''
import types, torch
conv = torch.nn.Conv2d
model = types.SimpleNamespace(
    imgnet=torch.nn.Sequential(conv(3, 4, 7, 2, 3, bias=False), torch.nn.ReLU(),
                               conv(4, 4, 3, 1, 1, bias=False)),
    audnet=torch.nn.Sequential(conv(1, 4, 7, 2, 3), conv(4, 8, 1, 2, 0)))
release = types.SimpleNamespace(torch=torch)
if sys.argv[1] == 'oblong':
  model.audnet[1] = conv(4, 8, (1, 3), 2, 0)
try:
  layers = vs_official._release_convolutions(
      release, model, torch.zeros(2, 3, 20, 24), torch.zeros(2, 1, 30, 16))
except ValueError as error:
  print('CALLS ' + json.dumps(str(error)))
else:
  print('CALLS ' + json.dumps({encoder: [[name, list(vars(c).values())] for name, c in convs]
                               for encoder, convs in layers.items()}))
'''


@_TORCH
def test_the_release_encoders_convolutions_are_read_with_their_input_shapes():
  out, _ = run_stubbed(_LAYERS, 'square')
  # height, width, channels, features, kernel, stride, padding, input_gradient
  assert out == {'image encoder': [['0', [20, 24, 3, 4, 7, 2, 3, False]],
                                   ['2', [10, 12, 4, 4, 3, 1, 1, True]]],
                 'audio encoder': [['0', [30, 16, 1, 4, 7, 2, 3, False]],
                                   ['1', [15, 8, 4, 8, 1, 2, 0, True]]]}


@_TORCH
def test_a_convolution_the_table_cannot_time_is_named():
  out, _ = run_stubbed(_LAYERS, 'oblong')
  assert out == 'audio encoder 1: not a square ungrouped convolution'


# common.child_result stubbed: each child answers with the seconds below, per side and
# batch, and faults per round.
_FRESH = _PRELUDE + '''
WALL = {('official', 8): [2.0, 2.2], ('avloc', 8): [1.6, 2.2],
        ('official', 16): [4.0, 4.4], ('avloc', 16): [5.0, 4.0]}
calls = []

def child_result(script, argv, environ):
  side = argv[1].split('=')[1]
  batch = int(argv[2].split('=')[1])
  round_ = sum(c[1][1] == argv[1] and c[1][2] == argv[2] for c in calls)
  calls.append([script.endswith('vs_official.py'), argv, environ])
  wall = WALL[side, batch][round_]
  return {'wall': wall, 'cpu': 2 * wall + (side == 'official'), 'faults': 1000.0 * round_,
          'described': side + ' settings'}

vs_official.common.child_result = child_result
rows, described = vs_official.fresh_process_rows('CHECKOUT', [8, 16], rounds=2)
print('CALLS ' + json.dumps({'calls': calls, 'rows': rows, 'described': described}))
'''


def test_fresh_processes_take_turns_and_the_release_keeps_glibc_defaults():
  out, _ = run_stubbed(_FRESH)
  calls = out['calls']
  assert all(is_script for is_script, _, _ in calls)
  assert [argv[1:3] for _, argv, _ in calls] == [
      ['--child=official', '--child_batch=8'], ['--child=avloc', '--child_batch=8']] * 2 + [
      ['--child=official', '--child_batch=16'], ['--child=avloc', '--child_batch=16']] * 2
  assert all(argv[0] == 'CHECKOUT' and '--repeats=3' in argv for _, argv, _ in calls)
  assert [environ for _, _, environ in calls[:2]] == [{'AVLOC_KEEP_FREED_MEMORY': '0'}, {}]
  assert out['described'] == {'official': 'official settings', 'avloc': 'avloc settings'}
  # batch 8: speeds 2.0 / 1.6 = 1.25 and 2.2 / 2.2 = 1.00; medians 2.1 and 1.9 s;
  # CPU 5.2 / 3.8; batch 16: speeds 0.80 and 1.10, CPU 9.4 / 9.0.
  assert out['rows'] == [
      ['JSA train step', 8, '2.100', '1.900', '1.12x (1.00-1.25)', '1.37x', '0k / 0k'],
      ['JSA train step', 16, '4.200', '4.500', '0.95x (0.80-1.10)', '1.04x', '0k / 0k']]
