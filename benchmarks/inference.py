r"""Localization latency per image: the jitted `localize` of each method on prepared
inputs (with the transfer of the maps back to the host), and end to end from a raw frame
and waveform (resize, spectrogram, model); prints a table next to the NoPrior paper's
0.027 s per image on one GPU.

  python benchmarks/inference.py                               # the paper models, 224 px
  python benchmarks/inference.py --configs=jsa:synthetic --batch_sizes=1,16

Parameters are random (latency does not depend on them). The raw inputs are a 640x480
frame and twice the model's audio window at 16 kHz, as `avloc.inference.Localizer` gets
them from `avloc-predict`.
"""

import importlib
import time

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import numpy as np
from absl import app, flags

from avloc import inference

_CONFIGS = flags.DEFINE_list('configs', ['jsa:vggsound_144k', 'noprior:vggsound_144k'],
                             'configs/<name>.py and its variant, as name:variant.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8', '32'], 'Images per call.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls per setting.')
PAPER_SECONDS_PER_IMAGE = 0.027  # NoPrior (Kim et al., CVPR 2024), one GPU


def localizer_for(config) -> inference.Localizer:
  setup = common.train_setup(config, batch_size=2)
  return inference.Localizer(config, {'params': setup.state.params,
                                      'batch_stats': setup.state.batch_stats})


def main(argv):
  del argv
  print(common.machine())
  rng = np.random.default_rng(0)
  rows = []
  for spec in _CONFIGS.value:
    name, _, variant = spec.partition(':')
    config = importlib.import_module(f'configs.{name}').get_config(*[variant] if variant else [])
    localizer = localizer_for(config)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    waveform = rng.uniform(-0.5, 0.5, int(2 * localizer.seconds * localizer.sample_rate))
    for batch in map(int, _BATCH_SIZES.value):
      images = np.stack([localizer.prepare_image(frame)] * batch)
      spectrograms = np.stack([localizer.prepare_audio(waveform)] * batch)
      start = time.perf_counter()
      localizer.localize_inputs(images, spectrograms)
      compile_seconds = time.perf_counter() - start
      model_seconds = common.timed(localizer.localize_inputs, images, spectrograms,
                                   repeats=_REPEATS.value) / batch
      end_to_end = common.timed(localizer.localize, [frame] * batch, [waveform] * batch,
                                repeats=_REPEATS.value) / batch
      rows.append([spec, batch, f'{compile_seconds:.1f}', f'{1e3 * model_seconds:.1f}',
                   f'{1e3 * end_to_end:.1f}', f'{1 / end_to_end:.1f}',
                   f'{PAPER_SECONDS_PER_IMAGE / end_to_end:.2f}'])
  common.print_table(
      f'localize latency ({jax.devices()[0].platform}); paper: '
      f'{1e3 * PAPER_SECONDS_PER_IMAGE:.0f} ms/image on one GPU',
      ['config', 'batch', 'compile s', 'model ms/image', 'end-to-end ms/image', 'images/s',
       'paper / ours'], rows)


if __name__ == '__main__':
  app.run(main)
