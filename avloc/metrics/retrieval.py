"""Class-level cross-modal retrieval Recall@K on VGG-SS (JSA Table 4, Tables 9-11).

JSA Sec. 4.2: image and audio target-slot embeddings are compared by cosine similarity,
"the similarities are ranked in descending order, and we calculate Recall@K performance
using the category labels from the top-K retrieved audio or images" (protocol of
Senocak et al., ICCV 2023, whose table JSA extends). Neither the JSA release nor
kaistmm/SSLalignment publishes the retrieval code, so avloc takes the plain reading:

- the gallery is the whole test set of the other modality, the query's own pair included
  (it is an item of the other modality, not the query itself, and nothing in either paper
  removes it);
- a query is a hit at K when any of its top-K items has the query's class label;
- equal similarities are ranked by gallery index (a stable sort), so results are
  deterministic.
"""

from collections.abc import Sequence

import numpy as np

# Queries scored at once; bounds the [chunk, N] similarity block (VGG-SS has N = 5158).
_QUERY_CHUNK = 512


def _unit_rows(x, name):
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name} must be [N, D]; got shape {x.shape}')
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.maximum(norms, 1e-12)


def _first_hit_ranks(queries, gallery, query_labels, gallery_labels) -> np.ndarray:
  """0-based rank of the best-ranked same-class gallery item for each query -> [Q].

  With ranking by (-similarity, index), an item r is preceded by every item of higher
  similarity and by the items of equal similarity and lower index; the first same-class
  item is the one of highest similarity, the lowest index among ties.
  """
  ranks = np.empty(len(queries), np.int64)
  index = np.arange(len(gallery))
  for start in range(0, len(queries), _QUERY_CHUNK):
    similarity = queries[start:start + _QUERY_CHUNK] @ gallery.T
    same_class = query_labels[start:start + _QUERY_CHUNK, None] == gallery_labels[None, :]
    best = np.where(same_class, similarity, -np.inf).max(axis=1, keepdims=True)
    first = np.where(same_class & (similarity == best), index, len(gallery)).min(axis=1)
    ahead = (similarity > best) | ((similarity == best) & (index < first[:, None]))
    ranks[start:start + _QUERY_CHUNK] = ahead.sum(axis=1)
  return ranks


def recall_at_k(image_embeddings, audio_embeddings, labels,
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Class-level Recall@K in both directions, fractions in [0, 1].

  image_embeddings [N, D] and audio_embeddings [N, D] are paired by row; labels [N] are
  their class labels (any comparable values). Returns {'a2i_r{k}': audio queries
  retrieving images, 'i2a_r{k}': image queries retrieving audio} for each k in ks.
  """
  images = _unit_rows(image_embeddings, 'image_embeddings')
  audio = _unit_rows(audio_embeddings, 'audio_embeddings')
  labels = np.asarray(labels)
  if not len(images) == len(audio) == len(labels) or labels.ndim != 1:
    raise ValueError(f'need paired rows: {len(images)} image and {len(audio)} audio '
                     f'embeddings, labels of shape {labels.shape}')
  if len(labels) == 0:
    raise ValueError('recall_at_k needs at least one pair')
  for k in ks:
    if not 1 <= k <= len(labels):
      raise ValueError(f'k={k} is outside 1..{len(labels)} (the gallery size)')
  ranks = {'a2i': _first_hit_ranks(audio, images, labels, labels),
           'i2a': _first_hit_ranks(images, audio, labels, labels)}
  return {f'{direction}_r{k}': float(np.mean(rank < k))
          for direction, rank in ranks.items() for k in ks}


def chance_recall_at_k(labels, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
  """Expected class-level Recall@K of a uniformly random ranking, {k: fraction}, the
  same in both directions: a query of class c, among N gallery items of which n_c are of
  class c (its own pair included), misses its top K with probability
  C(N - n_c, K) / C(N, K) = prod_{i<K} (N - n_c - i) / (N - i). With 12 balanced
  classes R@1 is 1/12 = 8.3 %, far above the 1/N of instance-level retrieval."""
  labels = np.asarray(labels)
  total = len(labels)
  _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  same = counts[inverse].astype(np.float64)  # n_c of each query
  chance = {}
  for k in ks:
    if not 1 <= k <= total:
      raise ValueError(f'k={k} is outside 1..{total} (the gallery size)')
    miss = np.prod([np.clip(total - same - i, 0, None) / (total - i) for i in range(k)], axis=0)
    chance[k] = float(np.mean(1.0 - miss))
  return chance
