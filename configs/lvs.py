"""LVS: localizing visual sounds the hard way, tri-map hard negatives (Chen et al., CVPR
2021).

Usage: `python -m avloc.main --config=configs/lvs.py:<variant> --workdir=DIR`, variant one
of `vggsound_144k` (default), `vggsound_10k`, `flickr_144k`, `flickr_10k` (the LVS rows of
JSA Table 1: Flickr-SoundNet cIoU 73.50 / 61.80 / 69.90 / 58.20, VGG-SS 34.40 for
VGGSound 144k, from the LVS paper's tables) or `synthetic` (CPU-sized, on the synthetic
benchmark).

From the release (`model.py`, `AVENet`; `test.py`): ResNet-18 trunks without projections
and with `layer4` at stride 1 (`models/base_models.py`), audio max-pooled, epsilon 0.65,
epsilon' 0.4, tau 0.03, logits / 0.07, 224 px frames, 10 s of audio (`test.py` reads the
first 10 s: a whole VGGSound clip; prepare the splits with `--audio_seconds=10`). The
release has no training script: the optimizer, batch and epochs here (Adam 1e-4, batch
128, 20 epochs on the 144k sets, 100 on the 10k sets) are those of the EZ-VSL and FNAC
scripts, not LVS's own, which its release does not state.
"""

import ml_collections

from avloc import config as cfg

_EPOCHS = {'vggsound_144k': 20, 'vggsound_10k': 100, 'flickr_144k': 20, 'flickr_10k': 100,
           'synthetic': 4}


def get_config(variant: str = 'vggsound_144k') -> ml_collections.ConfigDict:
  config = cfg.dual_encoder_config('lvs', variant, audio_seconds=10.0, projection=False,
                                   last_stride=1)
  config.loss = ml_collections.ConfigDict(dict(
      epsilon=0.65,  # positive region: sigmoid((S - epsilon) / tau)
      epsilon_negative=0.4,  # background: 1 - sigmoid((S - epsilon') / tau); = epsilon: no tri-map
      tau=0.03,  # sharpness of the soft thresholds (`self.tau`)
      temperature=0.07,  # the logits' divisor
  ))
  config.optim = cfg.optim_config('adam', 1e-4, 0.0)
  config.train = cfg.train_config(batch_size=128, epochs=_EPOCHS[variant])
  if variant == cfg.SYNTHETIC:  # the data and budget of configs/jsa.py:synthetic
    cfg.cpu_sized(config)
  return config
