"""Training: train state, the jit-compiled data-parallel train step, and the loop.

The train step is one `jax.jit`-compiled pure function (forward, loss, gradient, optax
update) over a 1-D 'data' mesh: the state is replicated, the batch is split over all
devices, the losses see the global batch, and the state buffers are donated. The loop
only waits on the device when it logs, evaluates or checkpoints.
"""

import contextlib
import dataclasses
import signal
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from avloc import checkpointing, config as config_lib, convert, methods, metric_writer, sharding
from avloc.data import audio as audio_lib
from avloc.data import pipeline, tfrecord


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key; the step's key is fold_in(rng, step)

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def learning_rate_schedule(optim: ml_collections.ConfigDict, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """config.optim.schedule: 'constant', 'cosine' (to 0 at the end) or 'step' (x gamma
  every epoch, as the official JSA release's StepLR), after `warmup_steps` linear warm-up."""
  lr = optim.learning_rate
  if optim.schedule == 'constant':
    main = optax.constant_schedule(lr)
  elif optim.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - optim.warmup_steps, 1))
  else:
    main = optax.exponential_decay(lr, steps_per_epoch, optim.step_gamma, staircase=True)
  if not optim.warmup_steps:
    return main
  warmup = optax.linear_schedule(0.0, lr, optim.warmup_steps)
  return optax.join_schedules([warmup, main], [optim.warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay) or Adam with torch's `Adam(weight_decay=...)`: L2,
weight_decay * params added to the gradient (the FNAC release); optional global-norm
clipping."""
  if optim.name == 'adamw':
    opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay)
  else:
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(optim.weight_decay), opt)
  if optim.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), opt)
  return opt


def input_shapes(config: ml_collections.ConfigDict, batch_size: int, train: bool) -> dict:
  """Shapes of the model inputs: uint8 image [B, S, n*S, 3], spectrogram [B, F, T, 1]
  (n sources side by side for NoPrior training mixtures)."""
  size = config.data.image.size
  sources = pipeline.mixture_sources(config) if train else 1
  freq, frames = audio_lib.spectrogram_shape(config.data.audio)
  return dict(image=jax.ShapeDtypeStruct((batch_size, size, sources * size, 3), jnp.uint8),
              spectrogram=jax.ShapeDtypeStruct((batch_size, freq, frames, 1), jnp.float32))


def create_train_state(config, model, tx, mesh) -> TrainState:
  """Initializes replicated parameters, BatchNorm statistics and optimizer state; the
  image trunk starts from `config.model_init.image_trunk` (ImageNet weights) when set."""
  shapes = input_shapes(config, 2, train=True)
  trunk_path = config.model_init.image_trunk
  trunk = convert.load_image_trunk(trunk_path) if trunk_path else None

  def init(params_rng, rng, trunk):
    mask_rng, state_rng = jax.random.split(rng)
    variables = model.init(
        {'params': params_rng, **_stochastic_rngs(mask_rng)},
        jnp.zeros(shapes['image'].shape, jnp.uint8),
        jnp.zeros(shapes['spectrogram'].shape, jnp.float32), train=True)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    if trunk is not None:
      params, batch_stats = convert.merge_image_trunk(params, batch_stats, trunk)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=state_rng)

  # Parameters are drawn with the 'rbg' generator: XLA compiles the initializers of a
  # ResNet with it several times faster than with threefry (30 s -> 5 s on 2 CPU cores).
  params_rng = jax.random.key(config.train.seed, impl='rbg')
  rng = jax.random.PRNGKey(config.train.seed)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(params_rng, rng, trunk)


def _stochastic_rngs(rng) -> dict:
  """The models' random streams from one key: 'mask' (JSA's token masking) and
  'dropout' (FNAC's feature dropout)."""
  return {'mask': rng, 'dropout': jax.random.fold_in(rng, 1)}


def make_train_step(config, model, method, tx, mesh, steps_per_epoch: int):
  """jit(step)(state, batch) -> (state, metrics); state replicated and donated, batch
  sharded over 'data'. The loss sees the step's 0-based epoch, step // steps_per_epoch
  (FNAC's warm-up)."""

  def step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
          batch['spectrogram'], train=True, rngs=_stochastic_rngs(rng),
          mutable=['batch_stats'])
      loss, metrics = method.loss(outputs, config, state.step // steps_per_epoch)
      return loss, (metrics, updates['batch_stats'])

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics['grad_norm'] = optax.global_norm(grads)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics

  replicated = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, sharding.batch_sharded(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


@dataclasses.dataclass
class Plan:
  """How long a run is."""

  steps_per_epoch: int
  total_steps: int
  eval_every_steps: int


def make_plan(config, num_examples: int, split_dir: str) -> Plan:
  batch_size = config.train.batch_size
  steps_per_epoch = num_examples // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{split_dir} holds {num_examples} examples, fewer than '
                     f'config.train.batch_size={batch_size}')
  total = config.train.max_steps or config.train.epochs * steps_per_epoch
  return Plan(steps_per_epoch, total, config.train.eval_every_steps or steps_per_epoch)


class PreemptionGuard(contextlib.AbstractContextManager):
  """Turns SIGTERM (e.g. TPU preemption) into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)
    return False


def train(config: ml_collections.ConfigDict, workdir: str, split_dirs: dict[str, str],
          evaluator=None, log=print) -> TrainState:
  """Trains (resuming from `workdir` if it holds a checkpoint), evaluating with
  `evaluator` (see avloc.evaluate) at step 0, every `eval_every_steps` and at the end."""
  method = methods.get_method(config.method)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, mesh, 'train.batch_size')
  train_dir = split_dirs[config.data.train_split]
  manifest = tfrecord.read_manifest(train_dir)
  plan = make_plan(config, manifest.num_examples, train_dir)
  schedule = learning_rate_schedule(config.optim, plan.steps_per_epoch, plan.total_steps)
  tx = make_optimizer(config.optim, schedule)
  model = method.build_model(config)
  state = create_train_state(config, model, tx, mesh)
  train_step = make_train_step(config, model, method, tx, mesh, plan.steps_per_epoch)

  dataset = pipeline.train_dataset(
      config, train_dir, seed=config.train.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), global_batch_size=config.train.batch_size)
  data_iterator = iter(dataset)
  checkpointer = checkpointing.TrainCheckpointer(workdir, config.train.keep_checkpoints)
  exporter = checkpointing.Exporter(workdir, config.eval.best_metric if evaluator else '')
  if checkpointer.latest_step is not None:
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state, saved_config = checkpointer.restore(abstract, data_iterator)
    log(f'Resumed from {workdir}/{checkpointing.TRAIN_DIR}/{checkpointer.latest_step}.')
    for change in config_lib.changed_fields(saved_config, config.to_dict()):
      log(f'  warning: config differs from the checkpoint: {change}')
  start = int(state.step)
  writer = metric_writer.MetricWriter(workdir, plan.total_steps,
                                      enabled=jax.process_index() == 0)
  log(f'{manifest.num_examples} training examples, {plan.steps_per_epoch} steps/epoch, '
      f'{plan.total_steps} steps of batch {config.train.batch_size} on {mesh.size} '
      f'device(s) ({jax.devices()[0].platform}).')

  def evaluate(step):
    metrics = evaluator.evaluate(state.variables, step, writer)
    exporter.export(step, jax.device_get(state.variables), config, metrics)

  if evaluator is not None and start == 0:
    evaluate(0)
  running, count = None, 0
  with PreemptionGuard() as preemption:
    for step in range(start + 1, plan.total_steps + 1):
      batch = sharding.global_batch(next(data_iterator), mesh)
      state, metrics = train_step(state, batch)
      running = metrics if running is None else jax.tree_util.tree_map(jnp.add, running, metrics)
      count += 1
      if step % config.train.log_every_steps == 0 or step == plan.total_steps:
        means = {k: v / count for k, v in jax.device_get(running).items()}
        means['learning_rate'] = schedule(step - 1)
        means['epoch'] = step / plan.steps_per_epoch
        writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
        shown = ['loss'] + sorted(k for k in means if k.startswith('loss_'))
        writer.progress(step, {k: means[k] for k in shown}, config.train.batch_size)
        running, count = None, 0
      final = step == plan.total_steps
      if step % config.train.checkpoint_every_steps == 0 or final or preemption.requested:
        checkpointer.save(step, state, data_iterator, config, force=True)
      if preemption.requested:
        log(f'SIGTERM: saved a checkpoint at step {step}; exiting. Re-run to resume.')
        break
      if evaluator is not None and (step % plan.eval_every_steps == 0 or final):
        evaluate(step)
  checkpointer.wait()
  checkpointer.close()
  exporter.close()
  writer.close()
  return state
