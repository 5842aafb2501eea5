r"""Iterative Object Identification + object clustering: the jitted batch `while_loop`
(avloc.models.noprior) against a per-sample Python loop on the same inputs; prints a table.

  python benchmarks/ioi.py                                # paper sizes: 7x7, 7x14, D = 512
  python benchmarks/ioi.py --grids=7x7 --batch_sizes=8,32 --dim=128

The inputs are synthetic scenes: per sample two sounding objects and a background, each
cell one of them plus noise, the audio the sum of the two objects; S_v, F_hat and E_n are
formed as in the model (Eqs. 1-2). The Python loop runs Algorithm 1 per sample in NumPy
and groups the bank with a union-find (Sec. 3.4), as the official release does; 'agree'
says whether both give the same iteration counts and object labels. 'gram ms' times the
batched Gram matrix of F_hat alone, the first step of the vectorized loop: 'python /
gram' bounds the speed-up any loop built on it can reach on this machine, and 'of bound'
(= gram ms / jit ms) is the share of that bound the vectorized loop reaches.
"""

import functools
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from avloc.models import noprior
from configs import noprior as noprior_config

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '32', '128'], 'Batch sizes.')
_GRIDS = flags.DEFINE_list('grids', ['7x7', '7x14'], 'Feature grids h x w (7x14: duets).')
_DIM = flags.DEFINE_integer('dim', 512, 'Feature size D.')
_NOISE = flags.DEFINE_float('noise', 0.6, 'Cell noise relative to the unit prototypes.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 20, 'Timed calls per setting (medians; the jitted call and the Gram '
    'alternate).')
_MODEL = noprior_config.get_config().model
_TAU1, _TAU2 = _MODEL.tau1, _MODEL.tau2
_EPSILON = flags.DEFINE_float(
    'epsilon', _MODEL.ioi_epsilon,
    "Algorithm 1's stop threshold (default: configs/noprior.py's). On these scenes 0.1 "
    'stops after about two iterations; 0 runs until every cell is taken, as the models '
    'trained on the synthetic benchmark nearly do (their S_v exceeds 0.1 almost '
    'everywhere: 40-57 iterations on 8x8, docs/learning.md).')


def scenes(rng, batch: int, cells: int, dim: int):
  """S_v [B, N], F_hat [B, N, D], E_n [B, D] as float32 NumPy arrays."""
  prototypes = rng.normal(size=(batch, 3, dim))
  prototypes /= np.linalg.norm(prototypes, axis=-1, keepdims=True)
  kind = rng.integers(0, 3, size=(batch, cells))  # object 1, object 2, background
  raw = np.take_along_axis(prototypes, kind[..., None], axis=1)
  raw += _NOISE.value * rng.normal(size=raw.shape) / np.sqrt(dim)
  unit = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
  audio = prototypes[:, 0] + prototypes[:, 1]
  sound_map = np.einsum('bnd,bd->bn', unit, audio / np.linalg.norm(audio, axis=-1,
                                                                   keepdims=True))
  mask = noprior.sound_mask(jnp.asarray(sound_map), _MODEL.mask_alpha, _MODEL.mask_omega)
  background = noprior.background_embedding(jnp.asarray(unit), mask)
  return (sound_map.astype(np.float32), (sound_map[..., None] * unit).astype(np.float32),
          np.asarray(background, np.float32))


@jax.jit
def gram_only(features):
  """The batched Gram matrix of F_hat alone, as the vectorized loop computes it first."""
  return jnp.einsum('bnd,bmd->bnm', features, features)


@jax.jit
def vectorized(sound_map, features, background):
  """Algorithm 1 and Sec. 3.4 on the batch: labels [B, N], iterations [B]."""
  ioi = noprior.iterative_object_identification(sound_map, features, background,
                                                _EPSILON.value)
  labels = noprior.identify_objects(ioi, background, _TAU1, _TAU2)
  return labels, ioi['iterations']


def per_sample(sound_map, features, background):
  """The same per sample in Python: a growing bank, then a union-find."""
  labels, iterations = np.full(sound_map.shape, -1), []
  for sample, (s, f, e_n) in enumerate(zip(sound_map, features, background)):
    s, negative, bank = s.copy(), f @ e_n, []
    while s.max() > _EPSILON.value:
      peak = int(np.argmax(s))
      region = f @ f[peak] > negative
      region[peak] = True
      s = s * ~region
      bank.append(f[peak])
    iterations.append(len(bank))
    unit = np.array(bank).reshape(len(bank), f.shape[1])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    kept = [t for t in range(len(bank)) if unit[t] @ e_n / np.linalg.norm(e_n) <= _TAU1]
    parent = list(range(len(bank)))

    def find(x, parent=parent):
      while parent[x] != x:
        x = parent[x]
      return x

    for i in kept:
      for j in kept:
        if j < i and unit[i] @ unit[j] > _TAU2:
          a, b = find(i), find(j)
          parent[max(a, b)] = min(a, b)
    for t in kept:
      labels[sample, t] = find(t)
  return labels, np.array(iterations)


def _run(fn, *args):
  return jax.block_until_ready(fn(*args))


def main(argv):
  del argv
  print(common.machine())
  rng = np.random.default_rng(0)
  rows = []
  for grid in _GRIDS.value:
    height, width = map(int, grid.split('x'))
    for batch in map(int, _BATCH_SIZES.value):
      inputs = scenes(rng, batch, height * width, _DIM.value)
      start = time.perf_counter()
      jax.block_until_ready(vectorized(*inputs))
      compile_seconds = time.perf_counter() - start
      # The jitted loop and the Gram take turns, so that their ratio (of bound) sees the
      # same machine load; the NumPy loop is timed apart (between them it would leave
      # XLA's worker threads asleep and its caches cold for the next call).
      seconds = common.interleaved({'jit': functools.partial(_run, vectorized, *inputs),
                                    'gram': functools.partial(_run, gram_only, inputs[1])},
                                   repeats=_REPEATS.value)
      jit_seconds, gram_seconds = seconds['jit'].wall, seconds['gram'].wall
      python_seconds = common.timed(per_sample, *inputs, repeats=_REPEATS.value, warmup=0)
      expected = per_sample(*inputs)
      labels, iterations = jax.device_get(vectorized(*inputs))
      agree = (np.array_equal(labels, expected[0])
               and np.array_equal(iterations, expected[1]))
      objects = np.sum(labels == np.arange(labels.shape[1]), axis=1)
      rows.append([batch, grid, f'{iterations.mean():.1f}', int(iterations.max()),
                   f'{objects.mean():.2f}', f'{compile_seconds:.2f}',
                   f'{1e3 * jit_seconds:.2f}', f'{1e3 * gram_seconds:.2f}',
                   f'{1e3 * python_seconds:.1f}', f'{python_seconds / jit_seconds:.1f}x',
                   f'{python_seconds / gram_seconds:.1f}x',
                   f'{gram_seconds / jit_seconds:.0%}', 'yes' if agree else 'NO'])
  common.print_table(
      f'IOI + clustering, D = {_DIM.value}, epsilon = {_EPSILON.value} '
      f'({jax.devices()[0].platform})',
      ['batch', 'grid', 'mean T', 'max T', 'objects', 'compile s', 'jit ms', 'gram ms',
       'python ms', 'python / jit', 'python / gram', 'of bound', 'agree'], rows)


if __name__ == '__main__':
  app.run(main)
