"""Two ResNet-18 encoders and their audio-visual cosine map: the network of LVS (Chen et
al., CVPR 2021), EZ-VSL (Mo & Morgado, ECCV 2022) and FNAC (Sun et al., CVPR 2023).

The three releases build the same thing with different switches:
- EZ-VSL (`model.py`, `EZVSL`): torchvision ResNet-18s; image: the last feature map and
  a 1x1 conv `img_proj`; audio: 1-channel stem, global max-pool, Linear `aud_proj`
  (`projection=True`, last stride 2).
- FNAC (`model.py`, `FNAC`): EZ-VSL's network with `nn.Dropout` before both projections
  (`img_dropout` 0.9, `aud_dropout` 0 in its train scripts): `image_dropout`,
  `audio_dropout`.
- LVS (`model.py`, `AVENet`; `models/base_models.py`): the trunks' post-ReLU outputs
  without projections, `layer4` at stride 1 (a 14x14 map at 224 px), audio max-pooled
  (its `self.avgpool` is an `AdaptiveMaxPool2d`) (`projection=False`, both last strides 1).
All three L2-normalize every image cell and the audio embedding; the localization map
is the cosine of each cell with the clip's own audio (EZ-VSL / FNAC return it divided by
their tau, a scale no evaluation sees: maps are min-max normalized or thresholded at
their median).
"""

import flax.linen as nn
import jax.numpy as jnp

from avloc.models.resnet import AudioEncoder, ImageEncoder
from avloc.models.similarity import l2_normalize, similarity_maps


def audio_visual(image_features, audio_features):
  """Encoder outputs -> what the losses read.

  image_features [B, h, w, D], audio_features [B, D]. Returns cells [B, N, D] and audio
  [B, D], L2-normalized over D (the releases' `F.normalize(., dim=1)`), and similarity
  [B, B, N]: the cosine of image n's cells with audio m (`similarity_maps`).
  """
  batch, height, width, dim = image_features.shape
  cells = l2_normalize(image_features.reshape(batch, height * width, dim))
  audio = l2_normalize(audio_features)
  return dict(cells=cells, audio=audio, similarity=similarity_maps(cells, audio))


class DualEncoder(nn.Module):
  """uint8 image [B, H, W, 3] and spectrogram [B, F, T, 1] -> cosine maps. The fields
  have no defaults: their values live in the config (avloc.config.dual_encoder_config)."""

  dim: int
  width: int
  stem_pool: bool
  projection: bool
  image_last_stride: int  # ResNet18.last_stride of each trunk
  audio_last_stride: int
  image_dropout: float
  audio_dropout: float
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.image_encoder = ImageEncoder(
        self.dim, self.width, self.stem_pool, self.image_mean, self.image_std, self.dtype,
        self.projection, self.image_last_stride, self.image_dropout)
    self.audio_encoder = AudioEncoder(
        self.dim, self.width, self.stem_pool, 'max', self.dtype, self.projection,
        self.audio_last_stride, self.audio_dropout)

  def encode(self, image, spectrogram, train: bool):
    """-> image features [B, h, w, D], audio embedding [B, D] (float32, unnormalized)."""
    return (self.image_encoder(image, train).astype(jnp.float32),
            self.audio_encoder(spectrogram, train).astype(jnp.float32))

  def __call__(self, image, spectrogram, train: bool = True):
    """Training forward pass: `audio_visual` of the encoder outputs."""
    return audio_visual(*self.encode(image, spectrogram, train))

  def localize(self, image, spectrogram):
    """Inference pass (BatchNorm running statistics, no dropout). Returns float32 arrays:

    heatmap [B, h, w]: the cosine of every cell with the clip's own audio, in [-1, 1];
    image_embedding [B, D]: the mean of the normalized cells (FNAC's `img_avg`; the
      releases evaluate no retrieval), audio_embedding [B, D]: the normalized audio.
    """
    image_features, audio_features = self.encode(image, spectrogram, False)
    batch, height, width, _ = image_features.shape
    out = audio_visual(image_features, audio_features)
    heatmap = jnp.einsum('bnd,bd->bn', out['cells'], out['audio'])
    return dict(heatmap=heatmap.reshape(batch, height, width),
                image_embedding=jnp.mean(out['cells'], axis=1),
                audio_embedding=out['audio'])
