r"""avloc against the official PyTorch releases on the same machine, interleaved in one
process; prints tables of speed ratios (> 1: avloc is faster).

  python benchmarks/vs_official.py OFFICIAL_JSA_DIR [--noprior=OFFICIAL_NOPRIOR_DIR]
  python benchmarks/vs_official.py ../official/jsa --batch_sizes=8,16 --repeats=5 --changes

OFFICIAL_JSA_DIR is a checkout of github.com/InhoKim429/JSA (model_slot.py, resnet.py,
utils.py are imported from it), --noprior one of github.com/VisualAIKHU/NoPrior_MultiSSL
(model.py, model_base.py); nothing of either is copied here. torch (CPU) and einops must
be installed, and for --noprior torchvision (the NoPrior release's encoders are
torchvision's resnet18: without it the script prints one line saying so instead of the
NoPrior table). OpenCV, matplotlib and scikit-learn are not needed, nor torchvision for
JSA: the releases import them for code not timed here, and empty stand-ins are put in
their place.

Each row times one operation of each side in turns (`common.interleaved`: a warm-up
round, then `--repeats` rounds, medians), so that the load of a shared machine weighs on
both alike; float32 throughout.

JSA: both sides get the same network and the same inputs: the release's model is built
with random weights and converted into avloc's variables (avloc.weights, as avloc.convert
does), the paper's sizes (224 px frames, 5 s of audio).
  train step: forward, the loss, backward and the optimizer update (AdamW, the release's
    loss of train_slot.py with lam1 = lam2 = 0.1, lam3 = 100 as configs/jsa.py);
  image / audio encoder: forward + backward of the ResNet-18 and its projection alone
    (training mode, the gradient of the sum of squared outputs);
  localize: the release's evaluation forward (`forward_eval`: its two 7x7 maps) against
    avloc's jitted `localize` with the maps upsampled to 224 px and IQR (more work), both
    batch 1, with 'agree' checking that the 7x7 cross-modal maps match.
`--changes` adds a table of avloc's CPU speed-ups, each switched off in turn at the
first batch size (their ratio to the default step is what each one gains).
`--fresh_processes=R` adds the train-step rows timed once more with each side alone in a
fresh process of its own, the two taking turns for R rounds (ratios per round, then their
median and range): in the one process of the rows above the two frameworks share glibc's
heap (with avloc's allocator settings, `avloc.platform`) and the caches, which moved each
side's step by a quarter or more on an AVX-512 VM, in either direction
(benchmarks/RESULTS.md); the release's process keeps glibc's defaults.
`--convolutions=B` adds a table of every convolution of the release's two encoders alone at
batch B (layers of one shape timed once, counted as often as they occur): its forward, its
input gradient (not for the stems, whose input is data) and its weight gradient, torch's
`conv2d` / `convolution_backward` against XLA's convolutions as avloc's ResNet-18 lowers
them (flax's `nn.Conv`: NHWC, HWIO, explicit padding), without bias; the total rows weigh
each layer by its count.

NoPrior (--noprior): the release's model as its train.py builds it with train_vgg.sh's
settings (model.NoPriorVSSLModel: the default flowtype 'cnn', the tri-map, the image
ResNet-18 frozen by --freeze_vision=1; Adam at lr 1e-4), random weights in place of the
ImageNet ones it downloads, against configs/noprior.py with single frames (the release
trains concat_num=1). Each side runs on its own random weights: avloc.convert has no
NoPrior kind, and the networks differ (the release also encodes the optical flow with a
third ResNet-18 and attends the image features to it, and trains no image trunk; avloc
max-pools the audio map as the release does, `model.audio_pool='max'`). Both get the
same frame (224 px) and the release's 3 s spectrogram (257 x 276, see
_NOPRIOR_SPECTROGRAM); the release also gets a random 2-channel optical flow.
  train step: the release's training forward (`model(..., True)`: the loss of `lvs()`
    plus the object loss, with its Python loops of Iterative Object Identification and
    union-find), backward and Adam, against avloc's train step;
  localize: the release's evaluation forward (`model(..., False)`: its 7x7 object maps,
    batch 1 only) against avloc's jitted `localize` (upsampled maps, more work), batch 1;
    no 'agree' (different weights).
"""

import contextlib
import dataclasses
import functools
import importlib
import importlib.machinery
import io
import os
import statistics
import sys
import types
import warnings

import common  # sets up the import path; pylint: disable=g-bad-import-order
import jax
import numpy as np
from absl import app, flags

from avloc import inference, methods, platform, weights
from configs import jsa as jsa_configs
from configs import noprior as noprior_configs

_NOPRIOR = flags.DEFINE_string('noprior', '', 'Checkout of VisualAIKHU/NoPrior_MultiSSL.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['8', '16'], 'Train-step batch sizes.')
_ENCODER_BATCH = flags.DEFINE_integer('encoder_batch', 8, 'Batch of the encoder rows.')
_LOCALIZE_BATCH = flags.DEFINE_integer(
    'localize_batch', 1, "Batch of JSA's localize row (NoPrior's release evaluates batch 1 only).")
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds per row (medians).')
_CHANGES = flags.DEFINE_bool('changes', False, 'Also time each CPU speed-up switched off.')
_CONVOLUTIONS = flags.DEFINE_integer(
    'convolutions', 0, "Batch of a table timing each of the JSA encoders' convolutions alone "
    '(0: no table).', lower_bound=0)
_FRESH_PROCESSES = flags.DEFINE_integer(
    'fresh_processes', 0, 'Rounds of the train-step rows with each side alone in a fresh '
    'process (0: none).', lower_bound=0)
_CHILD = flags.DEFINE_enum('child', '', ['', 'official', 'avloc'],
                           "Internal: time this side's train step at --child_batch alone.")
_CHILD_BATCH = flags.DEFINE_integer('child_batch', 8, 'Internal: the batch of --child.')
_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch threads (0: every core).')
_OMP_WAIT_POLICY = flags.DEFINE_enum(
    'omp_wait_policy', 'PASSIVE', ['PASSIVE', 'ACTIVE', 'default'],
    "OpenMP's wait policy for torch's threads. PASSIVE (sleep between parallel regions) "
    'made the release 1.7x faster on a loaded 2-core machine than the default spinning '
    '(which a shared machine punishes far more than XLA\'s thread pool); ignored when '
    'OMP_WAIT_POLICY is set.')
_JSA_LOSS_WEIGHTS = (0.1, 0.1, 100.0)  # recon, div, match (configs/jsa.py)
_JSA_SPECTROGRAM = (257, 501)  # 5 s at 16 kHz, hop 160 (avloc's audio_config, the release's)
# The NoPrior release's arguments (train.py's defaults and train_vgg.sh), but for random
# weights instead of downloading ImageNet ones (--pretrain_vision, --pretrain_flow).
_NOPRIOR_ARGS = dict(tau=0.03, flowtype='cnn', freeze_vision=1, trimap=1, pretrain_flow=0,
                     pretrain_vision=0, logit_temperature=0.07, epsilon=0.65,
                     epsilon_margin=0.25, ckpt='')
_NOPRIOR_LEARNING_RATE = 1e-4  # train_vgg.sh --lr, for train.py's Adam
# The NoPrior release's input (datasets_flow.py, load_audio): scipy's spectrogram with
# nperseg 512, noverlap 274 of 3 s at 22.05 kHz (the rate its test crop assumes). Its model
# hard-codes the 9 x 9 audio map that this gives (`audnet(audio).view(-1, 512, 9, 9)`), so
# avloc gets it too: its own 3 s spectrogram (16 kHz, hop 160) is 257 x 301, a 9 x 10 map.
_NOPRIOR_SPECTROGRAM = (257, 1 + (3 * 22050 - 512) // (512 - 274))
# Modules the releases import for code not timed here, with the names imported from them:
# JSA's utils.py (plots, t-SNE, OpenCV) and model_slot.py, NoPrior's model_base.py (OpenCV).
_JSA_STAND_INS = {'torchvision': (), 'cv2': (), 'matplotlib': (), 'matplotlib.pyplot': (),
                  'sklearn': (), 'sklearn.metrics': (), 'sklearn.manifold': ('TSNE',),
                  'sklearn.preprocessing': ('LabelEncoder',)}
_NOPRIOR_STAND_INS = {'cv2': ()}


def _stand_ins(modules: dict[str, tuple[str, ...]]) -> list[str]:
  """Empty modules for `modules` ({name: names imported from it}) that are not imported
  yet, each an attribute of its parent stand-in; returns the names put in sys.modules."""
  added = []
  for name, attributes in modules.items():
    if name in sys.modules:
      continue
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for attribute in attributes:
      setattr(module, attribute, None)
    sys.modules[name] = module
    parent, _, child = name.rpartition('.')
    if parent in added:
      setattr(sys.modules[parent], child, module)
    added.append(name)
  return added


@contextlib.contextmanager
def _release_path(checkout: str, modules: tuple[str, ...], stand_ins: dict):
  """`checkout` first on sys.path and `stand_ins` in place while its `modules` import
  (then all forgotten, so that two releases' same-named modules do not clash and a
  stand-in hides no real module from the other release)."""
  if not os.path.isdir(checkout):
    raise app.UsageError(f'{checkout}: not a directory (a checkout of the release)')
  for name in modules:
    if not os.path.exists(os.path.join(checkout, name + '.py')):
      raise app.UsageError(f'{checkout}: no {name}.py; is it the right release?')
  sys.path.insert(0, checkout)
  added = _stand_ins(stand_ins)
  try:
    yield
  finally:
    sys.path.remove(checkout)
    for name in (*modules, *added):
      sys.modules.pop(name, None)


class Release:
  """A release's `modules` imported from its checkout, and its train and evaluation
  steps as callables for `common.interleaved`."""

  def __init__(self, checkout: str, modules: tuple[str, ...], stand_ins: dict):
    import torch  # pylint: disable=g-import-not-at-top
    with _release_path(checkout, modules, stand_ins):
      self.modules = {name: importlib.import_module(name) for name in modules}
    self.torch = torch

  def optimized(self, model, optimizer, loss):
    """One training iteration as the release's script runs it: loss() (forward and
    loss), backward, the optimizer's update."""
    model.train()

    def step():
      loss().backward()
      optimizer.step()
      optimizer.zero_grad()
    return step

  def evaluated(self, model, forward):
    """forward() in evaluation mode (BatchNorm running statistics), without gradients."""
    model.eval()

    def run():
      with self.torch.no_grad():
        return forward()
    return run


def _tensor(array):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(array))


def _inputs(rng, batch_size, size, spectrogram, mean=0.0, std=1.0):
  """The same random inputs for both: avloc's uint8 NHWC image and [B, F, T, 1]
  spectrogram ({'image', 'spectrogram'}), and the release's NCHW float image
  (image / 255 - mean) / std and [B, 1, F, T] spectrogram."""
  image = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
  spectrogram = rng.normal(size=(batch_size, *spectrogram, 1)).astype(np.float32)
  normalized = ((image / 255.0 - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
  return ({'image': image, 'spectrogram': spectrogram},
          (_tensor(normalized.transpose(0, 3, 1, 2)), _tensor(spectrogram.transpose(0, 3, 1, 2))))


def _row(name, batch, official, ours, extra=''):
  """official, ours: common.Timing of one call."""
  return [name, batch, f'{official.wall:.3f}', f'{ours.wall:.3f}',
          f'{batch / official.wall:.2f}', f'{batch / ours.wall:.2f}',
          f'{official.wall / ours.wall:.2f}x', f'{official.cpu / ours.cpu:.2f}x',
          f'{official.faults / 1e3:.0f}k / {ours.faults / 1e3:.0f}k', extra]


def _timed_row(name, batch, official, ours, agree=None):
  """The row of `official` against `ours` timed interleaved; agree(), called after the
  timing, fills the 'agree' cell."""
  seconds = common.interleaved({'official': official, 'avloc': ours}, _REPEATS.value)
  return _row(name, batch, seconds['official'], seconds['avloc'], agree() if agree else '')


_HEADER = ['operation', 'batch', 'official s', 'avloc s', 'official /s', 'avloc /s',
           'avloc speed', 'CPU-time ratio', 'page faults', 'agree']


def _print_comparison(method: str, release: Release, rows, note: str = ''):
  common.print_table(
      f'{method}: official release ({_torch_setup(release.torch)}) vs avloc (jax '
      f'{jax.__version__}, {platform.describe()}){note}; medians of {_REPEATS.value}; '
      f'{common.load_average()}', _HEADER, rows)


def _done(tree):
  return lambda: jax.block_until_ready(tree())


# ----------------------------------------------------------------------------- JSA


class JsaRelease(Release):
  """The official JSA model (model_slot.mymodel) with its AdamW, random init."""

  def __init__(self, checkout: str):
    super().__init__(checkout, ('resnet', 'utils', 'model_slot'), _JSA_STAND_INS)
    resnet = self.modules['resnet']
    trunk = resnet.resnet
    resnet.resnet = lambda pretrained=False, *a, **k: trunk(False, *a, **k)  # no download

  def model(self, batch_size: int):
    args = types.SimpleNamespace(tau=0.03, reciprocal_k=min(20, batch_size), num_slots=2,
                                 infer_sharpening=1.0, mask_ratio=0.1, iters=5, out_dim=512)
    self.torch.manual_seed(0)
    return self.modules['model_slot'].mymodel(args)

  def train_step(self, model, image, spectrogram):
    optimizer = self.torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                       lr=5e-5, weight_decay=0.01)
    recon_weight, div_weight, match_weight = _JSA_LOSS_WEIGHTS

    def loss():
      info, recon, div, match = model(image, spectrogram)
      return info + recon_weight * recon + div_weight * div + match_weight * match
    return self.optimized(model, optimizer, loss)

  def encoder_gradient(self, encoder, inputs):
    def step():
      encoder.zero_grad()
      (encoder(inputs) ** 2).sum().backward()
    return step

  def localize(self, model, image, spectrogram):
    model.mode = 'eval'  # the release's own eval() is not a method
    return self.evaluated(model, lambda: model.forward_eval(image, spectrogram))


def _jsa_config(batch_size: int):
  return common.k_within_batch(jsa_configs.get_config('vggsound_144k'), batch_size)


def _jsa_inputs(rng, batch_size, config):
  """_inputs at JSA's sizes, the release's image normalized outside its model."""
  image = config.data.image
  return _inputs(rng, batch_size, image.size, _JSA_SPECTROGRAM, image.mean, image.std)


def _variables(release_model, config):
  state = {k: v.detach().numpy() for k, v in release_model.state_dict().items()}
  return weights.jsa_from_torch(state, config)


def jsa_tables(release: JsaRelease):
  rng = np.random.default_rng(0)
  rows, change_rows = [], []
  for index, batch_size in enumerate(map(int, _BATCH_SIZES.value)):
    config = _jsa_config(batch_size)
    ours, theirs = _jsa_inputs(rng, batch_size, config)
    release_model = release.model(batch_size)
    setup = common.train_setup(config, batch_size, variables=_variables(release_model, config),
                               inputs=ours)
    calls = {'official': release.train_step(release_model, *theirs),
             'avloc': common.TrainStepCall(setup)}
    if _CHANGES.value and index == 0:
      calls.update(common.cpu_speedups_off(config, setup))
    seconds = common.interleaved(calls, _REPEATS.value)
    rows.append(_row('JSA train step', batch_size, seconds['official'], seconds['avloc']))
    default = seconds['avloc']
    for name in calls:
      if name not in ('official', 'avloc'):
        change_rows.append([name, batch_size, f'{seconds[name].wall:.3f}', f'{default.wall:.3f}',
                            f'{seconds[name].wall / default.wall:.2f}x',
                            f'{seconds[name].cpu / default.cpu:.2f}x'])
    del setup, calls

  batch_size = _ENCODER_BATCH.value
  config = _jsa_config(batch_size)
  ours, theirs = _jsa_inputs(rng, batch_size, config)
  release_model = release.model(batch_size)
  release_model.train()
  # On the device once, as the release's weights live in its modules: NumPy arrays would
  # be copied in on every call, into buffers that were at times mapped anew (up to 163k
  # page faults per call at batch 8).
  variables = jax.device_put(_variables(release_model, config))
  model = methods.get_method('jsa').build_model(config)
  for name, field, module, x, y in (
      ('image encoder fwd+bwd', 'image_encoder', release_model.imgnet, ours['image'], theirs[0]),
      ('audio encoder fwd+bwd', 'audio_encoder', release_model.audnet, ours['spectrogram'],
       theirs[1])):
    gradient = common.encoder_gradient(model, variables, field)
    x = jax.device_put(x)
    rows.append(_timed_row(name, batch_size, release.encoder_gradient(module, y),
                           _done(lambda g=gradient, x=x: g(variables['params'], x))))

  batch_size = _LOCALIZE_BATCH.value
  config = _jsa_config(batch_size)
  ours, theirs = _jsa_inputs(rng, batch_size, config)
  release_model = release.model(batch_size)
  localizer = inference.Localizer(config, _variables(release_model, config))
  official = release.localize(release_model, *theirs)

  def agree():
    _, cross_modal = official()  # [B, 1, 7, 7]
    difference = np.max(np.abs(cross_modal[:, 0].numpy() - localizer.localize_inputs(
        ours['image'], ours['spectrogram'])['lowres']['ca']))
    return f'{"yes" if difference < 1e-4 else "NO"} ({difference:.1e})'
  rows.append(_timed_row(
      'localize', batch_size, official,
      lambda: localizer.localize_inputs(ours['image'], ours['spectrogram']), agree))
  _print_comparison('JSA', release, rows)
  if change_rows:
    common.print_table(
        f'avloc\'s CPU speed-ups, each switched off (same run); {common.load_average()}',
        ['switched off', 'batch', 'step s', 'default s', 'gain', 'CPU-time gain'],
        change_rows)


# ------------------------------------------------------- JSA in fresh processes


def child_train_step(side: str, checkout: str, batch_size: int) -> dict:
  """This process times `side`'s JSA train step alone (random weights and inputs; a
  warm-up step, then --repeats steps): `common.timing_result`."""
  if side == 'official':
    release = JsaRelease(checkout)
    release.torch.set_num_threads(_THREADS.value or os.cpu_count())
    _, theirs = _jsa_inputs(np.random.default_rng(0), batch_size, _jsa_config(batch_size))
    step = release.train_step(release.model(batch_size), *theirs)
    described = _torch_setup(release.torch)
  else:
    step = common.TrainStepCall(common.train_setup(_jsa_config(batch_size), batch_size))
    described = f'jax {jax.__version__}, {platform.describe()}'
  timing = common.interleaved({side: step}, _REPEATS.value)[side]
  return common.timing_result(timing, described)


# The release's process: glibc's allocator defaults, as when it runs on its own.
_CHILD_ENVIRONMENT = {'official': {'AVLOC_KEEP_FREED_MEMORY': '0'}, 'avloc': {}}


def fresh_process_rows(checkout: str, batch_sizes: list[int], rounds: int):
  """Rows of the fresh-process table, and the two sides' settings: per batch size,
  `rounds` rounds of one official and one avloc process (`child_train_step`); medians of
  their step times, the median and range of the per-round speed ratios, the CPU-time
  ratio and page faults per step."""
  rows, described = [], {}
  for batch_size in batch_sizes:
    results = []
    for _ in range(rounds):
      results.append({side: common.child_result(
          __file__, [checkout, f'--child={side}', f'--child_batch={batch_size}',
                     f'--repeats={_REPEATS.value}', f'--torch_threads={_THREADS.value}'],
          environ) for side, environ in _CHILD_ENVIRONMENT.items()})
    described = {side: results[0][side]['described'] for side in _CHILD_ENVIRONMENT}

    def median(side, key, results=results):
      return statistics.median(r[side][key] for r in results)
    speeds = [r['official']['wall'] / r['avloc']['wall'] for r in results]
    rows.append([
        'JSA train step', batch_size, f'{median("official", "wall"):.3f}',
        f'{median("avloc", "wall"):.3f}',
        f'{statistics.median(speeds):.2f}x ({min(speeds):.2f}-{max(speeds):.2f})',
        f'{median("official", "cpu") / median("avloc", "cpu"):.2f}x',
        f'{median("official", "faults") / 1e3:.0f}k / {median("avloc", "faults") / 1e3:.0f}k'])
  return rows, described


def fresh_process_table(checkout: str):
  # The children run in the repository root: a relative checkout would point elsewhere.
  rows, described = fresh_process_rows(os.path.abspath(checkout),
                                       list(map(int, _BATCH_SIZES.value)),
                                       _FRESH_PROCESSES.value)
  common.print_table(
      f'JSA, each side alone in a fresh process, taking turns for {_FRESH_PROCESSES.value} '
      f'rounds: official release ({described["official"]}, glibc\'s allocator defaults) vs '
      f'avloc ({described["avloc"]}); medians of {_REPEATS.value} steps per process; '
      f'{common.load_average()}',
      ['operation', 'batch', 'official s', 'avloc s', 'avloc speed (range)',
       'CPU-time ratio', 'page faults'], rows)


# ---------------------------------------------------------------- JSA convolutions


@dataclasses.dataclass(frozen=True)
class Convolution:
  """A 2-D convolution without bias: input [B, height, width, channels] -> `features`
  channels, square `kernel`, `stride` and zero `padding` on every side; whether its
  input gradient is wanted (not for a network's first layer, whose input is data)."""
  height: int
  width: int
  channels: int
  features: int
  kernel: int
  stride: int
  padding: int
  input_gradient: bool

  @property
  def output_size(self) -> tuple[int, int]:
    """Output height and width."""
    return tuple((size + 2 * self.padding - self.kernel) // self.stride + 1
                 for size in (self.height, self.width))

  def flops(self, batch: int) -> float:
    """Multiply-adds x 2 of the forward pass (each gradient costs the same)."""
    out_h, out_w = self.output_size
    return 2.0 * batch * out_h * out_w * self.features * self.channels * self.kernel ** 2


def group_convolutions(layers):
  """[(name, Convolution)] -> [(names, Convolution)]: layers of equal Convolution
  together, in the order each first occurs."""
  groups = {}
  for name, convolution in layers:
    groups.setdefault(convolution, []).append(name)
  return [(names, convolution) for convolution, names in groups.items()]


def _release_convolutions(release: JsaRelease, model, image, spectrogram):
  """{'image encoder': [(name, Convolution)], 'audio encoder': [...]}: every Conv2d of the
  release's two encoders in the order it runs, its input shape seen by a forward hook."""
  torch = release.torch
  layers = {}
  for encoder, module, x in (('image encoder', model.imgnet, image[:1]),
                             ('audio encoder', model.audnet, spectrogram[:1])):
    seen, hooks = [], []
    for name, layer in module.named_modules():
      if isinstance(layer, torch.nn.Conv2d):
        if (layer.groups != 1 or layer.dilation != (1, 1) or len(set(layer.kernel_size)) != 1
            or len(set(layer.stride)) != 1 or len(set(layer.padding)) != 1):
          raise ValueError(f'{encoder} {name}: not a square ungrouped convolution')
        hooks.append(layer.register_forward_hook(
            lambda layer, inputs, _, name=name: seen.append((name, layer, inputs[0].shape))))
    with torch.no_grad():
      module.eval()
      module(x)
    for hook in hooks:
      hook.remove()
    layers[encoder] = [
        (name, Convolution(height=shape[2], width=shape[3], channels=layer.in_channels,
                           features=layer.out_channels, kernel=layer.kernel_size[0],
                           stride=layer.stride[0], padding=layer.padding[0],
                           input_gradient=index > 0))
        for index, (name, layer, shape) in enumerate(seen)]
  return layers


def _convolution_inputs(convolution: Convolution, batch: int):
  """Random NHWC input, HWIO kernel and NHWC output cotangent, float32."""
  rng = np.random.default_rng(0)
  c = convolution
  x = rng.normal(size=(batch, c.height, c.width, c.channels)).astype(np.float32)
  kernel = (rng.normal(size=(c.kernel, c.kernel, c.channels, c.features))
            / np.sqrt(c.kernel ** 2 * c.channels)).astype(np.float32)
  cotangent = rng.normal(size=(batch, *c.output_size, c.features)).astype(np.float32)
  return x, kernel, cotangent


def official_convolution(convolution: Convolution, batch: int):
  """{'forward', 'input gradient', 'weight gradient'}: torch's calls on NCHW copies
  (each returns its result: the output, or convolution_backward's tuple)."""
  import torch  # pylint: disable=g-import-not-at-top
  c = convolution
  x, kernel, cotangent = (_tensor(a.transpose(order)) for a, order in zip(
      _convolution_inputs(c, batch), ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))))
  stride, padding = [c.stride] * 2, [c.padding] * 2

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, kernel, stride=c.stride, padding=c.padding)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(
        cotangent, x, kernel, None, stride, padding, [1, 1], False, [0, 0], 1, mask)
  calls = {'forward': forward, 'weight gradient': backward([False, True, False])}
  if c.input_gradient:
    calls['input gradient'] = backward([True, False, False])
  return calls


def avloc_convolution(convolution: Convolution, batch: int):
  """The same calls for XLA's convolution as flax's nn.Conv lowers avloc's, jitted."""
  c = convolution
  x, kernel, cotangent = (jax.device_put(a) for a in _convolution_inputs(c, batch))
  padding = ((c.padding, c.padding),) * 2

  def conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (c.stride, c.stride), padding,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  forward = jax.jit(conv)
  input_gradient = jax.jit(lambda x, g: jax.vjp(lambda x: conv(x, kernel), x)[1](g))
  weight_gradient = jax.jit(lambda k, g: jax.vjp(lambda k: conv(x, k), k)[1](g))
  calls = {'forward': _done(lambda: forward(x, kernel)),
           'weight gradient': _done(lambda: weight_gradient(kernel, cotangent))}
  if c.input_gradient:
    calls['input gradient'] = _done(lambda: input_gradient(x, cotangent))
  return calls


_OPERATIONS = ('forward', 'input gradient', 'weight gradient')


def convolution_rows(encoders, batch: int, official=official_convolution,
                     ours=avloc_convolution):
  """Rows of the convolutions table for {encoder: [(name, Convolution)]}: per group of
  equal layers, official / avloc ms of each operation (`common.interleaved`) and avloc's
  speed; then each encoder's total and the total of all, weighted by the layers' counts.
  official, ours: (Convolution, batch) -> {operation: call}."""
  rows, grand = [], {}
  for encoder, layers in encoders.items():
    totals = {}
    for names, convolution in group_convolutions(layers):
      calls = {'official': official(convolution, batch), 'avloc': ours(convolution, batch)}
      cells = []
      for operation in _OPERATIONS:
        if operation not in calls['official']:
          cells.append('-')
          continue
        seconds = common.interleaved({side: calls[side][operation] for side in calls},
                                     _REPEATS.value)
        for side in calls:
          for total in (totals, grand):
            total[side, operation] = (total.get((side, operation), 0.0)
                                      + len(names) * seconds[side].wall)
        cells.append((seconds['official'].wall, seconds['avloc'].wall))
      c = convolution
      rows.append([encoder, names[0] + (f' (x{len(names)})' if len(names) > 1 else ''),
                   f'{c.height}x{c.width}x{c.channels}', f'{c.kernel}x{c.kernel}/{c.stride}',
                   c.features, f'{len(names) * c.flops(batch) / 1e9:.1f}',
                   *_speed_cells(cells)])
    rows.append([encoder, 'all', '', '', '', '', *_speed_cells(_total_cells(totals))])
  rows.append(['both', 'all', '', '', '', '', *_speed_cells(_total_cells(grand))])
  return rows


def _total_cells(totals):
  return [(totals['official', operation], totals['avloc', operation])
          if ('official', operation) in totals else '-' for operation in _OPERATIONS]


def _speed_cells(cells):
  """(official s, avloc s) or '-' per operation -> the ms cells, then avloc's speeds."""
  return ([cell if cell == '-' else f'{1e3 * cell[0]:.1f} / {1e3 * cell[1]:.1f}'
           for cell in cells]
          + [cell if cell == '-' else f'{cell[0] / cell[1]:.2f}x' for cell in cells])


def convolution_table(release: JsaRelease, batch: int):
  config = _jsa_config(batch)
  _, (image, spectrogram) = _jsa_inputs(np.random.default_rng(0), 1, config)
  encoders = _release_convolutions(release, release.model(batch), image, spectrogram)
  common.print_table(
      f"JSA's convolutions alone, batch {batch}: official (torch {release.torch.__version__}, "
      f'{release.torch.get_num_threads()} threads) vs avloc (jax {jax.__version__}, '
      f'{platform.describe()}), ms official / avloc, medians of {_REPEATS.value}; '
      f'{common.load_average()}',
      ['encoder', 'layer', 'input HxWxC', 'kernel/stride', 'features', 'GFLOP',
       'forward ms', 'input grad ms', 'weight grad ms', 'forward speed', 'input grad speed',
       'weight grad speed'],
      convolution_rows(encoders, batch))


def _torch_setup(torch) -> str:
  return (f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "default")}')


# ------------------------------------------------------------------------- NoPrior


class NoPriorRelease(Release):
  """The official NoPrior model (model.NoPriorVSSLModel) as train.py's NoPriorModule
  builds and trains it, random init."""

  def __init__(self, checkout: str):
    super().__init__(checkout, ('model_base', 'model'), _NOPRIOR_STAND_INS)

  def model(self):
    self.torch.manual_seed(0)
    # Quiet: it prints its size twice, torchvision warns of the `pretrained` argument.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
      warnings.simplefilter('ignore')
      model = self.modules['model'].NoPriorVSSLModel(types.SimpleNamespace(**_NOPRIOR_ARGS))
    model.unfreeze_vision(False)  # NoPriorModule with --freeze_vision=1
    return model

  def train_step(self, model, image, flow, spectrogram):
    optimizer = self.torch.optim.Adam(model.parameters(), lr=_NOPRIOR_LEARNING_RATE)
    return self.optimized(model, optimizer, lambda: model(image, flow, spectrogram, True)[0])

  def localize(self, model, image, flow, spectrogram):
    return self.evaluated(model, lambda: model(image, flow, spectrogram, False))


def _noprior_config():
  config = noprior_configs.get_config('vggsound_144k')
  config.data.mixture.num_sources = 1  # the release trains single frames (concat_num=1)
  config.model.audio_pool = 'max'  # the release's `aud_max_pool`
  return config


def _noprior_inputs(rng, batch_size, config):
  """_inputs at NoPrior's sizes (the release normalizes the image in its model), and the
  release's optical flow [B, 2, S, S] in [0, 1]."""
  size = config.data.image.size
  ours, (image, spectrogram) = _inputs(rng, batch_size, size, _NOPRIOR_SPECTROGRAM)
  flow = rng.random((batch_size, 2, size, size), dtype=np.float32)
  return ours, (image, _tensor(flow), spectrogram)


def _noprior_train_row(release: NoPriorRelease, rng, batch_size: int):
  config = _noprior_config()
  ours, theirs = _noprior_inputs(rng, batch_size, config)
  setup = common.train_setup(config, batch_size, inputs=ours)
  return _timed_row('NoPrior train step', batch_size,
                    release.train_step(release.model(), *theirs), common.TrainStepCall(setup))


def noprior_table(release: NoPriorRelease):
  rng = np.random.default_rng(0)
  rows = [_noprior_train_row(release, rng, batch_size)
          for batch_size in map(int, _BATCH_SIZES.value)]
  config = _noprior_config()
  ours, theirs = _noprior_inputs(rng, 1, config)
  model = methods.get_method('noprior').build_model(config)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), ours['image'], ours['spectrogram'])
  localizer = inference.Localizer(config, variables)
  rows.append(_timed_row('localize', 1, release.localize(release.model(), *theirs),
                         lambda: localizer.localize_inputs(ours['image'], ours['spectrogram'])))
  _print_comparison('NoPrior', release, rows,
                    ', each on its own random weights (avloc.convert has no NoPrior kind)')


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: vs_official.py OFFICIAL_JSA_DIR [--noprior=DIR] [flags]')
  if _CHILD.value:
    common.print_result(child_train_step(_CHILD.value, argv[1], _CHILD_BATCH.value))
    return
  if _OMP_WAIT_POLICY.value != 'default':
    os.environ.setdefault('OMP_WAIT_POLICY', _OMP_WAIT_POLICY.value)  # before torch loads
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise app.UsageError(f'this benchmark needs torch (CPU) and einops: {error}') from error
  torch.set_num_threads(_THREADS.value or os.cpu_count())
  print(common.machine())
  jsa = JsaRelease(argv[1])
  noprior = None
  if _NOPRIOR.value:  # imported now: a wrong checkout fails before the JSA tables
    try:
      noprior = NoPriorRelease(_NOPRIOR.value)
    except ImportError as error:
      if not (error.name or '').startswith('torchvision'):
        raise
      print(f'NoPrior not timed: the release builds its encoders with torchvision\'s '
            f'resnet18 (model_base.py), and torchvision does not import here ({error})')
  jsa_tables(jsa)
  if _FRESH_PROCESSES.value:
    fresh_process_table(argv[1])
  if _CONVOLUTIONS.value:
    convolution_table(jsa, _CONVOLUTIONS.value)
  if noprior is not None:
    noprior_table(noprior)


if __name__ == '__main__':
  app.run(main)
