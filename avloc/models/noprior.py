"""The NoPrior model: sound-associated map, Iterative Object Identification and object
clustering (NoPrior Secs. 3.1-3.4, Algorithm 1).

`NoPrior.__call__` is the training forward pass and returns what the losses of Eqs. 3-5
need; `NoPrior.localize` is the inference pass (Sec. 3.4). Inputs may be mixtures: n
frames side by side give an image of width n * height and a feature map [h, n*w]; every
function here works on the flattened cells, N = h * w for any grid.

IOI runs over the whole batch with static shapes: the object bank has one slot per
iteration, at most N (every iteration removes at least its own cell from S_v), with a
validity mask. Algorithm 1's bank is what non-maximum suppression in S_v order keeps, and
one `jax.lax.while_loop` finds it as a fixed point, a few rounds of one batched
matrix-vector product each (`iterative_object_identification`); the clustering of Sec.
3.4 reads its cosines off the same Gram matrix of F_hat, over cells. While loops are not
reverse-differentiable, so the loops only choose cells and regions (on stop-gradient
inputs); the bank entries E_p are gathered from F_hat after them, and gradients reach
both encoders through them (OSC loss, Eq. 4). benchmarks/ioi.py times it against a
per-sample Python loop.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from avloc.models import pooling
from avloc.models.resnet import AudioEncoder, ImageEncoder
from avloc.models.similarity import l2_normalize, similarity_maps

# Guards divisions by norms, and the mean of E_n when the mask covers every cell.
_EPS = 1e-12


def sound_association(image_features, audio_features, audio_pool):
  """Eq. 1 for every (image n, audio m) pair.

  image_features [B, N, D] (F_v cells), audio_features [B, f, t, D] (F_a), audio_pool
  'mean' or 'max'. Returns cells [B, N, D]: F_v cells L2-normalized; audio [B, D]: l_a,
  the pool of F_a over (f, t), normalized; similarity [B, B, N]: S_v^{n->m}, image n and
  audio m.

  S_v is the raw cosine Sim(F_v_ij, l_a) in [-1, 1]. Eq. 1 as printed also divides by
  the map's sum over cells; we leave that out, as LVS (which NoPrior builds on) and the
  official release do: Eq. 2 compares S_v with alpha = 0.65, a cosine level, where
  sum-normalized values would be about 1/N (and a sum of signed cosines can vanish or
  change sign), and Algorithm 1's stop rule max(S_v) <= epsilon then reads "no cell with
  a cosine above epsilon is left". l_a is the global *average* pool of the paper
  ('mean', Fig. 2 and Sec. 3.2) or the global max-pool of the release ('max',
  `model_base.py`: `aud_max_pool`, an `AdaptiveMaxPool2d`, as in LVS).
  """
  cells = l2_normalize(image_features)
  pool = {'mean': functools.partial(jnp.mean, axis=(1, 2)),
          'max': pooling.global_max_pool}[audio_pool]
  audio = l2_normalize(pool(audio_features))
  return cells, audio, similarity_maps(cells, audio)


def sound_mask(sound_map, alpha, omega):
  """Eq. 2: M = sigmoid((S_v - alpha) / omega) on the raw cosine map, any shape."""
  return jax.nn.sigmoid((sound_map - alpha) / omega)


def background_embedding(cells, mask):
  """E_n [B, D] (Sec. 3.3): mean of the cells left out of F_hat, i.e. of the normalized
  F_v cells [B, N, D] weighted by 1 - M [B, N].

  The paper averages "the background cells that were excluded during the creation of
  F_hat"; we weight by the soft background 1 - M of Eq. 2 (no extra threshold) and
  average F_v cells, so that E_n is the background's appearance that the tau1 filter of
  Sec. 3.4 compares bank cells with. (The release averages F_hat * (1 - M') over all
  cells, M' with a lower threshold.)
  """
  weights = 1.0 - mask
  total = jnp.einsum('bn,bnd->bd', weights, cells)
  return total / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), _EPS)


def iterative_object_identification(sound_map, features, background, epsilon):
  """Algorithm 1 on a batch, with static shapes: which cells are E_p^t, in which order.

  sound_map [B, N]: S_v; features [B, N, D]: F_hat = S_v * F_v; background [B, D]: E_n;
  epsilon >= 0. Algorithm 1 repeats, for each sample: E_p = F_hat at argmax(S_v) (ties:
  the lowest cell index); R_p = <F_hat, E_p>, R_n = <F_hat, E_n> per cell; the
  sound-making region R_p > R_n, plus the argmax cell itself (its R_p = |E_p|^2 need not
  beat R_n, and without it S_v could keep its maximum forever); S_v <- S_v * not(region);
  until max(S_v) <= epsilon (also before the first iteration). Regions may overlap.

  S_v only ever loses cells (to 0 <= epsilon), so the t-th argmax is the first cell in
  decreasing S_v (ties: lower index first) with S_v > epsilon that no earlier E_p's
  region holds: the bank is what non-maximum suppression in S_v order keeps. We compute
  that set as the fixed point of keep = (S_v > epsilon) and not (a kept cell before c
  holds c in its region), one batched matrix-vector product per round of a
  `jax.lax.while_loop` that stops when no sample changes. A cell's status is final one
  round after those of all cells before it, so at most N + 1 rounds (a path of cells,
  each region holding its neighbours, takes them all); benchmarks/ioi.py's scenes take 2
  where Algorithm 1 as written takes one iteration per bank entry (up to 44). Every
  R_p^t is a row of the Gram matrix of F_hat, computed once. tests/test_noprior.py
  checks every output against Algorithm 1 written as printed.

  Returns a dict, T = N: index [B, T] int32, the cell of E_p^t; region [B, T, N] bool;
  foreground [B, T, N]: R_p^t; background [B, N]: R_n; valid [B, T] bool, slot t filled
  (the first `iterations` slots); iterations [B] int32; and, for Sec. 3.4
  (`identify_objects`): gram [B, N, N], <F_hat_i, F_hat_j>; peak [B, N] bool, the cell
  is some E_p^t; slot [B, N] int32, the bank slot of each such cell (N for the others;
  index inverts it on the valid slots). Unfilled slots hold index 0 and zeros.
  """
  if epsilon < 0:  # cells already taken are 0 in S_v: Algorithm 1 would pick them again
    raise ValueError(f"Algorithm 1's stop threshold epsilon must be >= 0, got {epsilon}")
  sound_map, features, background = map(jnp.asarray, (sound_map, features, background))
  batch, cells = sound_map.shape
  gram = jnp.einsum('bnd,bmd->bnm', features, features)
  negative = jnp.einsum('bnd,bd->bn', features, background)  # R_n
  positions = jnp.arange(cells)
  candidate = sound_map > epsilon
  first, second = sound_map[:, :, None], sound_map[:, None, :]
  before = (first > second) | (  # [b, p, c]: cell p comes before cell c in S_v order
      (first == second) & (positions[:, None] < positions[None, :]))
  suppresses = ((gram > negative[:, None, :]) & candidate[:, :, None] & before).astype(
      jnp.float32)  # 0/1: the count of suppressing cells is a float matmul, exact

  def suppress(state):
    keep, _ = state
    held = jnp.einsum('bpc,bp->bc', suppresses, keep.astype(jnp.float32))
    new = candidate & (held == 0)
    return new, jnp.any(new != keep)

  peak, _ = jax.lax.while_loop(lambda state: state[1], suppress,
                               (candidate, jnp.array(True)))
  iterations = jnp.sum(peak, axis=1, dtype=jnp.int32)
  # A bank cell's slot is the number of bank cells before it in S_v order (a 0/1 count
  # again); the other cells get N, and `index` inverts it on the filled slots.
  ahead = jnp.einsum('bpc,bp->bc', before.astype(jnp.float32), peak.astype(jnp.float32))
  slot = jnp.where(peak, ahead.astype(jnp.int32), cells)
  index = jnp.zeros_like(slot).at[jnp.arange(batch)[:, None], slot].set(
      positions.astype(jnp.int32), mode='drop')
  valid = positions < iterations[:, None]  # [B, T]: the first `iterations` slots
  foreground = jnp.take_along_axis(gram, index[..., None], axis=1) * valid[..., None]
  region = (((foreground > negative[:, None]) | (positions == index[..., None]))
            & valid[..., None])
  return dict(index=index, region=region, foreground=foreground, background=negative,
              valid=valid, iterations=iterations, gram=gram, peak=peak, slot=slot)


def cell_similarities(ioi, background):
  """Sec. 3.4's cosines for every pair of cells, read off Algorithm 1's inner products.

  ioi: `iterative_object_identification`'s dict; background [B, D]: E_n. Bank entry t is
  F_hat at cell index_t, so cos(E_p^s, E_p^t) is entry (index_s, index_t) here. Returns
  cos(F_hat_i, F_hat_j) [B, N, N] and cos(E_n, F_hat_i) [B, N]; cells with F_hat = 0
  give zeros. The first is as symmetric as the Gram matrix: XLA sums the same products
  in the same order for entries (i, j) and (j, i) of F_hat's Gram with itself, so they
  are equal (tests/test_noprior.py checks it for many shapes); a backend that rounded
  them apart could join a pair at exactly tau2 one way only, which the clustering
  tolerates (see `connected_components`). Not symmetrizing saves a transposing pass
  over [B, N, N], ~6 % of the 7x14 batch-8 IOI (benchmarks/RESULTS.md).
  """
  gram = ioi['gram']
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram, axis1=1, axis2=2), 0.0))  # |F_hat_i|
  pairwise = gram / jnp.maximum(norms[:, :, None] * norms[:, None, :], _EPS)
  with_background = ioi['background'] / jnp.maximum(
      norms * jnp.linalg.norm(background, axis=-1, keepdims=True), _EPS)
  return pairwise, with_background


def connected_components(adjacency, rank=None, active=None):
  """[B, N, N] symmetric bool -> [B, N] int32: the smallest rank in each node's component.

  rank [B, N] int32: distinct ranks of the active nodes (default: node i has rank i, so
  the label is the component's smallest node); active [B, N] bool: the nodes that take
  part (default: all). Edges from inactive nodes are ignored, and they keep their rank
  as label. Label propagation in a `jax.lax.while_loop` until nothing changes: every
  active node takes the smallest rank among itself and its active neighbours, then the
  label of the node holding that rank (pointer jumping). A label is always the rank of
  a node of the same component no later than the node, so the fixed point is the
  component minimum: union-find's root when unions keep the earlier root. Each round
  costs O(N^2) per sample; the rounds number about the log of the components' diameter
  (at most N). Inactive nodes are masked per node ([B, N]), not in the [B, N, N]
  adjacency, which saves one pass over it. Labels only ever fall, so the loop ends for
  any adjacency; a one-way edge i -> j lets i take j's label, not j take i's.
  """
  batch, size = adjacency.shape[:2]
  nodes = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (batch, size))
  rank = nodes if rank is None else rank
  active = jnp.ones((batch, size), bool) if active is None else active
  node_at_rank = jnp.zeros_like(nodes).at[jnp.arange(batch)[:, None],
                                          jnp.where(active, rank, size)].set(nodes, mode='drop')
  # Non-neighbours lie `size` above every rank and inactive nodes `2 * size`, so the
  # smallest neighbouring rank is a min over a float sum: XLA:CPU reduces that about
  # twice as fast as an integer select.
  distance = jnp.where(adjacency, 0.0, float(size))
  unheard = jnp.where(active, 0.0, 2.0 * size)

  def propagate(state):
    labels, _ = state
    heard = labels.astype(jnp.float32) + unheard
    neighbours = jnp.min(distance + heard[:, None, :], axis=-1)
    smaller = jnp.minimum(labels, neighbours.astype(jnp.int32))
    jumped = jnp.take_along_axis(
        smaller, jnp.take_along_axis(node_at_rank, smaller, axis=1), axis=1)
    jumped = jnp.where(active, jumped, labels)
    return jumped, jnp.any(jumped != labels)

  labels, _ = jax.lax.while_loop(lambda state: state[1], propagate,
                                 (rank, jnp.array(True)))
  return labels


def identify_objects(ioi, background, tau1, tau2):
  """Sec. 3.4: bank entries -> object labels.

  ioi: `iterative_object_identification`'s dict; background [B, D]: E_n. Entries with
  cos(E_n, E_p) > tau1 are background; the others are grouped into objects, two entries
  joined when their cosine is > tau2, transitively (union-find in the paper, connected
  components here, over the cells: bank entries are cells, and the other cells take no
  part). Returns labels [B, T] int32: an object is named by its first bank slot (the
  entry of highest S_v); -1 for background and empty slots.
  """
  pairwise, with_background = cell_similarities(ioi, background)
  kept = ioi['peak'] & ~(with_background > tau1)  # [B, N], over cells
  labels = connected_components(pairwise > tau2, ioi['slot'], kept)
  # A bank cell's rank is its slot: the labels already name slots.
  index = ioi['index']
  slot_labels = jnp.take_along_axis(labels, index, axis=1)
  kept_slots = ioi['valid'] & jnp.take_along_axis(kept, index, axis=1)
  return jnp.where(kept_slots, slot_labels, -1)


def object_roots(labels):
  """[B, T] labels -> [B, T] bool, slot t names an object (its first entry)."""
  return labels == jnp.arange(labels.shape[1])


def object_maps(ioi, labels, max_objects):
  """One calibrated map per object (Sec. 3.4, "combine the localization maps").

  ioi: `iterative_object_identification`'s dict; labels [B, T]. The t-th localization
  map is R_p^t - R_n = <F_hat, E_p^t - E_n>, positive exactly on the t-th sound-making
  region (but for a forced argmax cell); an object's map is their maximum over its
  entries, so it is positive on the union of its regions. Every vector has norm <= 1,
  so the map lies in [-2, 2]: (map + 2) / 4 gives fixed-bound scores in [0, 1],
  comparable across images (the evaluation's object confidence is the mean of the top
  quarter). Objects are kept in the order found, the first `max_objects`.

  Returns maps [B, K, N] and valid [B, K] bool, K = max_objects.
  """
  slots = labels.shape[1]
  roots = object_roots(labels)
  order = jnp.argsort(jnp.where(roots, 0, slots) + jnp.arange(slots), axis=1)
  order = order[:, :max_objects]
  found = jnp.take_along_axis(roots, order, axis=1)
  members = (labels[:, None, :] == order[:, :, None]) & found[:, :, None]  # [B, K, T]
  scores = ioi['foreground'] - ioi['background'][:, None]  # [B, T, N]
  combined = jnp.max(jnp.where(members[..., None], scores[:, None], -2.0), axis=2)
  calibrated = jnp.where(found[..., None], (combined + 2.0) / 4.0, 0.0)
  missing = max_objects - order.shape[1]  # fewer bank slots than max_objects
  return (jnp.pad(calibrated, ((0, 0), (0, missing), (0, 0))),
          jnp.pad(found, ((0, 0), (0, missing))))


def _sound_features(cells, audio, mask_alpha, mask_omega):
  """S_v^{n->n} [B, N], M [B, N] (Eq. 2), F_hat = S_v * F_v [B, N, D] on the unit cells
  (LVS, the release) and E_n [B, D] from unit cells [B, N, D] and l_a [B, D]."""
  sound_map = jnp.einsum('bnd,bd->bn', cells, audio)
  mask = sound_mask(sound_map, mask_alpha, mask_omega)
  return sound_map, mask, sound_map[..., None] * cells, background_embedding(cells, mask)


def identify_sources(image_cells, audio_map, *, audio_pool, mask_alpha, mask_omega, epsilon,
                     tau1, tau2, osc_image_gradient):
  """Eqs. 1-2, F_hat, E_n, Algorithm 1 and Sec. 3.4 on encoder outputs.

  image_cells [B, N, D]: F_v cells; audio_map [B, f, t, D]: F_a; audio_pool: see
  `sound_association`. Returns similarity [B, B, N] (Eq. 1), mask [B, N] (Eq. 2),
  sound_map [B, N] (S_v^{n->n}), ioi (Algorithm 1's dict), and what Eq. 4 is computed
  on: bank [B, T, D] (E_p^t) and background [B, D] (E_n), differentiable, with the image
  features behind a stop-gradient unless `osc_image_gradient`; object_labels [B, T]
  (Sec. 3.4).
  """
  cells, audio, similarity = sound_association(image_cells, audio_map, audio_pool)
  sound_map, mask, features, background = _sound_features(cells, audio, mask_alpha,
                                                          mask_omega)
  # The IOI decisions are not differentiated; the bank entries are, through F_hat.
  features_sg, background_sg = jax.lax.stop_gradient((features, background))
  ioi = iterative_object_identification(
      jax.lax.stop_gradient(sound_map), features_sg, background_sg, epsilon)
  labels = identify_objects(ioi, background_sg, tau1, tau2)
  if not osc_image_gradient:  # same values; L_osc's gradient reaches l_a only
    _, _, features, background = _sound_features(jax.lax.stop_gradient(cells), audio,
                                                 mask_alpha, mask_omega)
  bank = jnp.take_along_axis(features, ioi['index'][..., None], axis=1)
  return dict(similarity=similarity, mask=mask, sound_map=sound_map, ioi=ioi,
              background=background, bank=bank, object_labels=labels)


class NoPrior(nn.Module):
  """NoPrior model. uint8 image [B, H, W, 3] (W = n * H for n-frame mixtures),
  spectrogram [B, F, T, 1]. The fields have no defaults: their values, and what each
  means, are in the `model` block of configs/noprior.py."""

  dim: int
  width: int
  stem_pool: bool
  image_last_stride: int  # 1: stride-16 image features (ResNet18.last_stride)
  projection: bool
  audio_pool: str  # l_a = pool of F_a: 'mean' (the paper's GAP) or 'max' (the release)
  osc_image_gradient: bool  # False: L_osc does not train the image encoder (the release)
  mask_alpha: float
  mask_omega: float
  ioi_epsilon: float
  tau1: float
  tau2: float
  max_objects: int
  image_mean: tuple[float, ...]
  image_std: tuple[float, ...]
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.image_encoder = ImageEncoder(self.dim, self.width, self.stem_pool, self.image_mean,
                                      self.image_std, self.dtype, self.projection,
                                      self.image_last_stride)
    self.audio_encoder = AudioEncoder(self.dim, self.width, self.stem_pool, 'none', self.dtype,
                                      self.projection)

  def identify(self, image, spectrogram, train: bool = False):
    """Encoders, then `identify_sources` (float32 after the encoders: the cosines feed
    thresholds and argmaxes): its dict, every intermediate of Eqs. 1-2, Algorithm 1 and
    Sec. 3.4, plus grid (h, w). `__call__` and `localize` select from it; diagnostics
    (benchmarks/map_diagnostics.py) read all of it."""
    feature_map = self.image_encoder(image, train).astype(jnp.float32)
    batch, height, width, dim = feature_map.shape
    audio_map = self.audio_encoder(spectrogram, train).astype(jnp.float32)
    out = identify_sources(
        feature_map.reshape(batch, height * width, dim), audio_map,
        audio_pool=self.audio_pool, mask_alpha=self.mask_alpha, mask_omega=self.mask_omega,
        epsilon=self.ioi_epsilon, tau1=self.tau1, tau2=self.tau2,
        osc_image_gradient=self.osc_image_gradient)
    return dict(out, grid=(height, width))

  def __call__(self, image, spectrogram, train: bool = True):
    """Training forward pass. Returns:

    similarity [B, B, N]: S_v^{n->m} (Eq. 1); mask [B, N]: M^n (Eq. 2);
    bank [B, T, D]: E_p^t = F_hat at the t-th chosen cell (T = N), bank_valid [B, T];
    object_labels [B, T] int32 (Sec. 3.4, -1: background / empty); background [B, D]:
    E_n; iterations [B] int32: Algorithm 1's T per sample.
    """
    out = self.identify(image, spectrogram, train)
    return dict(similarity=out['similarity'], mask=out['mask'], bank=out['bank'],
                bank_valid=out['ioi']['valid'], object_labels=out['object_labels'],
                background=out['background'], iterations=out['ioi']['iterations'])

  def localize(self, image, spectrogram):
    """Inference pass (BatchNorm running statistics). Returns:

    sound_map [B, h, w]: S_v (raw cosine); object_maps [B, K, h, w] in [0, 1] and
    object_valid [B, K] (`object_maps`, K = max_objects); num_objects [B] int32 (K_b,
    before the max_objects cut); iterations [B] int32.
    """
    out = self.identify(image, spectrogram, False)
    batch, (height, width) = image.shape[0], out['grid']
    objects, valid = object_maps(out['ioi'], out['object_labels'], self.max_objects)
    return dict(sound_map=out['sound_map'].reshape(batch, height, width),
                object_maps=objects.reshape(batch, self.max_objects, height, width),
                object_valid=valid,
                num_objects=jnp.sum(object_roots(out['object_labels']), axis=1,
                                    dtype=jnp.int32),
                iterations=out['ioi']['iterations'])
