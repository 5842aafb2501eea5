"""Training: train state, the jit-compiled data-parallel train step, and the loop.

The train step is one `jax.jit`-compiled pure function (forward, loss, gradient, optax
update) over a 1-D 'data' mesh: the state is replicated, the batch is split over all
devices, the losses see the global batch, and the state buffers are donated. The loop
only waits on the device when it logs, evaluates or checkpoints.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from avloc import (checkpointing, config as config_lib, methods, metric_writer, preemption,
                   sharding, weights)
from avloc.data import audio as audio_lib
from avloc.data import pipeline, tfrecord, workers


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
  trunk = weights.load_image_trunk(trunk_path) if trunk_path else None

  def init(params_rng, rng, trunk):
    mask_rng, state_rng = jax.random.split(rng)
    variables = model.init(
        {'params': params_rng, **_stochastic_rngs(mask_rng)},
        jnp.zeros(shapes['image'].shape, jnp.uint8),
        jnp.zeros(shapes['spectrogram'].shape, jnp.float32), train=True)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    if trunk is not None:
      params, batch_stats = weights.merge_image_trunk(params, batch_stats, trunk)
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


class NonFiniteLoss(FloatingPointError):
  """The loss or the gradient became NaN or infinite; the message names the step."""


def _check_finite(pending: list, last_checkpoint: int | None) -> None:
  """pending: [(step, host metrics)]; raises NonFiniteLoss at the first step whose loss
  or gradient norm is not finite."""
  for step, metrics in pending:
    loss, grad_norm = float(metrics['loss']), float(metrics['grad_norm'])
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      last = 'none' if last_checkpoint is None else f'step {last_checkpoint}'
      raise NonFiniteLoss(
          f'step {step}: the loss is {loss} (gradient norm {grad_norm}); stopped without '
          f'saving anything new (the last checkpoint is {last}). Lower '
          'config.optim.learning_rate or set config.optim.grad_clip_norm, then re-run.')


def _is_eval_step(step: int, plan: Plan) -> bool:
  return step == 0 or step % plan.eval_every_steps == 0 or step == plan.total_steps


def train(config: ml_collections.ConfigDict, workdir: str, split_dirs: dict[str, str],
          evaluator=None, log=print) -> TrainState:
  """Trains (resuming from the newest checkpoint of `workdir` that restores), evaluating
  with `evaluator` (see avloc.evaluate) at step 0, every `eval_every_steps` and at the end.

  Stops with preemption.Preempted after saving a checkpoint when the run is preempted
  (SIGTERM; during an evaluation at its next batch), with NonFiniteLoss, saving nothing
  new, when the loss stops being finite, and with checkpointing.CheckpointError when a
  save fails. Whatever stops it, the checkpoint being written is completed first.
  """
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
  writer = None

  def evaluate(step):
    try:
      metrics = evaluator.evaluate(state.variables, step, writer)
    except preemption.Preempted:
      checkpointer.save(step, state, data_iterator, config)
      raise preemption.Preempted(_preempted_message(step, plan, 'during its evaluation'))
    exporter.export(step, jax.device_get(state.variables), config, metrics)

  try:
    start = 0
    if checkpointer.latest_step is not None:
      abstract = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
      state, saved_config, start = checkpointer.restore(abstract, data_iterator, log)
      log(f'Resumed from {checkpointer.directory}/{start}.')
      for change in config_lib.changed_fields(saved_config, config.to_dict()):
        log(f'  warning: config differs from the checkpoint: {change}')
    writer = metric_writer.MetricWriter(workdir, plan.total_steps,
                                        enabled=jax.process_index() == 0, resume_step=start)
    log(f'{manifest.num_examples} training examples, {plan.steps_per_epoch} steps/epoch, '
        f'{plan.total_steps} steps of batch {config.train.batch_size} on {mesh.size} '
        f'device(s) ({jax.devices()[0].platform}).')
    with preemption.Guard() as guard:
      if evaluator is not None:
        evaluator.interrupt = guard.check
        if _is_eval_step(start, plan) and not evaluator.resume(start):
          evaluate(start)
      pending = []  # (step, metrics on the device) since the last progress line
      for step in range(start + 1, plan.total_steps + 1):
        batch = sharding.global_batch(next(data_iterator), mesh)
        state, metrics = train_step(state, batch)
        pending.append((step, metrics))
        final = step == plan.total_steps
        stop = guard.check()
        log_now = step % config.train.log_every_steps == 0 or final or stop
        save = step % config.train.checkpoint_every_steps == 0 or final or stop
        evaluate_now = evaluator is not None and (step % plan.eval_every_steps == 0 or final)
        if log_now or save or evaluate_now:  # the only points that wait for the device
          host = jax.device_get(pending)
          _check_finite(host, checkpointer.latest_step)
        if log_now:
          _write_progress(writer, host, schedule, plan, config)
          pending = []
        if save:
          checkpointer.save(step, state, data_iterator, config)
        if stop:
          raise preemption.Preempted(_preempted_message(step, plan))
        checkpointer.check_for_errors()
        if evaluate_now:
          evaluate(step)
  except BaseException:
    checkpointer.close(raise_errors=False, log=log)
    raise
  else:
    checkpointer.close()
  finally:
    workers.close(data_iterator)  # stops the input workers and frees their batches now
    if evaluator is not None:
      evaluator.interrupt = None
    exporter.close()
    if writer is not None:
      writer.close()
  return state


def _preempted_message(step: int, plan: Plan, when: str = '') -> str:
  return (f'Preempted (SIGTERM) at step {step} of {plan.total_steps}{" " + when if when else ""}: '
          f'saved a checkpoint at step {step}; exiting with status {preemption.EXIT_STATUS}. '
          'Re-run the same command to resume.')


def _write_progress(writer, host_pending: list, schedule, plan: Plan, config) -> None:
  """Means of the metrics since the last progress line -> metrics.jsonl, TensorBoard and
  a progress line on stdout."""
  step = host_pending[-1][0]
  means = {k: float(np.mean([m[k] for _, m in host_pending])) for k in host_pending[-1][1]}
  means['learning_rate'] = schedule(step - 1)
  means['epoch'] = step / plan.steps_per_epoch
  writer.write_scalars(step, {f'train/{k}': v for k, v in means.items()})
  shown = ['loss'] + sorted(k for k in means if k.startswith('loss_'))
  writer.progress(step, {k: means[k] for k in shown}, config.train.batch_size)
