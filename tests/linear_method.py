"""A linear audio-visual model registered as method 'linear', so that tests of the
trainer's and evaluator's fault handling (kills, preemption, corrupt checkpoints, NaN
losses, resumed logs) compile in a second instead of the ~45 s of the smallest JSA.

It is a real model: a 1x1 projection of the pixels and of the mean spectrogram into D
dimensions, an InfoNCE loss over the batch, and a heatmap of pixel-audio similarity.

  python -m tests.linear_method --config=tests/linear_method.py --workdir=DIR ...
runs avloc.main with the method registered (`get_config` is the config file); the
variant `tests/linear_method.py:jsa` is the same run with tests/test_train.py's tiny JSA,
for `python -m avloc.main` itself.
"""

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax

from avloc import methods
from configs import jsa as jsa_config

NAME = 'linear'


class LinearAV(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, image, spectrogram, train: bool = False):
    """image uint8 [B, H, W, 3], spectrogram [B, F, T, 1] -> pixel features [B, H, W, D],
    audio embedding [B, D]."""
    del train
    pixels = nn.Dense(self.dim, name='image')(image.astype(jnp.float32) / 255.0 - 0.5)
    audio = nn.Dense(self.dim, name='audio')(spectrogram.mean(axis=(2, 3)))
    return {'pixels': pixels, 'audio': audio}

  def localize(self, image, spectrogram):
    return self(image, spectrogram)


def _loss(outputs, config, epoch):
  del epoch
  image = outputs['pixels'].mean(axis=(1, 2))
  logits = image @ outputs['audio'].T / config.loss.tau
  labels = jnp.arange(logits.shape[0])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {'loss': loss}


def _localize(model, variables, image, spectrogram, config):
  del config
  outputs = model.apply(variables, image, spectrogram, method=model.localize)
  heatmap = jnp.einsum('bhwd,bd->bhw', outputs['pixels'], outputs['audio'])
  return dict(heatmaps={'map': heatmap}, lowres={'map': heatmap},
              image_embedding=outputs['pixels'].mean(axis=(1, 2)),
              audio_embedding=outputs['audio'])


METHOD = methods.Method(NAME, lambda config: LinearAV(config.model.dim), _loss, _localize,
                        lambda config: None, lambda config: 'map')


def register() -> None:
  methods._METHODS[NAME] = METHOD  # pylint: disable=protected-access


def get_config(variant: str = NAME) -> ml_collections.ConfigDict:
  """The synthetic JSA config shrunk to 32 px frames, 0.5 s clips, batch 8, no input
  workers and no evaluation, with the linear model (or, variant 'jsa', a width-4 JSA);
  tests set data.root, data.train_split and the eval fields."""
  config = jsa_config.get_config('synthetic')
  config.data.image.update(size=32, train_resize=36)
  config.data.audio.update(seconds=0.5, n_fft=128, win_length=128, hop_length=64)
  config.data.num_workers = 0
  if variant == NAME:
    config.method = NAME
    config.model.dim = 8
    config.optim.update(learning_rate=1e-2, schedule='constant', warmup_steps=0)
  else:
    config.model.update(dim=16, width=4, mlp_dim=32, iters=2, stem_pool=False)
    config.loss.k = 3
  config.train.update(batch_size=8, epochs=1, log_every_steps=1, checkpoint_every_steps=2)
  config.eval.update(splits='', best_metric='', batch_size=8, num_visualize=2)
  return config


if __name__ == '__main__':
  register()
  from avloc import main  # pylint: disable=g-import-not-at-top
  main.run()
