r"""avloc against the official PyTorch releases on the same machine, interleaved in one
process; prints tables of speed ratios (> 1: avloc is faster).

  python benchmarks/vs_official.py OFFICIAL_JSA_DIR [--noprior=OFFICIAL_NOPRIOR_DIR]
  python benchmarks/vs_official.py ../official/jsa --batch_sizes=8,16 --repeats=5 --changes

OFFICIAL_JSA_DIR is a checkout of github.com/InhoKim429/JSA (model_slot.py, resnet.py,
utils.py are imported from it; nothing of it is copied here), --noprior one of
github.com/VisualAIKHU/NoPrior_MultiSSL. torch (CPU) and einops must be installed;
torchvision, OpenCV, matplotlib and scikit-learn are not needed (the releases import
them, empty stand-ins are put in their place).

Both sides get the same network and the same inputs: the release's model is built with
random weights and converted into avloc's variables (avloc.convert), the paper's sizes
(224 px frames, 5 s of audio for JSA, 3 s for NoPrior, float32). Each row times one
operation of each side in turns (`common.interleaved`: a warm-up round, then `--repeats`
rounds, medians), so that the load of a shared machine weighs on both alike:
  train step: forward, the loss, backward and the optimizer update (JSA: AdamW, the
    release's loss of train_slot.py with lam1 = lam2 = 0.1, lam3 = 100 as configs/jsa.py);
  image / audio encoder: forward + backward of the ResNet-18 and its projection alone
    (training mode, the gradient of the sum of squared outputs);
  localize: the release's evaluation forward (`forward_eval`: its two 7x7 maps) against
    avloc's jitted `localize` with the maps upsampled to 224 px and IQR (more work), both
    batch 1, with 'agree' checking that the 7x7 cross-modal maps match.
`--changes` adds a table of avloc's CPU speed-ups, each switched off in turn at the
first batch size (their ratio to the default step is what each one gains).
"""

import contextlib
import importlib
import importlib.machinery
import os
import sys
import types

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import numpy as np
import optax
from absl import app, flags

from avloc import convert, inference, methods, platform
from avloc.models import pooling
from configs import jsa as jsa_configs

_NOPRIOR = flags.DEFINE_string('noprior', '', 'Checkout of VisualAIKHU/NoPrior_MultiSSL.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '16'], 'Train-step batch sizes.')
_ENCODER_BATCH = flags.DEFINE_integer('encoder_batch', 8, 'Batch of the encoder rows.')
_LOCALIZE_BATCH = flags.DEFINE_integer('localize_batch', 1, 'Batch of the localize row.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds per row (medians).')
_CHANGES = flags.DEFINE_bool('changes', False, 'Also time each CPU speed-up switched off.')
_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch threads (0: every core).')
_OMP_WAIT_POLICY = flags.DEFINE_enum(
    'omp_wait_policy', 'PASSIVE', ['PASSIVE', 'ACTIVE', 'default'],
    "OpenMP's wait policy for torch's threads. PASSIVE (sleep between parallel regions) "
    'made the release 1.7x faster on a loaded 2-core machine than the default spinning '
    '(which a shared machine punishes far more than XLA\'s thread pool); ignored when '
    'OMP_WAIT_POLICY is set.')
_JSA_LOSS_WEIGHTS = (0.1, 0.1, 100.0)  # recon, div, match (configs/jsa.py)
_STANDINS = ('torchvision', 'torchvision.models', 'torchvision.transforms', 'cv2',
             'matplotlib', 'matplotlib.pyplot', 'matplotlib.cm', 'sklearn', 'sklearn.metrics',
             'sklearn.manifold', 'sklearn.preprocessing')


def _stand_ins():
  """Empty modules for the releases' imports that inference and training here never use."""
  for name in _STANDINS:
    if name not in sys.modules:
      module = types.ModuleType(name)
      module.__spec__ = importlib.machinery.ModuleSpec(name, None)
      sys.modules[name] = module
  sys.modules['sklearn.manifold'].TSNE = None
  sys.modules['sklearn.preprocessing'].LabelEncoder = None
  sys.modules['sklearn'].metrics = sys.modules['sklearn.metrics']
  sys.modules['matplotlib'].cm = sys.modules['matplotlib.cm']


@contextlib.contextmanager
def _release_path(checkout: str, modules: tuple[str, ...]):
  """`checkout` first on sys.path while its `modules` import (then forgotten, so that two
  releases' same-named modules do not clash)."""
  if not os.path.isdir(checkout):
    raise app.UsageError(f'{checkout}: not a directory (a checkout of the release)')
  for name in modules:
    if not os.path.exists(os.path.join(checkout, name + '.py')):
      raise app.UsageError(f'{checkout}: no {name}.py; is it the right release?')
  sys.path.insert(0, checkout)
  try:
    yield
  finally:
    sys.path.remove(checkout)
    for name in modules:
      sys.modules.pop(name, None)


def _row(name, batch, official, ours, extra=''):
  """official, ours: common.Timing of one call."""
  return [name, batch, f'{official.wall:.3f}', f'{ours.wall:.3f}',
          f'{batch / official.wall:.2f}', f'{batch / ours.wall:.2f}',
          f'{official.wall / ours.wall:.2f}x', f'{official.cpu / ours.cpu:.2f}x',
          f'{official.faults / 1e3:.0f}k / {ours.faults / 1e3:.0f}k', extra]


_HEADER = ['operation', 'batch', 'official s', 'avloc s', 'official /s', 'avloc /s',
           'avloc speed', 'CPU-time ratio', 'page faults', 'agree']


def _done(tree):
  return lambda: jax.block_until_ready(tree())


# ----------------------------------------------------------------------------- JSA


class JsaRelease:
  """The official JSA model (model_slot.mymodel) with its AdamW, random init."""

  def __init__(self, checkout: str):
    import torch  # pylint: disable=g-import-not-at-top
    _stand_ins()
    with _release_path(checkout, ('resnet', 'utils', 'model_slot')):
      resnet = importlib.import_module('resnet')
      trunk = resnet.resnet
      resnet.resnet = lambda pretrained=False, *a, **k: trunk(False, *a, **k)  # no download
      self.model_slot = importlib.import_module('model_slot')
    self.torch = torch

  def model(self, batch_size: int):
    args = types.SimpleNamespace(tau=0.03, reciprocal_k=min(20, batch_size), num_slots=2,
                                 infer_sharpening=1.0, mask_ratio=0.1, iters=5, out_dim=512)
    self.torch.manual_seed(0)
    return self.model_slot.mymodel(args)

  def train_step(self, model, image, spectrogram):
    torch = self.torch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=5e-5, weight_decay=0.01)
    model.train()
    recon_weight, div_weight, match_weight = _JSA_LOSS_WEIGHTS

    def step():
      info, recon, div, match = model(image, spectrogram)
      loss = info + recon_weight * recon + div_weight * div + match_weight * match
      loss.backward()
      optimizer.step()
      optimizer.zero_grad()
    return step

  def encoder_gradient(self, encoder, inputs):
    def step():
      encoder.zero_grad()
      (encoder(inputs) ** 2).sum().backward()
    return step

  def localize(self, model, image, spectrogram):
    model.eval()  # BatchNorm running statistics; the release's own eval() is not a method
    model.mode = 'eval'

    def run():
      with self.torch.no_grad():
        return model.forward_eval(image, spectrogram)
    return run


def _jsa_config(batch_size: int):
  config = jsa_configs.get_config('vggsound_144k')
  config.loss.k = min(config.loss.k, batch_size)
  return config


def _jsa_inputs(rng, batch_size, config):
  """The same inputs for both: avloc's uint8 NHWC image and [B, F, T, 1] spectrogram, and
  the release's normalized NCHW float image and [B, 1, F, T] spectrogram."""
  import torch  # pylint: disable=g-import-not-at-top
  size = config.data.image.size
  image = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  freq, frames = 257, 501
  spectrogram = rng.normal(size=(batch_size, freq, frames, 1)).astype(np.float32)
  mean, std = np.asarray(config.data.image.mean), np.asarray(config.data.image.std)
  normalized = ((image / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
  return ({'image': image, 'spectrogram': spectrogram},
          (torch.from_numpy(np.ascontiguousarray(normalized)),
           torch.from_numpy(np.ascontiguousarray(spectrogram.transpose(0, 3, 1, 2)))))


def _variables(release_model, config):
  state = {k: v.detach().numpy() for k, v in release_model.state_dict().items()}
  return convert.jsa_from_torch(state, config)


def jsa_tables(checkout: str):
  release = JsaRelease(checkout)
  rng = np.random.default_rng(0)
  rows, change_rows = [], []
  for index, batch_size in enumerate(map(int, _BATCH_SIZES.value)):
    config = _jsa_config(batch_size)
    ours, theirs = _jsa_inputs(rng, batch_size, config)
    release_model = release.model(batch_size)
    setup = common.train_setup(config, batch_size, variables=_variables(release_model, config),
                               inputs=ours)
    holder = {'state': setup.state}

    def avloc_step(setup=setup, holder=holder):
      holder['state'], metrics = setup.step(holder['state'], setup.batch)
      jax.block_until_ready((holder['state'], metrics))
    calls = {'official': release.train_step(release_model, *theirs), 'avloc': avloc_step}
    if _CHANGES.value and index == 0:
      calls.update(_change_variants(config, setup))
    seconds = common.interleaved(calls, _REPEATS.value)
    rows.append(_row('JSA train step', batch_size, seconds['official'], seconds['avloc']))
    default = seconds['avloc']
    for name in calls:
      if name not in ('official', 'avloc'):
        change_rows.append([name, batch_size, f'{seconds[name].wall:.3f}', f'{default.wall:.3f}',
                            f'{seconds[name].wall / default.wall:.2f}x',
                            f'{seconds[name].cpu / default.cpu:.2f}x'])
    del setup, holder, calls

  batch_size = _ENCODER_BATCH.value
  config = _jsa_config(batch_size)
  ours, theirs = _jsa_inputs(rng, batch_size, config)
  release_model = release.model(batch_size)
  release_model.train()
  variables = _variables(release_model, config)
  model = methods.get_method('jsa').build_model(config)
  for name, field, module, x, y in (
      ('image encoder fwd+bwd', 'image_encoder', release_model.imgnet, ours['image'], theirs[0]),
      ('audio encoder fwd+bwd', 'audio_encoder', release_model.audnet, ours['spectrogram'],
       theirs[1])):
    gradient = common.encoder_gradient(model, variables, field)
    x = jax.device_put(x)
    seconds = common.interleaved(
        {'official': release.encoder_gradient(module, y),
         'avloc': _done(lambda g=gradient, x=x: g(variables['params'], x))}, _REPEATS.value)
    rows.append(_row(name, batch_size, seconds['official'], seconds['avloc']))

  batch_size = _LOCALIZE_BATCH.value
  config = _jsa_config(batch_size)
  ours, theirs = _jsa_inputs(rng, batch_size, config)
  release_model = release.model(batch_size)
  localizer = inference.Localizer(config, _variables(release_model, config))
  official = release.localize(release_model, *theirs)
  seconds = common.interleaved(
      {'official': official,
       'avloc': lambda: localizer.localize_inputs(ours['image'], ours['spectrogram'])},
      _REPEATS.value)
  _, cross_modal = official()  # [B, 1, 7, 7]
  difference = np.max(np.abs(cross_modal[:, 0].numpy() - localizer.localize_inputs(
      ours['image'], ours['spectrogram'])['lowres']['ca']))
  rows.append(_row('localize', batch_size, seconds['official'], seconds['avloc'],
                   f'{"yes" if difference < 1e-4 else "NO"} ({difference:.1e})'))
  common.print_table(
      f'JSA: official release ({_torch_setup(release.torch)}) vs avloc (jax {jax.__version__}, '
      f'{platform.describe()}); medians of {_REPEATS.value}; {common.load_average()}',
      _HEADER, rows)
  if change_rows:
    common.print_table(
        f'avloc\'s CPU speed-ups, each switched off (same run); {common.load_average()}',
        ['switched off', 'batch', 'step s', 'default s', 'gain', 'CPU-time gain'],
        change_rows)


def _torch_setup(torch) -> str:
  return (f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "default")}')


def _change_variants(config, setup) -> dict:
  """The train step with each CPU speed-up switched off in turn, as extra timed calls."""
  from avloc import train  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.method)
  model = method.build_model(config)
  tx = train.make_optimizer(config.optim, optax.constant_schedule(config.optim.learning_rate))
  variants = {}
  for name, context, options in (
      ('XNNPACK convolutions (XLA:CPU default)', contextlib.nullcontext(),
       platform.XNNPACK_CONVOLUTIONS),
      ('max-pool gradient of XLA', pooling.windowed_gradient(False), None)):
    state = jax.tree_util.tree_map(lambda x: x.copy(), setup.state)
    with context:
      step = train.make_train_step(config, model, method, tx, setup.mesh, steps_per_epoch=1)
      step = step.lower(state, setup.batch).compile(compiler_options=options)
    holder = {'state': state}

    def run(step=step, holder=holder):
      holder['state'], metrics = step(holder['state'], setup.batch)
      jax.block_until_ready((holder['state'], metrics))
    variants[name] = run
  return variants


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: vs_official.py OFFICIAL_JSA_DIR [--noprior=DIR] [flags]')
  if _OMP_WAIT_POLICY.value != 'default':
    os.environ.setdefault('OMP_WAIT_POLICY', _OMP_WAIT_POLICY.value)  # before torch loads
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise app.UsageError(f'this benchmark needs torch (CPU) and einops: {error}') from error
  torch.set_num_threads(_THREADS.value or os.cpu_count())
  print(common.machine())
  jsa_tables(argv[1])


if __name__ == '__main__':
  app.run(main)
