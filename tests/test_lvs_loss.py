"""The LVS tri-map loss (avloc/losses/lvs.py) against a transcription of the releases."""

import jax
import jax.numpy as jnp
import numpy as np

from avloc.losses import lvs
from avloc.losses import noprior as noprior_losses
from configs import noprior as noprior_config


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _release_lvs(similarity, epsilon, epsilon2, tau, temperature):
  """NumPy transcription of VisualAIKHU/NoPrior_MultiSSL `model_base.py`,
  `NoPriorVSSLModel.lvs_loss` (PosLogits, Alllogits) + `NoPriorVSSLModel.lvs` with
  `trimap=1` (the same lines as LVS's `model.py` `AVENet.forward`), float64.
  similarity [B, B, N]: Alllogits[n, m] = S^{n->m}."""
  batch = similarity.shape[0]
  mask = 1 - 100 * np.eye(batch)  # self.mask
  pos_logits = np.stack([similarity[n, n] for n in range(batch)])[:, None]  # [B, 1, N]
  all_logits = similarity  # [B, B, N]
  pos = _sigmoid((pos_logits - epsilon) / tau)
  neg = 1 - _sigmoid((pos_logits - epsilon2) / tau)
  pos_all = _sigmoid((all_logits - epsilon) / tau)
  sim1 = (pos * pos_logits).sum(-1) / pos.sum(-1)
  sim = ((pos_all * all_logits).sum(-1) / pos_all.sum(-1)) * mask
  sim2 = (neg * pos_logits).sum(-1) / neg.sum(-1)
  logits = np.concatenate([sim1, sim, sim2], axis=1) / temperature
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1,
                                     keepdims=True)) - logits.max(1, keepdims=True)
  return -np.mean(log_probs[:, 0])  # F.cross_entropy(logits, zeros)


def _post_relu_similarities(rng, batch, cells):
  """Cosines of non-negative features: in [0, 1], some cells above 0.65."""
  return rng.uniform(0.05, 0.95, size=(batch, batch, cells))


def test_lvs_loss_equals_the_release_transcription():
  rng = np.random.default_rng(0)
  for batch, cells, temperature in ((2, 9, 0.07), (6, 49, 0.07), (5, 12, 0.5)):
    similarity = _post_relu_similarities(rng, batch, cells)
    expected = _release_lvs(similarity, 0.65, 0.4, 0.03, temperature)
    got = lvs.lvs_loss(jnp.asarray(similarity, jnp.float32), 0.65, 0.4, 0.03, temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_noprior_avc_is_the_lvs_loss_with_its_config():
  config = noprior_config.get_config()
  assert config.loss.avc_form == 'lvs' and config.loss.temperature == 0.07
  similarity = _post_relu_similarities(np.random.default_rng(1), 4, 49)
  got = noprior_losses.avc_loss(jnp.asarray(similarity, jnp.float32), config.model, config.loss)
  # The release's --epsilon 0.65, --epsilon_margin 0.25, --tau 0.03, --logit_temperature 0.07.
  np.testing.assert_allclose(got, _release_lvs(similarity, 0.65, 0.4, 0.03, 0.07), rtol=1e-5)


def test_lvs_gradient_pulls_the_positive_up_and_the_negatives_down():
  similarity = jnp.asarray(_post_relu_similarities(np.random.default_rng(2), 3, 16),
                           jnp.float32)
  grad = jax.grad(lvs.lvs_loss)(similarity, 0.65, 0.4, 0.03, 0.07)
  assert np.all(np.isfinite(grad))
  own = np.stack([np.asarray(grad)[n, n] for n in range(3)])
  others = np.asarray(grad)[~np.eye(3, dtype=bool)]
  # Raising the own map's strongest cell raises Pos (loss down); raising another clip's
  # map raises a negative (loss up).
  peaks = np.argmax(np.stack([np.asarray(similarity)[n, n] for n in range(3)]), axis=1)
  assert np.all(own[np.arange(3), peaks] < 0)
  assert np.all(others.sum(-1) > 0)
