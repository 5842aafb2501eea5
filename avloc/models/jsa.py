"""The JSA model: encoders, joint slot attention, decoders, and its localization map
(JSA Secs. 3.1-3.5).

`JSA.__call__` is the training forward pass and returns everything the losses of
Eqs. 7-11 need; `JSA.localize` is the inference pass of Sec. 3.5.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from avloc.models import maps
from avloc.models.resnet import IMAGENET_MEAN, IMAGENET_STD, AudioEncoder, ImageEncoder
from avloc.models.slot_attention import (JointSlotAttention, SlotDecoder, slot_attention_weights,
                                         slot_softmax)


def iqr(cross_modal, intra_modal, alpha):
  """Eq. 14, Image-Query based Refinement: alpha * ca^{a,v} + (1 - alpha) * ia^{v,v}.

  On upsampled maps [B, H, W]. As in the official release's test_model.py, each map is
  min-max normalized before the blend and the blend is normalized again. (The release's
  test scripts pass alpha = 0.4; the paper's Sec. 4.1 value 0.6 is our default.)
  """
  blend = (alpha * maps.minmax_normalize(cross_modal)
           + (1.0 - alpha) * maps.minmax_normalize(intra_modal))
  return maps.minmax_normalize(blend)


class JSA(nn.Module):
  """Joint slot attention model. uint8 image [B, H, W, 3], spectrogram [B, F, T, 1]."""

  dim: int = 512
  width: int = 64
  stem_pool: bool = True
  image_last_stride: int = 2  # 1: stride-16 image features (ResNet18.last_stride)
  num_target: int = 1
  num_offtarget: int = 1
  shared_slots: bool = True
  iters: int = 5
  mask_ratio: float = 0.1
  mlp_dim: int = 1024
  softmax_eps: float = 1e-8
  decoder_hidden_layers: int = 3
  infer_sharpening: float = 1.0
  image_mean: tuple[float, ...] = IMAGENET_MEAN
  image_std: tuple[float, ...] = IMAGENET_STD
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.image_encoder = ImageEncoder(
        self.dim, self.width, self.stem_pool, self.image_mean, self.image_std, self.dtype,
        last_stride=self.image_last_stride)
    self.audio_encoder = AudioEncoder(
        self.dim, self.width, self.stem_pool, 'frequency_max', self.dtype)
    self.slot_attention = JointSlotAttention(
        dim=self.dim, mlp_dim=self.mlp_dim, num_target=self.num_target,
        num_offtarget=self.num_offtarget, shared_slots=self.shared_slots, iters=self.iters,
        mask_ratio=self.mask_ratio, eps=self.softmax_eps, dtype=self.dtype)
    self.image_decoder = SlotDecoder(self.dim, self.decoder_hidden_layers, self.dtype)
    self.audio_decoder = SlotDecoder(self.dim, self.decoder_hidden_layers, self.dtype)

  def _encode(self, image, spectrogram, train):
    """-> image tokens [B, h*w, D], audio tokens [B, t, D], image grid (h, w)."""
    feature_map = self.image_encoder(image, train)
    batch, height, width, dim = feature_map.shape
    audio_tokens = self.audio_encoder(spectrogram, train)
    return feature_map.reshape(batch, height * width, dim), audio_tokens, (height, width)

  def _attention(self, queries, keys, sharpening=1.0):
    """Eqs. 3-4 between any queries and keys: [B, S, D] x [B, N, D] -> [B, S, N]."""
    return slot_attention_weights(
        queries, keys, sharpening * self.dim**-0.5, self.softmax_eps)

  def __call__(self, image, spectrogram, train: bool = True):
    """Training forward pass. Returns a dict of float32 arrays:

    image_tokens [B, N, D], audio_tokens [B, T, D]: encoder outputs v and a;
    image_slots, audio_slots [B, S, D]: S_N per modality (targets first);
    ia_image [B, S, N]: A_hat^{v,v}; ca_audio_image [B, S, N]: A_hat^{a,v};
    ia_audio [B, S, T]: A_hat^{a,a}; ca_image_audio [B, S, T]: A_hat^{v,a};
    recon_image [B, N, D], recon_audio [B, T, D]: g_v(S^v), g_a(S^a) of Eq. 10.
    """
    image_tokens, audio_tokens, grid = self._encode(image, spectrogram, train)
    slots = self.slot_attention(image_tokens, audio_tokens, train)
    recon_image, _ = self.image_decoder(slots['image_slots'], grid)
    recon_audio, _ = self.audio_decoder(slots['audio_slots'], (1, audio_tokens.shape[1]))
    outputs = dict(
        image_tokens=image_tokens, audio_tokens=audio_tokens,
        image_slots=slots['image_slots'], audio_slots=slots['audio_slots'],
        ia_image=self._attention(slots['image_queries'], slots['image_keys']),
        ca_audio_image=self._attention(slots['audio_queries'], slots['image_keys']),
        ia_audio=self._attention(slots['audio_queries'], slots['audio_keys']),
        ca_image_audio=self._attention(slots['image_queries'], slots['audio_keys']),
        recon_image=recon_image, recon_audio=recon_audio,
    )
    return {k: v.astype(jnp.float32) for k, v in outputs.items()}

  def localize(self, image, spectrogram):
    """Sec. 3.5 inference pass (no masking, BatchNorm running statistics).

    Returns float32 arrays:
      heatmap [B, h, w]: ca^{a,v}, the audio target queries' attention on image keys,
        with the logits scaled by `infer_sharpening` (official release);
      image_prior [B, h, w]: ia^{v,v}, the image target queries' attention (for IQR);
      heatmap_score, image_prior_score [B, h, w]: the same maps before Eq. 4's
        normalization over positions: each cell's target-slot probability (Eq. 3), on a
        fixed [0, 1] scale across images (with one target slot the maps are these up
        to a per-image factor);
      image_embedding, audio_embedding [B, D]: target slots, for retrieval (Table 4).
    With several target slots, the maps are summed over them and the embeddings are
    the mean of the target slots.
    """
    image_tokens, audio_tokens, (height, width) = self._encode(image, spectrogram, False)
    slots = self.slot_attention(image_tokens, audio_tokens, False)
    attend = functools.partial(self._attention, sharpening=self.infer_sharpening)
    probability = functools.partial(
        slot_softmax, scale=self.infer_sharpening * self.dim**-0.5)
    targets = slice(0, self.num_target)
    batch = image.shape[0]
    maps = dict(
        heatmap=attend(slots['audio_queries'], slots['image_keys']),
        image_prior=attend(slots['image_queries'], slots['image_keys']),
        heatmap_score=probability(slots['audio_queries'], slots['image_keys']),
        image_prior_score=probability(slots['image_queries'], slots['image_keys']))
    return dict(
        **{name: m[:, targets].sum(1).reshape(batch, height, width) for name, m in maps.items()},
        image_embedding=slots['image_slots'][:, targets].mean(1).astype(jnp.float32),
        audio_embedding=slots['audio_slots'][:, targets].mean(1).astype(jnp.float32),
    )
