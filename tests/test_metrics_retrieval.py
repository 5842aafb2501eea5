"""avloc.metrics.retrieval against a hand case and a sort-every-row brute force."""

import numpy as np
import pytest

from avloc.metrics import retrieval


def _reference_recall(images, audio, labels, ks):
  """Rank the whole gallery for every query by (-cosine, index) and look at the top k."""
  def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)

  images, audio = unit(np.asarray(images, float)), unit(np.asarray(audio, float))
  out = {}
  for name, queries, gallery in (('a2i', audio, images), ('i2a', images, audio)):
    for k in ks:
      hits = 0
      for q in range(len(queries)):
        similarity = [float(queries[q] @ gallery[g]) for g in range(len(gallery))]
        ranked = sorted(range(len(gallery)), key=lambda g: (-similarity[g], g))
        hits += any(labels[g] == labels[q] for g in ranked[:k])
      out[f'{name}_r{k}'] = hits / len(queries)
  return out


def test_hand_case():
  # Images on the unit circle at 0, 90, 180 degrees; labels cat, dog, cat.
  images = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  # Audio 0 (cat) points at image 1 (dog), then image 0 (cat); audio 1 (dog) at image 1;
  # audio 2 (cat) at image 1, then image 2 (cat).
  audio = np.array([[0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]])
  labels = np.array(['cat', 'dog', 'cat'])
  got = retrieval.recall_at_k(images, audio, labels, ks=(1, 2))
  assert got['a2i_r1'] == pytest.approx(1 / 3)  # only the dog query hits at rank 1
  assert got['a2i_r2'] == 1.0
  # Image 0 (cat): audio 0 (0.6) > audio 1 (0) > audio 2 (-0.6): hit. Image 1 (dog):
  # audio 1 (1.0) first: hit. Image 2 (cat): audio 2 (0.6) first: hit.
  assert got['i2a_r1'] == 1.0 and got['i2a_r2'] == 1.0
  assert set(got) == {'a2i_r1', 'a2i_r2', 'i2a_r1', 'i2a_r2'}


def test_own_pair_counts_as_a_retrieved_item():
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(20, 8))
  got = retrieval.recall_at_k(embeddings, embeddings * 3.0, np.arange(20), ks=(1,))
  assert got == {'a2i_r1': 1.0, 'i2a_r1': 1.0}  # every query's best match is its own pair


def test_matches_brute_force_with_ties():
  rng = np.random.default_rng(1)
  # Entries +-1 in 16 dimensions: unit vectors with entries +-1/4, exact dot products and
  # many exactly tied similarities (ties broken by gallery index).
  images = rng.choice([-1.0, 1.0], size=(60, 16))
  audio = rng.choice([-1.0, 1.0], size=(60, 16))
  audio[10:20] = images[:10]  # some exact duplicates across modalities
  labels = rng.integers(0, 7, size=60)
  ks = (1, 5, 10)
  got = retrieval.recall_at_k(images, audio, labels, ks)
  expected = _reference_recall(images, audio, labels, ks)
  assert got == pytest.approx(expected, abs=0)


def test_matches_brute_force_on_random_embeddings_across_chunks(monkeypatch):
  monkeypatch.setattr(retrieval, '_QUERY_CHUNK', 7)
  rng = np.random.default_rng(2)
  images, audio = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
  labels = [f'class{c}' for c in rng.integers(0, 4, size=40)]
  got = retrieval.recall_at_k(images, audio, labels, ks=(1, 3, 40))
  assert got == _reference_recall(images, audio, labels, ks=(1, 3, 40))
  assert got['a2i_r40'] == got['i2a_r40'] == 1.0


def test_single_pair_and_errors():
  assert retrieval.recall_at_k([[1.0, 0.0]], [[0.0, 1.0]], [3], ks=(1,)) == {
      'a2i_r1': 1.0, 'i2a_r1': 1.0}
  with pytest.raises(ValueError, match=r'k=5 is outside 1\.\.3'):
    retrieval.recall_at_k(np.eye(3), np.eye(3), [0, 1, 2], ks=(1, 5))
  with pytest.raises(ValueError, match='need paired rows'):
    retrieval.recall_at_k(np.eye(3), np.eye(2, 3), [0, 1, 2])
  with pytest.raises(ValueError, match=r'image_embeddings must be \[N, D\]'):
    retrieval.recall_at_k(np.zeros(3), np.zeros((3, 1)), [0, 1, 2])
