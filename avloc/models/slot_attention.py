"""Joint slot attention on image and audio (JSA Sec. 3.2, Eqs. 1-6) and the auxiliary
slot decoders of the reconstruction loss (Eq. 10).

Shapes: image tokens [B, N, D] (N = h*w), audio tokens [B, T, D], slots [B, S, D] with
S = num_target + num_offtarget; the first `num_target` slots are the target slots.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def slot_softmax(queries, keys, scale):
  """Eq. 3: A^T, the softmax over the SLOT axis of K Q^T * scale.

  queries [B, S, D], keys [B, N, D] -> [B, S, N], each column summing to 1 over S: the
  probability that input n belongs to slot s, on a fixed [0, 1] scale.
  """
  logits = jnp.einsum('bsd,bnd->bsn', queries, keys).astype(jnp.float32) * scale
  return jax.nn.softmax(logits, axis=1)


def slot_attention_weights(queries, keys, scale, eps):
  """Eqs. 3-4: `slot_softmax`, then normalization over the inputs.

  queries [B, S, D], keys [B, N, D] -> A_hat^T [B, S, N], each row summing to 1 over N.
  As in the official JSA release, `eps` is added to the softmax output before the
  renormalization (it keeps a slot that wins no input from dividing by zero).
  """
  weights = slot_softmax(queries, keys, scale) + eps
  return weights / jnp.sum(weights, axis=2, keepdims=True)


class ModalityBranch(nn.Module):
  """Per-modality parameters of JSA: LayerNorms, W^k, W^v, W^q, GRU and residual MLP."""

  dim: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype, name=name)  # noqa: E731
    self.norm_input = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.norm_slots = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.norm_pre_mlp = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.to_k = dense(self.dim, 'to_k')
    self.to_v = dense(self.dim, 'to_v')
    self.to_q = dense(self.dim, 'to_q')
    self.gru = nn.GRUCell(features=self.dim, dtype=self.dtype)
    self.mlp_in = dense(self.mlp_dim, 'mlp_in')
    self.mlp_out = dense(self.dim, 'mlp_out')

  def keys_values(self, tokens):
    """Eq. 1: K = W^k(LN(x)), V = W^v(LN(x)); [B, N, D] -> ([B, N, D], [B, N, D])."""
    normed = self.norm_input(tokens)
    return self.to_k(normed), self.to_v(normed)

  def query(self, slots):
    """Eq. 2: Q_n = W^q(LN(S_{n-1})); [B, S, D] -> [B, S, D]."""
    return self.to_q(self.norm_slots(slots))

  def update(self, slots, inputs):
    """Eqs. 5-6: S_n = GRU(S_{n-1}, A_hat^T V) + MLP(LN(.)); [B, S, D] -> [B, S, D]."""
    slots, _ = self.gru(slots, inputs.astype(slots.dtype))
    return slots + self.mlp_out(nn.relu(self.mlp_in(self.norm_pre_mlp(slots))))


class JointSlotAttention(nn.Module):
  """Decomposes image and audio tokens into target / off-target slots per modality.

  Both modalities start from the same learned initial slots S_0 (`shared_slots`, the
  paper's default; Table 6 ablates separate slots). During training, `mask_ratio` of the
  input tokens of each modality are replaced by a learned mask token (appendix C), with
  randomness from the 'mask' RNG stream.
  """

  dim: int = 512
  mlp_dim: int = 1024
  num_target: int = 1
  num_offtarget: int = 1
  shared_slots: bool = True
  iters: int = 5
  mask_ratio: float = 0.1
  eps: float = 1e-8
  dtype: jnp.dtype = jnp.float32

  @property
  def num_slots(self) -> int:
    return self.num_target + self.num_offtarget

  @property
  def scale(self) -> float:
    return self.dim**-0.5

  def setup(self):
    init = nn.initializers.normal(1.0)  # the release draws S_0 and mask tokens ~ N(0, 1)
    shape = (self.num_slots, self.dim)
    if self.shared_slots:
      self.initial_slots = self.param('initial_slots', init, shape)
    else:
      self.initial_slots_image = self.param('initial_slots_image', init, shape)
      self.initial_slots_audio = self.param('initial_slots_audio', init, shape)
    self.mask_token_image = self.param('mask_token_image', init, (self.dim,))
    self.mask_token_audio = self.param('mask_token_audio', init, (self.dim,))
    self.image = ModalityBranch(self.dim, self.mlp_dim, self.dtype)
    self.audio = ModalityBranch(self.dim, self.mlp_dim, self.dtype)

  def _mask(self, tokens, token):
    drop = jax.random.uniform(self.make_rng('mask'), tokens.shape[:2] + (1,))
    return jnp.where(drop < self.mask_ratio, token.astype(tokens.dtype), tokens)

  def _iterate(self, branch, initial, keys, values):
    """Runs Eqs. 2-6 `iters` times; returns S_N and the last queries Q_N."""
    slots = jnp.broadcast_to(initial, (keys.shape[0],) + initial.shape).astype(self.dtype)
    for _ in range(self.iters):
      queries = branch.query(slots)
      weights = slot_attention_weights(queries, keys, self.scale, self.eps)
      slots = branch.update(slots, jnp.einsum('bsn,bnd->bsd', weights, values))
    return slots, queries

  def __call__(self, image_tokens, audio_tokens, train: bool):
    """image_tokens [B, N, D], audio_tokens [B, T, D] -> dict of slots, queries, keys."""
    if train and self.mask_ratio > 0:
      image_tokens = self._mask(image_tokens, self.mask_token_image)
      audio_tokens = self._mask(audio_tokens, self.mask_token_audio)
    image_keys, image_values = self.image.keys_values(image_tokens)
    audio_keys, audio_values = self.audio.keys_values(audio_tokens)
    if self.shared_slots:
      image_init = audio_init = self.initial_slots
    else:
      image_init, audio_init = self.initial_slots_image, self.initial_slots_audio
    image_slots, image_queries = self._iterate(self.image, image_init, image_keys, image_values)
    audio_slots, audio_queries = self._iterate(self.audio, audio_init, audio_keys, audio_values)
    return dict(
        image_slots=image_slots, audio_slots=audio_slots,
        image_queries=image_queries, audio_queries=audio_queries,
        image_keys=image_keys, audio_keys=audio_keys,
    )


class SlotDecoder(nn.Module):
  """g_v / g_a of Eq. 10: spatial-broadcast MLP decoder, as in the official release.

  Each slot is broadcast to the h x w grid, a learned 2-D position embedding (column
  half, row half) is added, an MLP with ReLUs predicts a feature and an alpha logit per
  position, and the features are mixed with alpha softmax-normalized over slots.
  slots [B, S, D] -> reconstruction [B, h*w, out_dim] and alpha [B, S, h*w].
  """

  out_dim: int
  hidden_layers: int = 3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, slots, grid: tuple[int, int]):
    height, width = grid
    dim = slots.shape[-1]
    uniform = lambda key, shape: jax.random.uniform(key, shape)  # noqa: E731
    rows = self.param('row_embedding', uniform, (height, dim // 2))
    cols = self.param('col_embedding', uniform, (width, dim - dim // 2))
    position = jnp.concatenate([
        jnp.broadcast_to(cols[None, :, :], (height, width, cols.shape[-1])),
        jnp.broadcast_to(rows[:, None, :], (height, width, rows.shape[-1])),
    ], axis=-1).reshape(height * width, dim)
    x = slots[:, :, None, :] + position.astype(slots.dtype)  # [B, S, hw, D]
    for layer in range(self.hidden_layers):
      x = nn.relu(nn.Dense(dim, dtype=self.dtype, name=f'hidden_{layer}')(x))
    x = nn.Dense(self.out_dim + 1, dtype=self.dtype, name='output')(x)
    features, alpha_logits = x[..., :-1], x[..., -1].astype(jnp.float32)
    alpha = jax.nn.softmax(alpha_logits, axis=1)
    reconstruction = jnp.einsum('bsnd,bsn->bnd', features.astype(jnp.float32), alpha)
    return reconstruction, alpha
