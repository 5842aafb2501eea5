"""Test session set-up: 4 fake CPU devices (multi-device code runs data-parallel in every
test), XLA:CPU's LLVM back end without optimization passes, absl flags marked parsed
(Grain worker processes require it), and a persistent compilation cache for the session,
so tests that build the same train step again (the kill-and-resume runs) reuse the
executable instead of recompiling it.

The suite's tiny models spend most of their time compiling: LLVM at -O0 compiles the
smallest JSA in 13 s instead of 35 s (`--xla_backend_optimization_level=0`; XLA's HLO
optimizations and the convolution / matmul libraries stay the same).
The flags reach the subprocesses that tests start."""

import os
import tempfile

os.environ.setdefault(
    'XLA_FLAGS', '--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0')

import jax  # noqa: E402  pylint: disable=g-import-not-at-top
from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()
_CACHE = tempfile.TemporaryDirectory(prefix='avloc-test-jax-cache-')
jax.config.update('jax_compilation_cache_dir', _CACHE.name)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from tests.fake_gcs import gcs  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position  (fixture)
