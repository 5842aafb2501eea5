"""EZ-VSL: multiple-instance contrastive learning of audio-visual maps (Mo & Morgado,
ECCV 2022).

Usage: `python -m avloc.main --config=configs/ezvsl.py:<variant> --workdir=DIR`, variant
one of `vggsound_144k` (default), `vggsound_10k`, `flickr_144k`, `flickr_10k` (the EZ-VSL
rows of JSA Table 1, trained on that set and evaluated on VGG-SS and Flickr-SoundNet;
with `--config.eval.object_guidance.weights` also its "with OGL" rows; the EZ-VSL paper's
own Flickr-SoundNet and VGG-SS tables report the same runs) or `synthetic` (CPU-sized,
on the synthetic benchmark).

Settings of the release (`train.py`, `scripts/train_*.sh`): Adam, lr 1e-4, no weight
decay, batch 128, 20 epochs on the 144k sets and 100 on the 10k sets, tau 0.03,
`out_dim` 512, 224 px frames, the middle 3 s of audio (`datasets.py`, `dur=3.`).
"""

import ml_collections

from avloc import config as cfg

_EPOCHS = {'vggsound_144k': 20, 'vggsound_10k': 100, 'flickr_144k': 20, 'flickr_10k': 100,
           'synthetic': 4}


def get_config(variant: str = 'vggsound_144k') -> ml_collections.ConfigDict:
  config = cfg.dual_encoder_config('ezvsl', variant, audio_seconds=3.0, projection=True,
                                   last_stride=2)
  config.loss = ml_collections.ConfigDict(dict(tau=0.03))
  config.optim = cfg.optim_config('adam', 1e-4, 0.0)
  config.train = cfg.train_config(batch_size=128, epochs=_EPOCHS[variant])
  if variant == cfg.SYNTHETIC:  # the data and budget of configs/jsa.py:synthetic
    cfg.cpu_sized(config)
  return config
