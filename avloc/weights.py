"""PyTorch weights -> avloc variables: torchvision's ImageNet ResNet-18 and the official
releases of JSA, EZ-VSL, LVS and FNAC; loading an ImageNet image trunk for training
(`config.model_init.image_trunk`) and object guidance (`config.eval.object_guidance`).

`convert_checkpoint` writes an inference export, DIR/export/0 (`checkpointing.Exporter`'s
format), that `checkpointing.load_inference(DIR)` reads; `python -m avloc.convert` is its
command line. For a method the export holds the full model and the config (`python -m
avloc.main --mode=eval --workdir=DIR` evaluates it); for `imagenet_resnet18` the ResNet-18
variables, which `config.model_init.image_trunk=DIR` loads into the image encoder before
training (a torchvision .pth file works there too).

Layouts, torch -> flax: Conv2d weight OIHW -> kernel HWIO; Linear weight [out, in] ->
kernel [in, out]; BatchNorm2d weight, bias -> params scale, bias and running_mean,
running_var -> batch_stats mean, var; LayerNorm weight -> scale. Release -> avloc names:
  imgnet.{conv1, bn1, layer<s>.<i>.*}            image_encoder/trunk/{conv1, bn1, layer<s>_<i>/*}
  imgnet.proj                                    image_encoder/projection
  audnet.{conv1_1, bn1, layer<s>.<i>.*}          audio_encoder/trunk/{conv1, bn1, layer<s>_<i>/*}
  audnet.proj.0                                  audio_encoder/projection
  slot_attn.slots [1, S, D]                      slot_attention/initial_slots [S, D] (or
                                                 both initial_slots_{image,audio})
  slot_attn.mask_token_{img,aud} [1, 1, D]       slot_attention/mask_token_{image,audio} [D]
  slot_attn.{img,aud}_to_{q,k,v}                 slot_attention/{image,audio}/to_{q,k,v}
  slot_attn.{img,aud}_norm_{input,slots,pre_ff}  .../norm_{input,slots,pre_mlp}
  slot_attn.{img,aud}_mlp.{0,2}                  .../mlp_{in,out}
  slot_attn.{img,aud}_gru                        .../gru/{ir,iz,in,hr,hz,hn} (see `_gru`)
  {img,aud}_decoder.pos_emb.{row,col}_embed      {image,audio}_decoder/{row,col}_embedding
  {img,aud}_decoder.mlp.{0,2,4,6}                .../hidden_{0,1,2}, output
EZ-VSL (`model.py`, `EZVSL`) and FNAC (`FNAC`: the same parameters) -> avloc's DualEncoder:
  imgnet.{conv1, bn1, layer<s>.<i>.*}            image_encoder/trunk/...
  img_proj                                       image_encoder/projection
  audnet.{conv1, bn1, layer<s>.<i>.*}            audio_encoder/trunk/... (1-channel conv1)
  aud_proj (Linear on the max-pooled vector)     audio_encoder/projection (1x1 conv)
LVS (`model.py`, `AVENet`): imgnet.* and audnet.* trunks (audio stem `conv1_a`), no
projections; each net's unused stems (`conv1_a` / `conv1`, `conv1_flow`) and `fc` are
ignored.
"""

import functools
from collections.abc import Callable, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avloc import checkpointing, methods, paths
from avloc.data import audio as audio_lib
from avloc.models.resnet import ResNet18

TRUNK_KIND = 'imagenet_resnet18'
KINDS = (TRUNK_KIND, 'jsa', 'ezvsl', 'lvs', 'fnac')  # the others need a method config
_LISTED = 12  # names shown per list in an error message


class ConversionError(ValueError):
  """Weights do not fit the flax model; the message lists every mismatch."""


def _join(path: tuple[str, ...]) -> str:
  return '/'.join(path)


def _names(names) -> str:
  names = sorted(names)
  shown = ', '.join(names[:_LISTED])
  return f'{shown}, ... ({len(names)} in all)' if len(names) > _LISTED else shown


def _check(what: str, converted: dict, template: dict, sources: dict,
           missing=(), unexpected=(), attempted=None, invalid=()) -> None:
  """Raises ConversionError unless `converted` {path: array} fills the flat `template`
  {path: shape} exactly. sources: {path: the torch keys behind it}; attempted: the paths
  tried (a path whose torch key is missing is not also reported as unfilled); invalid:
  paths whose torch arrays could not be rearranged at all."""
  attempted = set(converted) if attempted is None else attempted
  mismatched = [
      f'{_join(p)}: the model has {template[p]}, {sources[p]} gives {converted[p].shape}'
      for p in sorted(set(converted) & set(template)) if converted[p].shape != template[p]]
  mismatched += [f'{_join(p)}: the model has {template.get(p)}, {sources[p]} does not '
                 'convert' for p in sorted(invalid)]
  problems = []
  if missing:
    problems.append(f'missing torch keys ({len(set(missing))}): {_names(set(missing))}')
  if unexpected:
    problems.append(f'unexpected torch keys ({len(unexpected)}): {_names(unexpected)}')
  problems += [f'shape mismatch: {m}' for m in mismatched[:_LISTED]]
  if len(mismatched) > _LISTED:
    problems.append(f'... {len(mismatched) - _LISTED} more shape mismatches')
  unfilled = {_join(p) for p in set(template) - attempted}
  if unfilled:
    problems.append(f'model leaves left unfilled ({len(unfilled)}): {_names(unfilled)}')
  extra = {_join(p) for p in attempted - set(template)}
  if extra:
    problems.append(f'leaves the model does not have ({len(extra)}): {_names(extra)}')
  if problems:
    raise ConversionError(f'{what} does not fit the model:\n  ' + '\n  '.join(problems))


class _Converter:
  """Fills flat flax paths from a torch state dict and records which keys it read.

  A leading 'module.' (DistributedDataParallel) is dropped from every key.
  """

  def __init__(self, state_dict: Mapping, ignore: Callable[[str], bool] = lambda key: False):
    self._arrays = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    self._ignore = ignore
    self._read = set()
    self._missing = []
    self._attempted = set()
    self._invalid = set()
    self._converted = {}
    self._sources = {}

  def shape(self, key: str) -> tuple[int, ...] | None:
    return tuple(np.shape(self._arrays[key])) if key in self._arrays else None

  def put(self, path: tuple[str, ...], keys, fn=lambda x: x) -> None:
    """Flax leaf `path` <- fn(*arrays of the torch `keys`), as float32."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    self._attempted.add(path)
    self._read.update(keys)
    absent = [k for k in keys if k not in self._arrays]
    if absent:
      self._missing += absent
      return
    arrays = [np.asarray(self._arrays[k], np.float32) for k in keys]
    self._sources[path] = ' + '.join(f'{k} {a.shape}' for k, a in zip(keys, arrays))
    try:
      self._converted[path] = np.ascontiguousarray(fn(*arrays))
    except ValueError:  # e.g. a 2-D array where a conv weight should be
      self._invalid.add(path)

  def finish(self, what: str, template: dict, prefix: str = '') -> dict:
    """Checks the result against the flat `template` {path: shape} and every key under
    `prefix` against what was read; returns the nested variables."""
    unexpected = {k for k in self._arrays
                  if k.startswith(prefix) and k not in self._read and not self._ignore(k)}
    _check(what, self._converted, template, self._sources, self._missing, unexpected,
           self._attempted, self._invalid)
    return flax.traverse_util.unflatten_dict(self._converted)


def _template(module, *inputs) -> dict:
  """Flat {path: shape} of the variables `module.init` creates for these inputs."""
  rngs = {'params': jax.random.key(0), 'mask': jax.random.key(1)}
  variables = jax.eval_shape(functools.partial(module.init, train=False), rngs, *inputs)
  return {p: x.shape for p, x in flax.traverse_util.flatten_dict(variables).items()}


def _hwio(weight):
  """Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O]."""
  return weight.transpose(2, 3, 1, 0)


def _conv(c: _Converter, path: tuple[str, ...], key: str, bias: bool = False) -> None:
  c.put(('params',) + path + ('kernel',), key + '.weight', _hwio)
  if bias:
    c.put(('params',) + path + ('bias',), key + '.bias')


def _dense(c: _Converter, path: tuple[str, ...], key: str) -> None:
  c.put(('params',) + path + ('kernel',), key + '.weight', np.transpose)
  c.put(('params',) + path + ('bias',), key + '.bias')


def _batch_norm(c: _Converter, path: tuple[str, ...], key: str) -> None:
  c.put(('params',) + path + ('scale',), key + '.weight')
  c.put(('params',) + path + ('bias',), key + '.bias')
  c.put(('batch_stats',) + path + ('mean',), key + '.running_mean')
  c.put(('batch_stats',) + path + ('var',), key + '.running_var')


def _layer_norm(c: _Converter, path: tuple[str, ...], key: str) -> None:
  c.put(('params',) + path + ('scale',), key + '.weight')
  c.put(('params',) + path + ('bias',), key + '.bias')


def _resnet18(c: _Converter, key: str, path: tuple[str, ...], stem: str) -> None:
  """torchvision layout under `key` (stem conv named `stem`) -> avloc's ResNet18 at `path`."""
  _conv(c, path + ('conv1',), key + stem)
  _batch_norm(c, path + ('bn1',), key + 'bn1')
  for stage in range(1, 5):
    for block in range(2):
      torch_block, flax_block = f'{key}layer{stage}.{block}.', path + (f'layer{stage}_{block}',)
      for name in ('1', '2'):
        _conv(c, flax_block + ('conv' + name,), torch_block + 'conv' + name)
        _batch_norm(c, flax_block + ('bn' + name,), torch_block + 'bn' + name)
      if stage > 1 and block == 0:  # stride 2 and twice the channels: projected residual
        _conv(c, flax_block + ('downsample_conv',), torch_block + 'downsample.0')
        _batch_norm(c, flax_block + ('downsample_bn',), torch_block + 'downsample.1')


def _gate(x, index: int):
  """Gate `index` (0: r, 1: z, 2: n) of torch's stacked GRU weights [3H, ...] or biases."""
  size = x.shape[0] // 3
  return x[index * size:(index + 1) * size]


def _gru(c: _Converter, path: tuple[str, ...], key: str) -> None:
  """torch GRUCell -> flax GRUCell.

  torch: r = s(W_ir x + b_ir + W_hr h + b_hr), z likewise, n = tanh(W_in x + b_in +
  r * (W_hn h + b_hn)). flax: r = s(ir(x) + hr(h)), z = s(iz(x) + hz(h)), n = tanh(in(x)
  + r * hn(h)), where only ir, iz, in and hn have biases: ir and iz take b_i + b_h of
  their gate, in takes b_in and hn keeps b_hn inside r * (.).
  """
  params = ('params',) + path
  for index, gate in enumerate('rzn'):
    c.put(params + (f'i{gate}', 'kernel'), key + '.weight_ih', lambda w, i=index: _gate(w, i).T)
    c.put(params + (f'h{gate}', 'kernel'), key + '.weight_hh', lambda w, i=index: _gate(w, i).T)
  for index, gate in enumerate('rz'):
    c.put(params + (f'i{gate}', 'bias'), (key + '.bias_ih', key + '.bias_hh'),
          lambda b_i, b_h, i=index: _gate(b_i, i) + _gate(b_h, i))
  c.put(params + ('in', 'bias'), key + '.bias_ih', lambda b: _gate(b, 2))
  c.put(params + ('hn', 'bias'), key + '.bias_hh', lambda b: _gate(b, 2))


def _slot_attention(c: _Converter, shared_slots: bool) -> None:
  """The release shares one set of initial slots; separate slots both start from it."""
  path = ('params', 'slot_attention')
  names = ('initial_slots',) if shared_slots else ('initial_slots_image', 'initial_slots_audio')
  for name in names:
    c.put(path + (name,), 'slot_attn.slots', lambda x: x.reshape(x.shape[1:]))
  for torch_name, flax_name in (('img', 'image'), ('aud', 'audio')):
    c.put(path + (f'mask_token_{flax_name}',), f'slot_attn.mask_token_{torch_name}',
          lambda x: x.reshape(x.shape[2:]))
    branch, key = ('slot_attention', flax_name), f'slot_attn.{torch_name}_'
    for projection in ('to_q', 'to_k', 'to_v'):
      _dense(c, branch + (projection,), key + projection)
    for torch_norm, flax_norm in (('input', 'input'), ('slots', 'slots'), ('pre_ff', 'pre_mlp')):
      _layer_norm(c, branch + (f'norm_{flax_norm}',), f'{key}norm_{torch_norm}')
    _dense(c, branch + ('mlp_in',), key + 'mlp.0')
    _dense(c, branch + ('mlp_out',), key + 'mlp.2')
    _gru(c, branch + ('gru',), key + 'gru')


def _decoder(c: _Converter, path: tuple[str, ...], key: str, hidden_layers: int) -> None:
  """MlpDecoder: Linear/ReLU pairs at mlp.0, .2, ..., the output Linear last."""
  c.put(('params',) + path + ('row_embedding',), key + 'pos_emb.row_embed.weight')
  c.put(('params',) + path + ('col_embedding',), key + 'pos_emb.col_embed.weight')
  for layer in range(hidden_layers):
    _dense(c, path + (f'hidden_{layer}',), f'{key}mlp.{2 * layer}')
  _dense(c, path + ('output',), f'{key}mlp.{2 * hidden_layers}')


def _ignore_trunk_extras(prefix: str) -> Callable[[str], bool]:
  return lambda key: key.startswith(prefix + 'fc.') or key.endswith('.num_batches_tracked')


def resnet18_from_torch(state_dict: Mapping, prefix: str = '', in_channels: int = 3,
                        stem: str = 'conv1') -> dict:
  """torchvision-layout ResNet-18 weights under `prefix` -> {'params', 'batch_stats'} of
  avloc's ResNet18 (width read from the stem conv [width, in_channels, 7, 7]).

  `fc.*` and `num_batches_tracked` are ignored; the release's audio net names its
  1-channel stem `conv1_1` (`stem='conv1_1'`). Raises ConversionError on any mismatch.
  """
  c = _Converter(state_dict, _ignore_trunk_extras(prefix))
  _resnet18(c, prefix, (), stem)
  stem_shape = c.shape(prefix + stem + '.weight')
  width = stem_shape[0] if stem_shape else 64
  template = _template(ResNet18(width), jnp.zeros((1, 32, 32, in_channels)))
  return c.finish('ResNet-18 weights' + (f' under {prefix!r}' if prefix else ''), template,
                  prefix)


def image_trunk_from_torchvision(state_dict: Mapping) -> dict:
  """torchvision's `resnet18` state dict (e.g. IMAGENET1K_V1, resnet18-f37072fd.pth) ->
  {'params', 'batch_stats'} of the image encoder's trunk."""
  return resnet18_from_torch(state_dict, '', 3)


def model_template(config: ml_collections.ConfigDict, kind: str) -> dict:
  """Flat {path: shape} of method `kind`'s model variables for `config`."""
  if config.method != kind:
    raise ValueError(f'a {kind} checkpoint needs config.method {kind!r}, got {config.method!r}')
  model = methods.get_method(kind).build_model(config)
  size = config.data.image.size
  freq, frames = audio_lib.spectrogram_shape(config.data.audio)
  return _template(model, jnp.zeros((1, size, size, 3), jnp.uint8),
                   jnp.zeros((1, freq, frames, 1), jnp.float32))


def jsa_from_torch(state_dict: Mapping, config: ml_collections.ConfigDict) -> dict:
  """The official release's `mymodel` state dict -> {'params', 'batch_stats'} of avloc's
  JSA for `config` (its model block, image size and clip length fix every shape).

  Raises ConversionError naming missing and unexpected torch keys and shape mismatches.
  """
  template = model_template(config, 'jsa')
  c = _Converter(state_dict, lambda key: key.endswith('.num_batches_tracked'))
  _resnet18(c, 'imgnet.', ('image_encoder', 'trunk'), 'conv1')
  _conv(c, ('image_encoder', 'projection'), 'imgnet.proj', bias=True)
  _resnet18(c, 'audnet.', ('audio_encoder', 'trunk'), 'conv1_1')
  _conv(c, ('audio_encoder', 'projection'), 'audnet.proj.0', bias=True)
  _slot_attention(c, config.model.shared_slots)
  _decoder(c, ('image_decoder',), 'img_decoder.', config.model.decoder_hidden_layers)
  _decoder(c, ('audio_decoder',), 'aud_decoder.', config.model.decoder_hidden_layers)
  return c.finish('JSA checkpoint', template)


def ezvsl_from_torch(state_dict: Mapping, config: ml_collections.ConfigDict,
                     kind: str = 'ezvsl') -> dict:
  """The EZ-VSL release's `EZVSL` state dict (or FNAC's `FNAC`, `kind='fnac'`: the same
  parameters) -> {'params', 'batch_stats'} of avloc's DualEncoder for `config`. The Linear
  `aud_proj` [D, C] becomes the 1x1 conv kernel [1, 1, C, D] that `AudioEncoder` applies
  to the max-pooled vector. Raises ConversionError on any mismatch."""
  template = model_template(config, kind)
  c = _Converter(state_dict, lambda key: key.endswith('.num_batches_tracked'))
  _resnet18(c, 'imgnet.', ('image_encoder', 'trunk'), 'conv1')
  _conv(c, ('image_encoder', 'projection'), 'img_proj', bias=True)
  _resnet18(c, 'audnet.', ('audio_encoder', 'trunk'), 'conv1')
  c.put(('params', 'audio_encoder', 'projection', 'kernel'), 'aud_proj.weight',
        lambda w: w.T[None, None])
  c.put(('params', 'audio_encoder', 'projection', 'bias'), 'aud_proj.bias')
  return c.finish(f'{kind} checkpoint', template)


# LVS's `base_models.ResNet` builds all three stems and a classifier in both nets.
_LVS_UNUSED = ('imgnet.conv1_a.', 'imgnet.conv1_flow.', 'imgnet.fc.', 'audnet.conv1.',
               'audnet.conv1_flow.', 'audnet.fc.')


def lvs_from_torch(state_dict: Mapping, config: ml_collections.ConfigDict) -> dict:
  """The LVS release's `AVENet` state dict -> {'params', 'batch_stats'} of avloc's
  DualEncoder for `config` (no projections: trunks only; the unused stems and `fc` of
  both nets are ignored). Raises ConversionError on any mismatch."""
  template = model_template(config, 'lvs')
  c = _Converter(state_dict, lambda key: (key.endswith('.num_batches_tracked')
                                          or key.startswith(_LVS_UNUSED)))
  _resnet18(c, 'imgnet.', ('image_encoder', 'trunk'), 'conv1')
  _resnet18(c, 'audnet.', ('audio_encoder', 'trunk'), 'conv1_a')
  return c.finish('lvs checkpoint', template)


_FROM_TORCH = {
    'jsa': jsa_from_torch,
    'ezvsl': ezvsl_from_torch,
    'fnac': functools.partial(ezvsl_from_torch, kind='fnac'),
    'lvs': lvs_from_torch,
}


def merge_image_trunk(params: dict, batch_stats: dict, trunk: dict) -> tuple[dict, dict]:
  """(params, batch_stats) of a model with an `image_encoder/trunk` (every method) with
  that trunk replaced by `trunk` {'params', 'batch_stats'}; shapes must match exactly."""
  current = {'params': params['image_encoder']['trunk'],
             'batch_stats': batch_stats['image_encoder']['trunk']}
  new = flax.traverse_util.flatten_dict(trunk)
  template = {p: x.shape for p, x in flax.traverse_util.flatten_dict(current).items()}
  _check('config.model_init.image_trunk', new, template,
         {p: 'the trunk' for p in new})
  trunk = jax.tree_util.tree_map(lambda x, old: jnp.asarray(x, old.dtype), trunk, current)

  def replace(tree, value):
    return {**tree, 'image_encoder': {**tree['image_encoder'], 'trunk': value}}

  return replace(params, trunk['params']), replace(batch_stats, trunk['batch_stats'])


def load_torch_state_dict(path) -> dict:
  """A PyTorch checkpoint's state dict as float32 numpy arrays; a {'model': ...},
  {'state_dict': ...} or {'model_state_dict': ...} wrapper (the releases' training
  checkpoints) is unwrapped."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'reading the PyTorch checkpoint {path} needs torch: pip install torch '
                      '(the CPU wheel is enough)') from e
  with paths.resolve(path).open('rb') as f:
    checkpoint = torch.load(f, map_location='cpu', weights_only=True)
  for wrapper in ('model', 'state_dict', 'model_state_dict'):
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
      checkpoint = checkpoint[wrapper]
  if not isinstance(checkpoint, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in checkpoint.values()):
    raise ValueError(f'{path} holds no state dict of tensors')
  return {k: v.detach().float().numpy() for k, v in checkpoint.items()}


def load_image_trunk(path: str) -> dict:
  """{'params', 'batch_stats'} of an ImageNet ResNet-18 trunk from a torchvision .pth file
  or from an export written by `--kind=imagenet_resnet18`."""
  path = paths.resolve(path)
  if not path.exists():
    raise FileNotFoundError(f'{path}: no such ImageNet ResNet-18 file (torchvision .pth) or '
                            f'export (python -m avloc.convert --kind={TRUNK_KIND})')
  if not path.is_dir():
    return image_trunk_from_torchvision(load_torch_state_dict(path))
  saved, variables = checkpointing.load_inference(path)
  if saved.get('kind') != TRUNK_KIND:
    raise ValueError(f'{path} is not an image-trunk export (python -m avloc.convert '
                     f'--kind={TRUNK_KIND} writes one)')
  return variables


def convert_checkpoint(kind: str, input_path: str, output_dir: str,
                       config: ml_collections.ConfigDict | None = None) -> str:
  """Converts a PyTorch checkpoint into the export `output_dir`/export/0; returns its path.

  kind 'imagenet_resnet18': torchvision ResNet-18 -> trunk variables, config {'kind',
  'source'}; a method ('jsa', 'ezvsl', 'lvs', 'fnac'): its release's checkpoint -> the
  method's variables with `config`.
  """
  if kind not in KINDS:
    raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
  if kind != TRUNK_KIND and config is None:
    raise ValueError(f'converting a {kind} checkpoint needs the config of its architecture '
                     f'(--config=configs/{kind}.py[:variant])')
  output_dir = paths.resolve(output_dir)
  export_dir = output_dir / checkpointing.EXPORT_DIR
  if export_dir.exists():
    raise FileExistsError(f'{export_dir} exists; choose a new --output directory')
  state_dict = load_torch_state_dict(input_path)
  if kind == TRUNK_KIND:
    variables = image_trunk_from_torchvision(state_dict)
    config = ml_collections.ConfigDict(
        {'kind': TRUNK_KIND, 'source': str(paths.resolve(input_path))})
  else:
    variables = _FROM_TORCH[kind](state_dict, config)
  exporter = checkpointing.Exporter(str(output_dir), best_metric='')
  exporter.export(0, variables, config, metrics=None)
  exporter.close()
  return str(export_dir / '0')
