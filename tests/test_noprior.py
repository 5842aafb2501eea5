"""NoPrior (Eqs. 1-5, Algorithm 1, Sec. 3.4) against plain NumPy / Python references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avloc import config as config_lib, methods
from avloc.losses import noprior as losses
from avloc.models import maps, noprior
from configs import noprior as noprior_config


def _normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cos(a, b):
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _reference_ioi(sound_map, features, background, epsilon):
  """Algorithm 1 for one sample, written as printed: [(argmax cell, region, R_p)] per
  step."""
  remaining = sound_map.copy()
  negative = features @ background
  bank = []
  while remaining.max() > epsilon:
    peak = int(np.argmax(remaining))
    positive = features @ features[peak]
    region = positive > negative
    region[peak] = True
    remaining = remaining * ~region
    bank.append((peak, region, positive))
  return bank


def _union_find_labels(bank, valid, background, tau1, tau2):
  """Sec. 3.4 with a Python union-find (the smaller root wins): [T] labels, -1 dropped."""
  slots = len(bank)
  kept = [t for t in range(slots) if valid[t] and _cos(background, bank[t]) <= tau1]
  parent = list(range(slots))

  def find(x):
    while parent[x] != x:
      x = parent[x]
    return x

  for i in kept:
    for j in kept:
      if j < i and _cos(bank[i], bank[j]) > tau2:
        a, b = find(i), find(j)
        parent[max(a, b)] = min(a, b)
  labels = np.full(slots, -1)
  for t in kept:
    labels[t] = find(t)
  return labels


def _random_ioi_inputs(rng, batch, cells, dim):
  """Unit cells, a sound map in [-1, 1], F_hat and E_n as the model forms them."""
  cells_ = _normalize(rng.normal(size=(batch, cells, dim))).astype(np.float32)
  sound_map = np.tanh(rng.normal(0.2, 0.6, size=(batch, cells))).astype(np.float32)
  features = (sound_map[..., None] * cells_).astype(np.float32)
  background = _normalize(rng.normal(size=(batch, dim))).astype(np.float32) * 0.5
  return sound_map, features, background


@pytest.mark.parametrize('audio_pool', ['mean', 'max'])
def test_sound_maps_and_background_match_numpy_eqs_1_2(audio_pool):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(3, 2, 5, 6)).astype(np.float32)  # [B, h, w, D], w = 2.5 h
  audio = rng.normal(size=(3, 4, 3, 6)).astype(np.float32)
  cells, embedding, similarity = noprior.sound_association(
      jnp.asarray(image.reshape(3, 10, 6)), jnp.asarray(audio), audio_pool)
  pool = {'mean': np.mean, 'max': np.max}[audio_pool]  # GAP (paper) or max (release)
  expected = np.zeros((3, 3, 10))
  for n in range(3):
    for m in range(3):
      l_a = pool(audio[m], axis=(0, 1))
      for k, cell in enumerate(image[n].reshape(10, 6)):
        expected[n, m, k] = _cos(cell, l_a)
  np.testing.assert_allclose(similarity, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cells, _normalize(image.reshape(3, 10, 6)), rtol=1e-5)
  np.testing.assert_allclose(embedding, _normalize(pool(audio, axis=(1, 2))), rtol=1e-5)
  sound_map = np.stack([expected[n, n] for n in range(3)])
  mask = noprior.sound_mask(jnp.asarray(sound_map), 0.65, 0.03)
  np.testing.assert_allclose(mask, _sigmoid((sound_map - 0.65) / 0.03), rtol=1e-5, atol=1e-7)
  background = noprior.background_embedding(cells, mask)
  for n in range(3):
    weights = 1 - np.asarray(mask[n])
    unit = _normalize(image[n].reshape(10, 6))
    np.testing.assert_allclose(background[n], weights @ unit / weights.sum(), rtol=1e-4,
                               atol=1e-6)


def test_printed_avc_loss_matches_loop_reference():
  rng = np.random.default_rng(1)
  batch, cells = 4, 6
  similarity = np.tanh(rng.normal(size=(batch, batch, cells))).astype(np.float32)
  mask = _sigmoid((np.stack([similarity[n, n] for n in range(batch)]) - 0.3) / 0.2)
  for temperature in (1.0, 0.2):
    total = 0.0
    for n in range(batch):
      own = similarity[n, n]
      pos = np.sum(mask[n] * own) / np.sum(mask[n])
      neg = np.sum((1 - mask[n]) * own) / np.sum(1 - mask[n])
      for m in range(batch):
        if m != n:
          neg += np.sum(similarity[n, m]) / cells
      pos, neg = pos / temperature, neg / temperature
      total += np.log(np.exp(pos) / (np.exp(pos) + np.exp(neg)))
    got = losses.avc_loss_printed(jnp.asarray(similarity), jnp.asarray(mask), temperature)
    np.testing.assert_allclose(got, -total / batch, rtol=1e-5)


def _random_labels(rng, valid):
  """Random groups over the valid slots, named by their first slot; -1 background."""
  labels = np.full(valid.shape, -1)
  for b in range(valid.shape[0]):
    groups = rng.integers(-1, 3, size=valid.shape[1])
    for g in range(3):
      members = np.flatnonzero(valid[b] & (groups == g))
      if len(members):
        labels[b, members] = members[0]
  return labels


def test_osc_loss_matches_loop_reference():
  rng = np.random.default_rng(2)
  batch, slots, dim = 4, 9, 5
  bank = rng.normal(size=(batch, slots, dim)).astype(np.float32)
  background = rng.normal(size=(batch, dim)).astype(np.float32)
  valid = np.arange(slots)[None] < np.array([[9], [5], [0], [3]])
  labels = _random_labels(rng, valid)
  total = 0.0
  counts = []
  for b in range(batch):
    groups = {}
    for t in range(slots):
      if labels[b, t] >= 0:
        groups.setdefault(labels[b, t], []).append(t)
    counts.append(len(groups))
    clip = 0.0
    for root, members in groups.items():
      assert root == min(members)
      positive = bank[b, members].mean(0)
      negatives = [bank[b, t] for t in range(slots) if valid[b, t] and t not in members]
      negative = np.mean(negatives + [background[b]], axis=0)
      clip += 1 - _cos(bank[b, root], positive) + _cos(bank[b, root], negative)
    total += clip / len(groups) if groups else 0.0
  assert sum(counts) > 3 and 0 in counts  # several objects, and a clip without any
  loss, count = losses.osc_loss(jnp.asarray(bank), jnp.asarray(valid), jnp.asarray(labels),
                                jnp.asarray(background))
  np.testing.assert_allclose(loss, total / batch, rtol=1e-5)
  np.testing.assert_array_equal(count, counts)


@pytest.mark.parametrize('epsilon', [0.0, 0.3])
def test_ioi_while_loop_matches_per_sample_algorithm_1(epsilon):
  rng = np.random.default_rng(3)
  sound_map, features, background = _random_ioi_inputs(rng, batch=6, cells=15, dim=8)
  sound_map[0] = -np.abs(sound_map[0])  # nothing sound-associated: no iteration
  got = jax.jit(noprior.iterative_object_identification, static_argnums=3)(
      sound_map, features, background, epsilon)
  iterations = []
  for b in range(6):
    expected = _reference_ioi(sound_map[b], features[b], background[b], epsilon)
    steps = len(expected)
    iterations.append(steps)
    np.testing.assert_array_equal(got['valid'][b], np.arange(15) < steps)
    np.testing.assert_array_equal(got['index'][b, :steps], [p for p, _, _ in expected])
    if steps:
      np.testing.assert_array_equal(got['region'][b, :steps], [r for _, r, _ in expected])
      np.testing.assert_allclose(got['foreground'][b, :steps], [f for _, _, f in expected],
                                 rtol=1e-5, atol=1e-6)
    assert not np.any(got['region'][b, steps:]) and not np.any(got['foreground'][b, steps:])
    np.testing.assert_allclose(got['background'][b], features[b] @ background[b], rtol=1e-5,
                               atol=1e-6)
  np.testing.assert_array_equal(got['iterations'], iterations)
  assert iterations[0] == 0 and len(set(iterations)) >= 3, iterations
  slot, peak = np.asarray(got['slot']), np.asarray(got['peak'])
  for b in range(6):  # the bank's cells, each with its slot; the other cells N
    bank_cells = np.asarray(got['index'][b, :iterations[b]])
    np.testing.assert_array_equal(np.flatnonzero(peak[b]), np.sort(bank_cells))
    np.testing.assert_array_equal(slot[b, bank_cells], np.arange(iterations[b]))
    np.testing.assert_array_equal(slot[b, ~peak[b]], 15)
  np.testing.assert_allclose(got['gram'], features @ np.swapaxes(features, 1, 2), rtol=1e-5,
                             atol=1e-6)


def test_ioi_when_each_bank_entry_depends_on_the_one_before():
  """A path of cells, S_v decreasing along it, each region holding only the cell's path
  neighbours: Algorithm 1 takes every other cell, and whether a cell is taken depends on
  every cell before it, the longest chain the suppression rounds can meet (N + 1)."""
  cells = 12
  path = np.eye(cells, cells + 1) + np.eye(cells, cells + 1, k=1)  # <u_i, u_j> > 0: |i-j| <= 1
  sound_map = np.linspace(0.9, 0.3, cells, dtype=np.float32)[None]
  features = (sound_map[..., None] * _normalize(path)).astype(np.float32)
  background = np.zeros((1, cells + 1), np.float32)  # R_n = 0
  got = jax.jit(noprior.iterative_object_identification, static_argnums=3)(
      sound_map, features, background, 0.1)
  expected = _reference_ioi(sound_map[0], features[0], background[0], 0.1)
  assert [p for p, _, _ in expected] == list(range(0, cells, 2))
  np.testing.assert_array_equal(got['index'][0, :len(expected)], [p for p, _, _ in expected])
  np.testing.assert_array_equal(got['region'][0, :len(expected)], [r for _, r, _ in expected])
  assert int(got['iterations'][0]) == len(expected)


def test_ioi_takes_the_lower_cell_first_among_equal_sound_values():
  """Algorithm 1's argmax on ties: the lowest index (orthogonal cells, so every cell with
  S_v > epsilon is taken, and only the order is in question)."""
  sound_map = np.array([[0.5, 0.9, 0.5, 0.9, 0.2, 0.9]], np.float32)
  features = sound_map[..., None] * np.eye(6, dtype=np.float32)
  got = noprior.iterative_object_identification(sound_map, features, np.zeros((1, 6)), 0.3)
  np.testing.assert_array_equal(got['index'][0, :5], [1, 3, 5, 0, 2])
  np.testing.assert_array_equal(got['slot'][0], [3, 0, 4, 1, 6, 2])  # cell 4: no slot
  expected = _reference_ioi(sound_map[0], features[0], np.zeros(6, np.float32), 0.3)
  assert [p for p, _, _ in expected] == [1, 3, 5, 0, 2]


def test_ioi_refuses_a_negative_stop_threshold():
  with pytest.raises(ValueError, match='epsilon must be >= 0'):
    noprior.iterative_object_identification(np.ones((1, 3)), np.ones((1, 3, 2)),
                                            np.zeros((1, 2)), -0.1)


def test_ioi_jit_with_samples_needing_different_iteration_counts():
  """One sample stops at once, one after one step, one after every cell: the loop keeps
  going for the slowest while the finished ones keep their banks."""
  cells, dim = 6, 6
  unit = np.eye(cells, dim, dtype=np.float32)  # orthogonal cells: each region is its cell
  sound_map = np.array([[-0.2] * 6, [0.9, -0.1, -0.3, -0.5, -0.2, -0.4],
                        [0.2, 0.9, 0.5, 0.7, 0.3, 0.6]], np.float32)
  features = sound_map[..., None] * unit
  background = np.zeros((3, dim), np.float32)
  ioi = jax.jit(noprior.iterative_object_identification, static_argnums=3)
  got = ioi(sound_map, features, background, 0.0)
  np.testing.assert_array_equal(got['iterations'], [0, 1, 6])
  np.testing.assert_array_equal(got['index'][2], [1, 3, 5, 2, 4, 0])  # decreasing S_v
  np.testing.assert_array_equal(got['region'][2], np.eye(6, dtype=bool)[[1, 3, 5, 2, 4, 0]])
  np.testing.assert_array_equal(got['valid'][1], [True] + [False] * 5)
  assert not got['valid'][0].any()  # no foreground at the start: no bank entries, no NaN
  assert all(np.isfinite(np.asarray(v, np.float32)).all() for v in got.values())
  compiled = ioi._cache_size()  # pylint: disable=protected-access
  again = ioi(sound_map[::-1].copy(), features[::-1].copy(), background, 0.0)
  np.testing.assert_array_equal(again['iterations'], [6, 1, 0])
  assert ioi._cache_size() == compiled  # pylint: disable=protected-access  (no recompile)
  for b in range(3):
    expected = _reference_ioi(sound_map[b], features[b], background[b], 0.0)
    np.testing.assert_array_equal(got['index'][b, :len(expected)], [p for p, _, _ in expected])


def test_connected_components_match_union_find():
  rng = np.random.default_rng(4)
  batch, size = 5, 24
  upper = np.triu(rng.random((batch, size, size)) < 0.06, 1)
  adjacency = upper | np.transpose(upper, (0, 2, 1))
  adjacency[0] = False  # all isolated
  chain = np.eye(size, k=1, dtype=bool)[::-1, ::-1]  # a path 23-22-...-0: log2 rounds
  adjacency[1] = chain | chain.T
  got = jax.jit(noprior.connected_components)(adjacency)
  for b in range(batch):
    parent = list(range(size))

    def find(x):
      while parent[x] != x:
        x = parent[x]
      return x

    for i in range(size):
      for j in range(i):
        if adjacency[b, i, j]:
          a, c = find(i), find(j)
          parent[max(a, c)] = min(a, c)
    np.testing.assert_array_equal(got[b], [find(i) for i in range(size)])
  np.testing.assert_array_equal(got[0], np.arange(size))
  np.testing.assert_array_equal(got[1], np.zeros(size))


def _union_find_over_ranks(adjacency, rank, active):
  """Per node: the smallest rank in its component of the graph on the active nodes
  (union-find over ranks, the earlier root kept); inactive nodes keep their rank."""
  parent = {int(r): int(r) for r in rank[active]}

  def find(x):
    while parent[x] != x:
      x = parent[x]
    return x

  for i, j in zip(*np.nonzero(adjacency)):
    if active[i] and active[j]:
      x, y = find(rank[i]), find(rank[j])
      parent[max(x, y)] = min(x, y)
  return [find(rank[i]) if active[i] else rank[i] for i in range(len(rank))]


def test_connected_components_name_components_by_their_smallest_rank():
  rng = np.random.default_rng(9)
  batch, size = 4, 20
  upper = np.triu(rng.random((batch, size, size)) < 0.08, 1)
  adjacency = upper | np.transpose(upper, (0, 2, 1))
  rank = np.stack([rng.permutation(size) for _ in range(batch)]).astype(np.int32)
  got = np.asarray(jax.jit(noprior.connected_components)(adjacency, rank))
  for b in range(batch):
    np.testing.assert_array_equal(
        got[b], _union_find_over_ranks(adjacency[b], rank[b], np.ones(size, bool)))
  assert len(np.unique(got)) < batch * size  # some components join several nodes


def test_connected_components_leave_inactive_nodes_out():
  """Inactive nodes join nothing and bridge nothing: a path a - x - b with x inactive
  is two components; ranks of the active nodes only need to be distinct among them."""
  path = np.eye(3, k=1, dtype=bool)
  got = noprior.connected_components((path | path.T)[None], np.array([[0, 5, 1]], np.int32),
                                     np.array([[True, False, True]]))
  np.testing.assert_array_equal(got, [[0, 5, 1]])
  rng = np.random.default_rng(10)
  batch, size = 6, 24
  upper = np.triu(rng.random((batch, size, size)) < 0.1, 1)
  adjacency = upper | np.transpose(upper, (0, 2, 1))
  active = rng.random((batch, size)) < 0.6
  # Active nodes ranked 0, 1, ... in a random order, the others all `size` (as slots).
  rank = np.full((batch, size), size, np.int32)
  for b in range(batch):
    chosen = rng.permutation(np.flatnonzero(active[b]))
    rank[b, chosen] = np.arange(len(chosen))
  got = np.asarray(jax.jit(noprior.connected_components)(adjacency, rank, active))
  for b in range(batch):
    np.testing.assert_array_equal(got[b], _union_find_over_ranks(adjacency[b], rank[b],
                                                                 active[b]))
  with_all = np.asarray(jax.jit(noprior.connected_components)(adjacency, rank))
  assert np.any(got != with_all)  # the inactive nodes did bridge components


def test_connected_components_end_on_a_one_way_edge():
  """`cell_similarities` relies on the Gram's symmetry; were an edge one-way, the loop
  still ends, and only the node with the edge takes the other's label."""
  one_way = np.array([[[False, True], [False, False]]])  # 0 -> 1
  np.testing.assert_array_equal(noprior.connected_components(one_way), [[0, 1]])
  np.testing.assert_array_equal(
      noprior.connected_components(one_way, np.array([[1, 0]], np.int32)), [[0, 0]])


@pytest.mark.parametrize('batch,cells,dim', [(8, 49, 512), (8, 98, 512), (3, 196, 64),
                                             (2, 300, 33), (5, 7, 1)])
def test_the_gram_of_f_hat_is_exactly_symmetric(batch, cells, dim):
  """What `cell_similarities` relies on: XLA's Gram of F_hat with itself has equal
  entries (i, j) and (j, i), bit for bit."""
  rng = np.random.default_rng(cells)
  features = (rng.normal(size=(batch, cells, dim)) * rng.random((batch, cells, 1))).astype(
      np.float32)
  gram = np.asarray(jax.jit(noprior.iterative_object_identification, static_argnums=3)(
      features[..., 0], features, features[:, 0], 0.1)['gram'])
  np.testing.assert_array_equal(gram, np.swapaxes(gram, 1, 2))


def test_connected_components_match_scipy_on_random_similarities():
  csgraph = pytest.importorskip('scipy.sparse.csgraph')
  rng = np.random.default_rng(7)
  features = rng.normal(size=(6, 30, 8))
  features /= np.linalg.norm(features, axis=-1, keepdims=True)
  similarity = features @ np.transpose(features, (0, 2, 1))
  adjacency = similarity > np.linspace(0.2, 0.7, 6)[:, None, None]  # sparse to dense
  got = np.asarray(jax.jit(noprior.connected_components)(adjacency))
  for b in range(6):
    count, labels = csgraph.connected_components(adjacency[b], directed=False)
    # Same partition: equal labels exactly where scipy's labels are equal.
    np.testing.assert_array_equal(got[b][:, None] == got[b][None],
                                  labels[:, None] == labels[None])
    assert len(np.unique(got[b])) == count


def _bank_as_ioi(bank, valid, background):
  """An `iterative_object_identification` dict whose cells are the bank's entries, in
  slot order: F_hat = bank [B, T, D], the valid slots the bank's cells."""
  batch, slots, _ = bank.shape
  order = np.broadcast_to(np.arange(slots, dtype=np.int32), (batch, slots))
  return dict(gram=jnp.asarray(np.einsum('bsd,btd->bst', bank, bank), jnp.float32),
              background=jnp.asarray(np.einsum('btd,bd->bt', bank, background), jnp.float32),
              peak=jnp.asarray(valid), valid=jnp.asarray(valid),
              slot=jnp.asarray(np.where(valid, order, slots)),
              index=jnp.asarray(np.where(valid, order, 0)))


def test_identify_objects_matches_union_find_reference():
  rng = np.random.default_rng(5)
  batch, slots, dim = 4, 16, 6
  centres = _normalize(rng.normal(size=(3, dim)))  # two objects and the background
  bank = centres[rng.integers(0, 3, size=(batch, slots))] + 0.35 * rng.normal(
      size=(batch, slots, dim))
  background = centres[2] + 0.1 * rng.normal(size=(batch, dim))
  valid = np.arange(slots)[None] < np.array([[16], [9], [1], [0]])
  labels = noprior.identify_objects(_bank_as_ioi(bank, valid, background),
                                    jnp.asarray(background, jnp.float32), 0.7, 0.6)
  for b in range(batch):
    np.testing.assert_array_equal(
        labels[b], _union_find_labels(bank[b], valid[b], background[b], 0.7, 0.6))
  assert np.sum(np.asarray(noprior.object_roots(labels))[0]) >= 2  # several objects
  assert np.any(valid & (np.asarray(labels) < 0))  # and cells dropped as background


def test_identified_objects_and_their_maps_end_to_end():
  rng = np.random.default_rng(6)
  sound_map, features, background = _random_ioi_inputs(rng, batch=3, cells=12, dim=4)

  @jax.jit
  def pipeline(sound_map, features, background):
    ioi = noprior.iterative_object_identification(sound_map, features, background, 0.0)
    similarities = noprior.cell_similarities(ioi, background)
    labels = noprior.identify_objects(ioi, background, 0.7, 0.3)
    return ioi, similarities, labels, *noprior.object_maps(ioi, labels, max_objects=4)

  ioi, (similarity, with_background), labels, object_maps, valid = jax.device_get(
      pipeline(sound_map, features, background))
  bank = np.take_along_axis(features, ioi['index'][..., None], axis=1)
  for b in range(3):  # the cosines read off Algorithm 1's inner products
    unit = _normalize(features[b])
    np.testing.assert_allclose(similarity[b], unit @ unit.T, atol=1e-5)
    np.testing.assert_allclose(with_background[b], unit @ _normalize(background[b]),
                               atol=1e-5)
  assert object_maps.shape == (3, 4, 12) and valid.shape == (3, 4)
  assert np.all((object_maps >= 0) & (object_maps <= 1))
  for b in range(3):
    np.testing.assert_array_equal(labels[b], _union_find_labels(
        bank[b], ioi['valid'][b], background[b], 0.7, 0.3))
    roots = [t for t in range(12) if labels[b, t] == t]
    assert list(valid[b]) == [k < len(roots) for k in range(4)]
    for k, root in enumerate(roots[:4]):
      members = [t for t in range(12) if labels[b, t] == root]
      scores = features[b] @ (bank[b, members] - background[b]).T  # R_p^t - R_n
      np.testing.assert_allclose(object_maps[b, k], (scores.max(1) + 2) / 4, rtol=1e-5)
      union = np.any(ioi['region'][b][members], axis=0)
      assert np.all(union[object_maps[b, k] > 0.5])  # positive only on the object's regions
    np.testing.assert_array_equal(object_maps[b, len(roots):], 0.0)
  assert np.sum(valid) >= 4 and np.any(np.sum(valid, axis=1) >= 2)


def test_osc_image_gradient_switch_changes_gradients_not_values():
  """`osc_image_gradient=False` (the release's frozen image trunk): L_osc has the same
  value and the same gradient in the audio features, and none in the image features."""
  rng = np.random.default_rng(8)
  image = jnp.asarray(np.abs(rng.normal(size=(3, 12, 6))), jnp.float32)  # post-ReLU cells
  audio = jnp.asarray(np.abs(rng.normal(size=(3, 2, 2, 6))), jnp.float32)

  def osc(image, audio, image_gradient):
    out = noprior.identify_sources(image, audio, audio_pool='mean', mask_alpha=0.65,
                                   mask_omega=0.03, epsilon=0.1, tau1=0.7, tau2=0.6,
                                   osc_image_gradient=image_gradient)
    return losses.osc_loss(out['bank'], out['ioi']['valid'], out['object_labels'],
                           out['background'])[0]

  grad = jax.jit(jax.value_and_grad(osc, argnums=(0, 1)), static_argnums=2)
  (literal, (image_literal, audio_literal)) = grad(image, audio, True)
  (frozen, (image_frozen, audio_frozen)) = grad(image, audio, False)
  assert float(literal) > 0
  np.testing.assert_allclose(frozen, literal, rtol=1e-6)
  np.testing.assert_allclose(audio_frozen, audio_literal, rtol=1e-5, atol=1e-7)
  assert float(jnp.max(jnp.abs(audio_frozen))) > 0
  np.testing.assert_array_equal(image_frozen, 0.0)
  assert float(jnp.max(jnp.abs(image_literal))) > 0


def _tiny_config():
  config = noprior_config.get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.model.update(dim=32, width=4, stem_pool=False, image_last_stride=2,
                      max_objects=3)  # dim = 8 * width
  return config


@pytest.fixture(scope='module')
def tiny():
  config = _tiny_config()
  method = methods.get_method('noprior')
  model = method.build_model(config)
  rng = np.random.default_rng(7)
  image = jnp.asarray(rng.integers(0, 256, size=(4, 32, 64, 3)), jnp.uint8)  # duets
  spectrogram = jnp.asarray(rng.normal(size=(4, 32, 24, 1)), jnp.float32)
  # An 'rbg' key: threefry initializers of every parameter shape compile 3-4x slower.
  variables = jax.jit(functools.partial(model.init, train=True))(
      jax.random.key(0, impl='rbg'), image, spectrogram)
  return config, method, model, variables, image, spectrogram


def test_model_forward_shapes_and_loss_gradients(tiny):
  config, method, model, variables, image, spectrogram = tiny

  def terms(params):
    outputs, _ = model.apply({**variables, 'params': params}, image, spectrogram,
                             train=True, mutable=['batch_stats'])
    loss, metrics = method.loss(outputs, config, 0)
    return loss, (metrics, outputs)

  def with_last_layers(params, last):
    return {name: {**params[name], 'trunk': {**params[name]['trunk'], 'layer4_1': last[name]}}
            for name in params}

  def osc_term(last, params):
    return terms(with_last_layers(params, last))[1][0]['loss_osc']

  @jax.jit
  def gradients(params):
    """Gradients of L_total (Eq. 5) and, through the encoders' last blocks (a cheap
    backward pass), of L_osc alone."""
    grads, (metrics, outputs) = jax.grad(terms, has_aux=True)(params)
    last = {name: params[name]['trunk']['layer4_1'] for name in params}
    return metrics, outputs, grads, jax.grad(osc_term)(last, params)

  metrics, outputs, grads, osc_grads = gradients(variables['params'])
  cells = 2 * 4  # 32x64 at stride 16
  assert outputs['similarity'].shape == (4, 4, cells)
  assert outputs['bank'].shape == (4, cells, 32)
  assert outputs['object_labels'].shape == (4, cells)
  assert np.any(np.asarray(outputs['object_labels']) >= 0)  # OSC has objects to act on
  np.testing.assert_allclose(metrics['loss'], metrics['loss_avc'] + metrics['loss_osc'],
                             rtol=1e-6)  # Eq. 5, lambdas 1
  assert float(metrics['loss_osc']) > 0 and float(metrics['objects_per_sample']) > 0
  assert not config.model.osc_image_gradient  # L_osc trains the audio encoder only
  for tree, encoders in ((grads, ('image_encoder', 'audio_encoder')),
                         (osc_grads, ('audio_encoder',))):
    for encoder in ('image_encoder', 'audio_encoder'):
      leaves = jax.tree_util.tree_leaves(tree[encoder])
      assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
      total = sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves)
      assert (total > 0) == (encoder in encoders), encoder


def test_localize_shapes_and_calibrated_object_maps(tiny):
  config, method, model, variables, image, spectrogram = tiny

  @jax.jit
  def run(variables, image, spectrogram):
    return (method.localize(model, variables, image, spectrogram, config),
            model.apply(variables, image, spectrogram, method=model.localize))

  outputs, raw = run(variables, image[:, :, :32], spectrogram)
  assert outputs['heatmaps']['sam'].shape == (4, 32, 32)
  assert outputs['lowres']['sam'].shape == (4, 2, 2)
  assert outputs['object_maps'].shape == (4, 3, 32, 32)
  assert outputs['object_valid'].shape == (4, 3) and outputs['object_valid'].dtype == bool
  objects = np.asarray(outputs['object_maps'])
  assert np.all((objects >= 0) & (objects <= 1))
  np.testing.assert_array_equal(outputs['object_valid'],
                                np.arange(3)[None] < np.minimum(raw['num_objects'], 3)[:, None])
  assert np.all(objects[~np.asarray(outputs['object_valid'])] == 0)
  np.testing.assert_allclose(outputs['heatmaps']['sam'],
                             maps.upsample_bicubic(np.asarray(raw['sound_map']), (32, 32)),
                             rtol=1e-5, atol=1e-6)


def test_check_config():
  method = methods.get_method('noprior')
  config = noprior_config.get_config('synthetic')
  method.check_config(config)
  for field, value in (('model.ioi_epsilon', -0.1), ('model.mask_omega', 0.0),
                       ('model.tau1', 1.5), ('model.max_objects', 0),
                       ('model.audio_pool', 'avg'),
                       ('loss.temperature', 0.0), ('loss.lambda_osc', -1.0)):
    bad = noprior_config.get_config('synthetic')
    block, name = field.split('.')
    bad[block][name] = value
    with pytest.raises(config_lib.ConfigError, match=f'config.{field} '):
      method.check_config(bad)


def test_sound_map_is_never_negative_with_the_default_encoders(tiny):
  config, _, model, variables, image, spectrogram = tiny
  assert not config.model.projection
  assert 'projection' not in variables['params']['image_encoder']
  outputs, _ = model.apply(variables, image, -spectrogram, train=True, mutable=['batch_stats'])
  similarity = np.asarray(outputs['similarity'])
  assert similarity.min() >= 0.0 and similarity.max() > 0.0  # post-ReLU cosines


def _planted_scene(rng, sources, grid=(4, 8), dim=24, noise=0.05):
  """Post-ReLU features of a scene: object k on its own block of cells with its own
  direction (disjoint supports), the rest background; the audio holds every source.
  Returns image cells [1, N, D], audio map [1, 2, 2, D], cells of each object."""
  height, width = grid
  directions = np.zeros((sources + 1, dim))
  for k in range(sources + 1):  # k = sources is the background
    directions[k, k * dim // (sources + 1):(k + 1) * dim // (sources + 1)] = 1.0
  owner = np.full(height * width, sources)
  columns = np.arange(height * width) % width
  for k in range(sources):
    owner[(columns >= 3 * k) & (columns < 3 * k + 2)] = k  # 2-column stripes
  cells = directions[owner] + noise * rng.uniform(size=(height * width, dim))
  audio = directions[:sources].sum(0) + noise * rng.uniform(size=(2, 2, dim))
  objects = [np.flatnonzero(owner == k) for k in range(sources)]
  return (jnp.asarray(cells[None], jnp.float32), jnp.asarray(audio[None], jnp.float32),
          objects)


def test_a_planted_duet_is_counted_as_two_objects_on_their_cells():
  config = noprior_config.get_config()
  model = config.model
  for sources in (1, 2):
    cells, audio, objects = _planted_scene(np.random.default_rng(sources), sources)
    out = noprior.identify_sources(
        cells, audio, audio_pool=model.audio_pool, mask_alpha=model.mask_alpha,
        mask_omega=model.mask_omega, epsilon=model.ioi_epsilon, tau1=model.tau1,
        tau2=model.tau2, osc_image_gradient=model.osc_image_gradient)
    labels = np.asarray(out['object_labels'][0])
    roots = np.flatnonzero(labels == np.arange(len(labels)))
    assert len(roots) == sources
    found = sorted(tuple(np.flatnonzero(np.any(np.asarray(out['ioi']['region'][0])[
        labels == root], axis=0))) for root in roots)
    assert found == sorted(tuple(o) for o in objects)
