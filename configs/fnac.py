"""FNAC: false-negative-aware contrastive learning for audio-visual localization (Sun et
al., CVPR 2023), EZ-VSL's network and loss plus its FNS / TNE terms.

Usage: `python -m avloc.main --config=configs/fnac.py:<variant> --workdir=DIR`, variant
one of `vggsound_144k` (default), `vggsound_10k`, `flickr_144k`, `flickr_10k` (the FNAC
rows of JSA Table 1, which quotes FNAC's own tables and its release's checkpoints: VGG-SS
cIoU 39.50 / 37.29 / 33.93 / 35.27) or `synthetic` (CPU-sized, on the synthetic
benchmark).

Settings of the release (`train.py`, `train_flickr.sh`, `train_vggss.sh`; the scripts
serve the 10k and 144k sets alike): Adam, lr 1e-4 with weight decay 1e-4 (torch Adam:
L2), batch 256, 30 epochs of which the first 5 train EZ-VSL's loss alone (`--warmup 5`),
then each FNAC term weighted 100, tau 0.03, dropout 0.9 on the image features before the
projection and 0 on the audio, the foreground threshold 0.6 (`high_conf_thresh`), 224 px
frames, the middle 3 s of audio with one frequency and one time mask of width < 10
(`datasets.py`, `FrequencyMask` / `TimeMask`).
"""

import ml_collections

from avloc import config as cfg


def get_config(variant: str = 'vggsound_144k') -> ml_collections.ConfigDict:
  config = cfg.dual_encoder_config('fnac', variant, audio_seconds=3.0, projection=True,
                                   last_stride=2)
  config.data.spec_augment = True
  config.model.image_dropout = 0.9
  config.loss = ml_collections.ConfigDict(dict(
      tau=0.03,
      foreground_threshold=0.6,  # on the min-max normalized own map (A^f's cells)
      lambda_fns_audio=100.0,  # --fnac_loss1_weight (FNS-1)
      lambda_tne=100.0,  # --fnac_loss2_weight (TNE)
      lambda_fns_image=100.0,  # --fnac_loss3_weight (FNS-2)
      warmup_epochs=5,  # epochs of EZ-VSL's loss alone
  ))
  config.optim = cfg.optim_config('adam', 1e-4, 1e-4)
  config.train = cfg.train_config(batch_size=256, epochs=30)
  if variant == cfg.SYNTHETIC:  # the data and budget of configs/jsa.py:synthetic
    cfg.cpu_sized(config)
    config.data.spec_augment = False
    config.train.epochs = 4
    config.loss.warmup_epochs = 1  # the release's 5 of 30 epochs, scaled
  return config
