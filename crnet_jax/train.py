"""Training and evaluation of CRNet (supervised) and MCMT (semi-supervised mean teacher).

`train_and_evaluate(config, workdir)` runs a whole experiment; each concern lives in its module:

- Config (`validate_config`): every field is checked once, before anything runs, by the module
  that reads it (`ConfigError` naming the key): the data fields by `input_pipeline.check_config`,
  the model fields by `models.create_model`, the training fields here.
- Data (`input_pipeline`): the datasets are built once (`load_data`) and give the training batches
  (`create_train_iterator`: process-local numpy batches, turned into global arrays sharded on the
  mesh axis 'data') and the test batches (`create_eval_dataset`).
- State and steps (here): `TrainState` (step, params, teacher_params, opt_state, rng), replicated
  on a 1-D mesh of all devices; the batch is sharded over the devices. The steps are `jax.jit`ted
  with the state donated. No pmap: the same code runs on one device, many devices and many hosts.
- Optimizer: Adam (default betas), learning rate `config.learning_rate`, multiplied by
  `config.lr_decay_factor` at each of `config.lr_decay_epochs` (paper: 5e-4 halved at epochs 20,
  40, 60, 90 of 100).
- Supervised step: L_PE = L_E + beta * L_ms of the student on the labeled batch.
- MCMT step: the student runs once on concat(labeled, unlabeled); the teacher, outside the
  gradient, on the same batch with Gaussian noise (std `mcmt.noise_std`, clipped to [0, 1]
  unless `mcmt.clip_noisy_input` is False);
  L_SSL = L_PE(labeled) + lam * (L_C + gamma * L_mc); after the Adam update the teacher becomes
  `optax.incremental_update(student, teacher, 1 - ema_decay)`. Optional (off in the paper): a
  sigmoid ramp-up of lam over `mcmt.rampup_epochs` and the EMA warm-up
  `min(ema_decay, 1 - 1 / (step + 1))`.
- Evaluation (`evaluation.py`) every `eval_every_epochs` epochs and at the end: PSNR and SSIM on
  whole test images (outputs clipped to [0, 1], padding excluded), of the student and, for MCMT,
  of the teacher; the input's own PSNR/SSIM (identity) is reported for reference.
- Checkpoints (`checkpointing.RunCheckpoints`): the latest ones in `workdir/checkpoints` (state +
  data iterator state), the best by the student's test PSNR in `workdir/best`. The paper's
  numbers are the student's, so the best checkpoint is chosen by the student for both methods
  (the teacher's parameters are saved with it). A rerun with the same workdir resumes by itself.
- Logs (`metric_writers.py`, process 0 only): TensorBoard (`workdir/tensorboard`),
  `workdir/metrics.jsonl` (one JSON object per log/eval event), `workdir/config.json`,
  `workdir/parameters.txt` (the parameter table), `workdir/samples/step_<N>.png` (low | student |
  teacher | high of the first `num_eval_images` test images at each evaluation). The run ends
  with a summary (`metric_writers.run_summary`). The ETA counts the train steps and the
  evaluations apart (`Progress`). Every process saves its shards of the checkpoints (orbax).
- Robustness (README.md, "Many hosts, kills, bad inputs"): the config is validated
  (`ConfigError`) and the workdir checked for writing and free space before any data is built;
  a failed save raises `CheckpointSaveError` (an OSError naming the folder); a run killed
  anywhere resumes from the newest complete checkpoint, and the log lines after it are dropped,
  so the result equals an uninterrupted run's.
- A non-finite loss (or gradient norm) stops the run with `NonFiniteLossError`, naming the step
  and the loss terms; a state that produced it is never saved.
- One writer per workdir (`checkpointing.lock_workdir`); SIGTERM or SIGINT (Ctrl-C) stops after
  the current step with its checkpoint (`StopSignals`, `TrainingStopped`); a damaged latest
  checkpoint is named and skipped for the newest intact one (`checkpointing.resume`).
  docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
from clu import metrics as clu_metrics
import flax
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import optax

try:  # the context manager of jax's `jax_threefry_gpu_kernel_lowering` option
  from jax._src import config as jax_config
except ImportError:  # pragma: no cover
  jax_config = None

from crnet_jax import checkpointing
from crnet_jax import evaluation
from crnet_jax import input_pipeline
from crnet_jax import logs
from crnet_jax import losses
from crnet_jax import metric_writers
from crnet_jax import models
from crnet_jax.progress import Progress
from crnet_jax.progress import format_duration as _format_duration
from crnet_jax.checkpointing import CheckpointSaveError  # pylint: disable=unused-import
from crnet_jax.config_checks import ConfigError
from crnet_jax.config_checks import is_int
from crnet_jax.config_checks import is_num
from crnet_jax.config_checks import need

Array = jax.Array
PyTree = Any
METHODS = input_pipeline.METHODS
DATA_AXIS = 'data'


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient norm of a training step is NaN or infinite."""


class TrainingStopped(Exception):
  """Training stopped on a signal (SIGTERM, SIGINT) after saving the checkpoint of its step.

  `str()` is the line main.py prints; `exit_code` is 128 + the signal (143 SIGTERM, 130 SIGINT).
  """

  def __init__(self, signum: int, step: int, directory: Any):
    self.signum, self.step, self.directory = int(signum), int(step), directory
    super().__init__(f'stopped at step {step} ({signal.Signals(signum).name}): checkpoint saved '
                     f'in {directory}/{step}; rerun the same command to continue')

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from step to step (all arrays: checkpointable).

  Attributes:
    step: int32 scalar, the number of optimizer updates done.
    params: the student's parameters (the `'params'` collection of `CRNet`).
    teacher_params: the mean teacher's parameters (MCMT), or None (supervised).
    opt_state: Adam's state for `params`.
    rng: a raw uint32 PRNG key; the teacher's input noise of step s uses `fold_in(rng, s)`.
  """
  step: Array
  params: PyTree
  teacher_params: PyTree | None
  opt_state: optax.OptState
  rng: Array


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The hyperparameters the jitted steps close over (hashable, so compiled steps are reused).

  Built by `StepConfig.from_config`; the epoch-based settings are converted to steps there.
  """
  method: str = 'supervised'
  beta: float = 1.0
  gamma: float = 1.0
  lam: float = 1.0
  ema_decay: float = 0.99
  ema_warmup: bool = False
  noise_std: float = 0.02
  clip_noisy_input: bool = True
  rampup_steps: int = 0
  learning_rate: float = 5e-4
  lr_boundaries: tuple[tuple[int, float], ...] = ()  # (step, scale) pairs, sorted

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> 'StepConfig':
    return cls(
        method=config.method,
        beta=float(config.loss.beta),
        gamma=float(config.loss.gamma),
        lam=float(config.loss.lam),
        ema_decay=float(config.mcmt.ema_decay),
        ema_warmup=bool(config.mcmt.ema_warmup),
        noise_std=float(config.mcmt.noise_std),
        clip_noisy_input=bool(config.mcmt.get('clip_noisy_input', True)),
        rampup_steps=int(round(float(config.mcmt.rampup_epochs) * steps_per_epoch)),
        learning_rate=float(config.learning_rate),
        lr_boundaries=lr_boundaries(config, steps_per_epoch))


# ------------------------------------------------------------------------------------------------
# Config.


def validate_config(config: ml_collections.ConfigDict,
                    num_devices: int | None = None) -> models.CRNet:
  """Raises ConfigError naming the first bad key of `config` (checked before anything runs).

  Each field is checked once, by the module that reads it: `method` and the data fields by
  `input_pipeline.check_config`, the training fields here, the model fields by
  `models.create_model`, which builds the model: it is returned, for the run to use.
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  input_pipeline.check_config(config, num_devices)
  d = config.data
  need(d.patch_size >= losses.SSIM_WINDOW,
       f'data.patch_size must be at least the SSIM window ({losses.SSIM_WINDOW}), got '
       f'{d.patch_size!r}')
  need(is_num(config.num_epochs) and config.num_epochs > 0,
       f'num_epochs must be positive, got {config.num_epochs!r}')
  n = config.get('num_train_steps', -1)
  need(is_int(n) and (n > 0 or n == -1),
       f'num_train_steps must be a positive integer or -1 (from num_epochs), got {n!r}')
  need(is_num(config.learning_rate) and config.learning_rate > 0,
       f'learning_rate must be positive, got {config.learning_rate!r}')
  need(is_num(config.lr_decay_factor) and config.lr_decay_factor > 0,
       f'lr_decay_factor must be positive, got {config.lr_decay_factor!r}')
  epochs = config.lr_decay_epochs
  need(isinstance(epochs, (tuple, list)) and all(is_num(e) and e >= 0 for e in epochs),
       f'lr_decay_epochs must be a sequence of non-negative epochs, got {epochs!r}')
  for key in ('beta', 'gamma', 'lam'):
    v = config.loss[key]
    need(is_num(v) and v >= 0 and math.isfinite(v),
         f'loss.{key} must be a non-negative number, got {v!r}')
  m = config.mcmt
  need(is_num(m.ema_decay) and 0.0 <= m.ema_decay < 1.0,
       f'mcmt.ema_decay must be in [0, 1), got {m.ema_decay!r}')
  need(is_num(m.noise_std) and m.noise_std >= 0,
       f'mcmt.noise_std must be non-negative, got {m.noise_std!r}')
  need(is_num(m.rampup_epochs) and m.rampup_epochs >= 0,
       f'mcmt.rampup_epochs must be non-negative (0 = off), got {m.rampup_epochs!r}')
  need(isinstance(m.ema_warmup, bool), f'mcmt.ema_warmup must be a bool, got {m.ema_warmup!r}')
  clip = m.get('clip_noisy_input', True)
  need(isinstance(clip, bool), f'mcmt.clip_noisy_input must be a bool, got {clip!r}')
  need(is_num(config.eval_every_epochs) and config.eval_every_epochs >= 0,
       f'eval_every_epochs must be non-negative (0 = only at the end), got '
       f'{config.eval_every_epochs!r}')
  for key in ('checkpoint_every_steps', 'max_to_keep', 'log_every_steps'):
    need(is_int(config[key]) and config[key] > 0,
         f'{key} must be a positive integer, got {config[key]!r}')
  k = config.get('num_eval_images', 0)
  need(is_int(k) and k >= 0, f'num_eval_images must be a non-negative integer, got {k!r}')
  try:
    return models.create_model(config.model)  # checks every model field
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`config.num_train_steps` if positive, else `num_epochs * steps_per_epoch` (at least 1)."""
  n = int(config.get('num_train_steps', -1))
  if n > 0:
    return n
  return max(1, int(round(float(config.num_epochs) * steps_per_epoch)))


def lr_boundaries(config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> tuple[tuple[int, float], ...]:
  """`((step, scale), ...)`: the learning rate is multiplied by `scale` from `step` on."""
  scales: dict[int, float] = {}
  for epoch in config.lr_decay_epochs:
    step = int(round(float(epoch) * steps_per_epoch))
    scales[step] = scales.get(step, 1.0) * float(config.lr_decay_factor)
  return tuple(sorted(scales.items()))


def learning_rate_schedule(hp: StepConfig) -> optax.Schedule:
  """Piecewise constant: `learning_rate`, scaled at each boundary (update count >= step)."""
  return optax.piecewise_constant_schedule(hp.learning_rate, dict(hp.lr_boundaries))


def create_learning_rate_schedule(config: ml_collections.ConfigDict,
                                  steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the update count, from `config` (paper: 5e-4, halved
  at epochs 20, 40, 60 and 90)."""
  return learning_rate_schedule(StepConfig.from_config(config, steps_per_epoch))


def create_optimizer(hp: StepConfig) -> optax.GradientTransformation:
  """Adam with the default betas and the piecewise constant learning rate."""
  return optax.adam(learning_rate_schedule(hp))


def consistency_weight(hp: StepConfig, step: Array) -> Array:
  """lam at update count `step`: constant, or `lam * exp(-5 (1 - t)^2)`, t = step / rampup."""
  if hp.rampup_steps <= 0:
    return jnp.asarray(hp.lam, jnp.float32)
  t = jnp.clip(step.astype(jnp.float32) / hp.rampup_steps, 0.0, 1.0)
  return hp.lam * jnp.exp(-5.0 * jnp.square(1.0 - t))


def ema_decay(hp: StepConfig, step: Array) -> Array:
  """The teacher's decay for the update that makes the count `step` (1 for the first update):
  `ema_decay`, or with the warm-up `min(ema_decay, 1 - 1 / (step + 1))`."""
  if not hp.ema_warmup:
    return jnp.asarray(hp.ema_decay, jnp.float32)
  return jnp.minimum(hp.ema_decay, 1.0 - 1.0 / (step.astype(jnp.float32) + 1.0))


# ------------------------------------------------------------------------------------------------
# State and steps.


def create_mesh(devices: Iterable[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over all devices (of all processes), axis 'data', auto sharding."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def create_train_state(model: models.CRNet, tx: optax.GradientTransformation, rng: Array,
                       method: str, params_fn: Callable[[Array], PyTree] | None = None
                       ) -> TrainState:
  """A fresh state: the teacher (MCMT) starts as a copy of the student.

  Args:
    model: the CRNet to train.
    tx: the optimizer (`create_optimizer`).
    rng: a raw PRNG key (`jax.random.PRNGKey(config.seed)`), split into the init key and the
      state's key.
    method: 'supervised' (no teacher) or 'mcmt'.
    params_fn: init key -> params (default `models.init_params(model, key)`); e.g. a jitted version.
  """
  init_rng, state_rng = jax.random.split(rng)
  params = params_fn(init_rng) if params_fn else models.init_params(model, init_rng)
  teacher = jax.tree.map(jnp.copy, params) if method == 'mcmt' else None
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, teacher_params=teacher,
                    opt_state=tx.init(params), rng=state_rng)


def _apply_gradients(state: TrainState, grads: PyTree, tx: optax.GradientTransformation,
                     hp: StepConfig) -> tuple[PyTree, optax.OptState, dict[str, Array]]:
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  info = {'learning_rate': jnp.asarray(learning_rate_schedule(hp)(state.step), jnp.float32),
          'grad_norm': optax.tree.norm(grads)}
  return params, opt_state, info


def supervised_step(state: TrainState, batch: Mapping[str, Array], *, model: models.CRNet,
                    tx: optax.GradientTransformation,
                    hp: StepConfig) -> tuple[TrainState, dict[str, Array]]:
  """One Adam update of L_PE = L_E + beta * L_ms on `batch['low']` -> `batch['high']`."""

  def loss_fn(params):
    final, intermediates = model.apply({'params': params}, batch['low'])
    return losses.progressive_enhancement_loss(final, intermediates, batch['high'], hp.beta)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state, info = _apply_gradients(state, grads, tx, hp)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, {'loss': loss, **terms, **info}


def teacher_input(state: TrainState, x: Array, noise_std: float, clip: bool = True) -> Array:
  """`clip(x + noise_std * N(0, 1), 0, 1)` with noise from `fold_in(state.rng, state.step)`.

  With `clip=False` (`mcmt.clip_noisy_input`) the noisy input is left unclipped: zero-mean noise
  even in the darkest pixels, where clipping at 0 makes it brighter on average (docs/model.md).
  """
  if noise_std == 0:
    return x
  rng = jax.random.fold_in(state.rng, state.step)
  noise = jax.random.normal(rng, x.shape, jnp.float32)
  noisy = x + noise_std * noise
  return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


def mcmt_step(state: TrainState, batch: Mapping[str, Array], *, model: models.CRNet,
              tx: optax.GradientTransformation,
              hp: StepConfig) -> tuple[TrainState, dict[str, Array]]:
  """One MCMT update: L_SSL of the student, then the teacher's EMA of the new student.

  The student sees concat(batch['low'], batch['unlabeled']) once; the teacher sees the noisy
  version of the same batch, outside the gradient (its outputs are constants).
  """
  x = jnp.concatenate([batch['low'], batch['unlabeled']], axis=0)
  noisy = teacher_input(state, x, hp.noise_std, hp.clip_noisy_input)
  teacher_final, teacher_intermediates = jax.lax.stop_gradient(
      model.apply({'params': state.teacher_params}, noisy))
  lam = consistency_weight(hp, state.step)

  def loss_fn(params):
    final, intermediates = model.apply({'params': params}, x)
    return losses.semi_supervised_loss(final, intermediates, teacher_final,
                                       teacher_intermediates, batch['high'], beta=hp.beta,
                                       gamma=hp.gamma, lam=lam)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  params, opt_state, info = _apply_gradients(state, grads, tx, hp)
  step = state.step + 1
  decay = ema_decay(hp, step)
  teacher = optax.incremental_update(params, state.teacher_params, 1.0 - decay)
  new_state = state.replace(step=step, params=params, teacher_params=teacher,
                            opt_state=opt_state)
  return new_state, {'loss': loss, **terms, **info, 'lam': lam, 'ema_decay': decay}


STEP_FUNCTIONS: dict[str, Callable[..., tuple[TrainState, dict[str, Array]]]] = {
    'supervised': supervised_step, 'mcmt': mcmt_step}


@dataclasses.dataclass(frozen=True)
class Functions:
  """The jitted functions of a run (see `compiled_functions`)."""
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  init: Callable[[Array], TrainState]  # PRNG key -> replicated fresh state
  train_step: Callable[[TrainState, Mapping[str, Array]], tuple[TrainState, dict[str, Array]]]
  # (params, teacher_params, batch) -> (per-image metrics, clipped outputs), replicated.
  eval_step: Callable[..., tuple[dict[str, Array], dict[str, Array]]]

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def data_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(DATA_AXIS))


@functools.lru_cache(maxsize=16)
def compiled_functions(model: models.CRNet, hp: StepConfig, mesh: jax.sharding.Mesh) -> Functions:
  """The jitted init, train step and eval step of (model, hp) on `mesh`.

  The state is replicated (`P()`), batches are sharded on the mesh's 'data' axis, the state is
  donated to the train step. Cached on (model, hp, mesh), so runs with the same settings in one
  process (tests, sweeps) compile each function once.
  """
  tx = create_optimizer(hp)
  rep = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P(DATA_AXIS))
  params_fn = _compiled_init_params(model, mesh)

  def seed_init(key: Array) -> TrainState:
    state = create_train_state(model, tx, key, hp.method, params_fn)
    return jax.device_put(state, rep)

  step_fn = functools.partial(STEP_FUNCTIONS[hp.method], model=model, tx=tx, hp=hp)
  train_step = jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep),
                       donate_argnums=(0,))
  return Functions(mesh=mesh, tx=tx, init=seed_init, train_step=train_step,
                   eval_step=evaluation.compiled_eval_step(model, rep, data))


@functools.lru_cache(maxsize=16)
def _compiled_init_params(model: models.CRNet,
                          mesh: jax.sharding.Mesh) -> Callable[[Array], PyTree]:
  """Key -> the initial params, replicated on `mesh` (jitted; see `_fast_threefry`)."""
  init = jax.jit(functools.partial(models.init_params, model),
                 out_shardings=NamedSharding(mesh, P()))

  def params_fn(key: Array) -> PyTree:
    with _fast_threefry():
      return init(key)

  return params_fn


def _fast_threefry() -> contextlib.AbstractContextManager:
  """JAX's threefry as one GPU kernel (same numbers), where this jax has the option.

  CRNet's initialisation draws about 200 arrays; XLA lowers each threefry draw to its own
  unrolled program, and on an H200 compiling them took 40.5 s of the start of every run. With
  `jax_threefry_gpu_kernel_lowering` the same draws compile and run in 3.6 s, with the same
  parameters (benchmarks/results/h200-2026-12-04-init.jsonl). Other backends ignore it.
  """
  option = getattr(jax_config, 'threefry_gpu_kernel_lowering', None)
  return option(True) if option is not None else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# Host-side functions.


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, Array]:
  """Process-local numpy arrays -> global arrays sharded on the batch axis (any host count)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def _check_finite(step: int, step_metrics: Mapping[str, Array],
                  last_checkpoint: Callable[[], str]) -> None:
  """Raises NonFiniteLossError if the loss or the gradient norm of `step` is not finite.

  `last_checkpoint()` (called only on failure) describes the checkpoint a rerun resumes from.
  """
  loss, grad_norm = jax.device_get((step_metrics['loss'], step_metrics['grad_norm']))
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  values = jax.device_get(dict(step_metrics))
  terms = ', '.join(f'{k}={float(v):.6g}' for k, v in sorted(values.items()))
  raise NonFiniteLossError(
      f'Non-finite loss at step {step}: {terms}. Training stopped; this state was not saved, '
      f'{last_checkpoint()}.')


class _FiniteLoss:
  """`_check_finite` of every step, without waiting for the device at every step.

  `add(step, metrics)`, called once the next step is dispatched, checks the step before it (its
  values are ready by then); `now()` checks the last step added at once: before its state is
  evaluated, logged or saved, and at the end.
  """

  def __init__(self, last_checkpoint: Callable[[], str]):
    self._last_checkpoint = last_checkpoint
    self._pending: tuple[int, Mapping[str, Array]] | None = None

  def add(self, step: int, step_metrics: Mapping[str, Array]) -> None:
    previous, self._pending = self._pending, (step, step_metrics)
    if previous is not None:
      _check_finite(*previous, self._last_checkpoint)

  def now(self) -> None:
    if self._pending is not None:
      _check_finite(*self._pending, self._last_checkpoint)


def evaluation_steps(first: int, last: int, eval_every: int, total_steps: int) -> int:
  """How many of the steps `first..last` evaluate: every `eval_every`-th (0: none) and the last."""
  if last < first:
    return 0
  n = (last // eval_every - (first - 1) // eval_every) if eval_every > 0 else 0
  if first <= total_steps <= last and not (eval_every > 0 and total_steps % eval_every == 0):
    n += 1
  return n




def _metric_collection(names: Iterable[str]) -> type[clu_metrics.Collection]:
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})


class _MeanMetrics:
  """The mean of each step metric over the steps since the last `compute` (clu `Average`s)."""

  def __init__(self):
    self._cls: type[clu_metrics.Collection] | None = None
    self._collection: clu_metrics.Collection | None = None

  def add(self, step_metrics: Mapping[str, Array]) -> None:
    if self._cls is None:
      self._cls = _metric_collection(step_metrics)
    update = self._cls.single_from_model_output(**step_metrics)
    self._collection = update if self._collection is None else self._collection.merge(update)

  def compute(self) -> dict[str, float]:
    """The means (on the host), and a new interval."""
    values = jax.device_get(self._collection.compute())
    self._collection = None
    return values


class StopSignals:
  """SIGTERM (a preemption notice, `kill`) and SIGINT (Ctrl-C): stop after the current step.

  A context manager installed for the duration of training (the previous handlers come back on
  exit). The first signal only asks to stop: the step in progress finishes (its evaluation
  too, if it has one), its checkpoint is saved and `train_and_evaluate` raises `TrainingStopped`.
  A second SIGINT aborts at once (exit 130; the work since the last checkpoint is lost).

  One process: the handlers set a flag, read by `should_stop(step)` after each step. Several
  processes must stop at the same step (each saves its shards of one checkpoint), so there
  `should_stop` is jax's `multihost_utils.reached_preemption_sync_point(step)`: jax's preemption
  service (`jax.distributed`, on by default) catches SIGTERM on any process itself, tells every
  process, and they agree on the step to stop at (the largest step any of them reached, plus
  one). SIGTERM is then left to jax, and SIGINT is passed on to it as a SIGTERM of this process.
  With the preemption service off (`jax_enable_preemption_service=False`), a multi-process run
  installs no handler: a signal kills it, and the rerun resumes from the last checkpoint.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._sync = False

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only
    signals = (signal.SIGTERM, signal.SIGINT)
    if jax.process_count() > 1:
      from jax._src import distributed  # pylint: disable=g-import-not-at-top
      if distributed.global_state.preemption_sync_manager is None:
        logging.warning('The jax preemption service is off: SIGTERM or Ctrl-C kills this '
                        'multi-process run (the rerun resumes from the last checkpoint).')
        return self
      self._sync = True
      signals = (signal.SIGINT,)  # jax's preemption notifier handles SIGTERM
    for sig in signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.signum is not None:
      if signum == signal.SIGINT:
        print(f'aborted ({name} again): the work since the last checkpoint is lost',
              file=sys.stderr, flush=True)
        os._exit(128 + signum)  # pylint: disable=protected-access
      return
    self.signum = signum
    logging.warning('%s: stopping after the current step, with its checkpoint (press Ctrl-C '
                    'again to abort at once, losing the work since the last checkpoint).', name)
    if self._sync:
      os.kill(os.getpid(), signal.SIGTERM)  # jax's preemption service tells every process

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process gets the same answer)."""
    if self._sync:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.signum is not None



# ------------------------------------------------------------------------------------------------
# The experiment.


def _train_iterator(config: ml_collections.ConfigDict,
                    data: input_pipeline.Data) -> input_pipeline.TrainIterator:
  """This process's training batches; with several processes, a line says which share it reads."""
  index, count = jax.process_index(), jax.process_count()
  train_iter = input_pipeline.create_train_iterator(config, process_index=index,
                                                    process_count=count, data=data)
  if count > 1:
    d, mcmt = config.data, config.method == 'mcmt'
    logging.info('Process %d of %d reads its shard: %d of the %d labeled%s patches of each step.',
                 index, count, d.batch_size // count, d.batch_size,
                 f' (and {d.unlabeled_batch_size // count} of the {d.unlabeled_batch_size} '
                 'unlabeled)' if mcmt else '')
  return train_iter


def _eval_dataset(config: ml_collections.ConfigDict,
                  data: input_pipeline.Data) -> input_pipeline.EvalDataset:
  """The test batches, once every test image is found to hold the SSIM window.

  Every data check is done before the workdir is touched.
  """
  eval_ds = input_pipeline.create_eval_dataset(config, 'test', data)
  input_pipeline.check_eval_sizes(eval_ds, losses.SSIM_WINDOW)
  return eval_ds


def _plan(config: ml_collections.ConfigDict, summary: Mapping[str, Any]) -> tuple[int, int, int]:
  """(steps per epoch, total steps, patches per step) of the run, logged with the dataset."""
  spe = int(summary['steps_per_epoch'])
  total_steps = num_train_steps(config, spe)
  d = config.data
  patches_per_step = d.batch_size + (d.unlabeled_batch_size if config.method == 'mcmt' else 0)
  logging.info('Dataset: %s', summary['description'])
  logging.info('Method %s: %d steps (%d per epoch, %.4g epochs), %d patches of %dx%d per step.',
               config.method, total_steps, spe, total_steps / spe, patches_per_step,
               d.patch_size, d.patch_size)
  return spe, total_steps, patches_per_step


def _init_state(fns: Functions, config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """A fresh state (logged), once the workdir's disk is found to hold two checkpoints of it."""
  t = time.time()
  state = fns.init(jax.random.PRNGKey(config.seed))
  logging.info('Model: CRNet, %s parameters%s; initialised in %.1f s (table: %s).',
               f'{metric_writers.num_scalars(state.params):,}',
               ' (student; the teacher is a copy)' if config.method == 'mcmt' else '',
               time.time() - t, os.path.join(workdir, metric_writers.PARAMETERS_FILE))
  checkpointing.check_free_space(workdir, metric_writers.num_bytes(state))
  return state


def _write_run_files(workdir: str, config: ml_collections.ConfigDict, params: PyTree) -> None:
  """`config.json` (every run) and `parameters.txt` (the parameter table, once per workdir)."""
  metric_writers.write_text(os.path.join(workdir, 'config.json'),
                            config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  table = os.path.join(workdir, metric_writers.PARAMETERS_FILE)
  if not os.path.exists(table):
    metric_writers.write_text(table, metric_writers.parameter_table(params))


def _evaluate(fns: Functions, eval_ds: input_pipeline.EvalDataset, num_images: int,
              steps_per_epoch: int, writer: metric_writers.MetricWriter,
              checkpoints: checkpointing.RunCheckpoints, step: int,
              state: TrainState) -> dict[str, Any]:
  """Evaluates `state` (of `step`), logs it everywhere and offers it as the best checkpoint.

  Returns:
    {'step', **`evaluation.evaluate`'s metrics}.
  """
  t = time.time()
  results, examples = evaluation.evaluate(fns, state.params, state.teacher_params, eval_ds,
                                          num_images)
  parts = [f'{k}={results[k]:.4f}' for k in sorted(results) if k != 'num_images']
  logging.info('Eval at step %d (epoch %.2f, %d test images, %.1f s): %s', step,
               step / steps_per_epoch, results['num_images'], time.time() - t, ', '.join(parts))
  values = {k: v for k, v in results.items() if k != 'num_images'}
  writer.scalars(step, 'test', values, epoch=step / steps_per_epoch,
                 num_images=results['num_images'])
  writer.images(step, examples)
  writer.samples(step, examples)
  writer.flush()
  checkpoints.save_best(step, state, results['student_psnr'])
  return {'step': step, **results}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir/checkpoints` if there is a checkpoint) and evaluates.

  Killed at any moment, a rerun with the same config and workdir ends as a run never interrupted:
  it resumes from the newest complete checkpoint, drops the logs written after it and redoes those
  steps.

  Args:
    config: the run config (`configs/default.py` documents every field).
    workdir: where checkpoints, TensorBoard logs, metrics.jsonl and config.json go.

  Returns:
    The final evaluation metrics (`evaluation.evaluate`'s dict, plus 'step'), or {'step': ...}
    when the dataset has no test split.

  Raises:
    ConfigError: a bad config value, or a checkpoint in `workdir` that does not match the config.
    OSError: the workdir is not writable or too full for two checkpoints, a save failed
      (`CheckpointSaveError`), another run holds it (`checkpointing.WorkdirBusyError`), or none
      of its checkpoints is intact (`checkpointing.DamagedCheckpointError`).
    DataError: bad input data (the file is named).
    NonFiniteLossError: the loss became NaN or infinite (the step and its terms are named).
    TrainingStopped: SIGTERM or SIGINT arrived; the checkpoint of the step it stopped at is saved.
  """
  model = validate_config(config)
  logs.quiet_libraries()  # main.py has done it already; for Python callers
  workdir = os.path.abspath(workdir)
  checkpointing.check_writable(workdir)  # before building any data: fail in seconds
  is_main = jax.process_index() == 0
  # Every process validates the data (same errors everywhere) and builds the datasets, once; with
  # a shared data_dir the first build wins and the others reuse it (datasets.base.prepare).
  data = input_pipeline.load_data(config)
  summary = input_pipeline.dataset_summary(config, data)
  spe, total_steps, patches_per_step = _plan(config, summary)
  with contextlib.ExitStack() as stack:  # closes, in reverse order, what is opened below
    train_iter = _train_iterator(config, data)
    stack.callback(train_iter.close)
    eval_ds = _eval_dataset(config, data) if summary['test'] else None
    fns = compiled_functions(model, StepConfig.from_config(config, spe), create_mesh())
    t0 = time.time()
    state = _init_state(fns, config, workdir)
    # One writer: a second run stops here, having changed nothing in the workdir (a run refused
    # for bad data or config above leaves even the lock file as it was).
    stack.enter_context(checkpointing.lock_workdir(workdir))
    checkpoints = stack.enter_context(checkpointing.RunCheckpoints(workdir, config.max_to_keep))
    state = checkpoints.resume(state, train_iter, config)
    start_step = int(jax.device_get(state.step))
    # Logs from after the checkpoint (a run killed later) are dropped: those steps run again.
    writer = stack.enter_context(metric_writers.MetricWriter(workdir, is_main, start_step))
    if is_main:  # after a successful restore: a mismatching config leaves the old one in place
      _write_run_files(workdir, config, state.params)
    if start_step >= total_steps:
      logging.info('Already trained for %d steps (asked for %d): evaluating only.', start_step,
                   total_steps)
    if eval_ds is None:
      logging.warning('The dataset has no test split: no evaluation.')
    eval_every = int(round(float(config.eval_every_epochs) * spe))
    run_eval = functools.partial(_evaluate, fns, eval_ds, int(config.get('num_eval_images', 3))
                                 if is_main else 0, spe, writer, checkpoints)
    progress = Progress(start_step, total_steps, time.time(), lambda step: evaluation_steps(
        step, total_steps, eval_every, total_steps) if eval_ds is not None else 0)
    finite, means = _FiniteLoss(checkpoints.describe_last), _MeanMetrics()
    final_metrics: dict[str, Any] = {'step': start_step}
    stop = stack.enter_context(StopSignals())  # SIGTERM / Ctrl-C: finish the step, save, stop

    for step in range(start_step + 1, total_steps + 1):
      state, step_metrics = fns.train_step(state, global_batch(next(train_iter),
                                                               fns.data_sharding))
      finite.add(step, step_metrics)
      means.add(step_metrics)
      if step == start_step + 1:
        finite.now()
        logging.info('Init, data start and first step (compilation included): %.1f s.',
                     time.time() - t0)
      if step % config.log_every_steps == 0 or step == total_steps:
        finite.now()
        values = means.compute()
        rate, left = progress.log(step, time.time())
        logging.info('Step %d/%d (epoch %.2f): loss %.5f | %.2f steps/s, %.1f patches/s, '
                     'ETA %s', step, total_steps, step / spe, values['loss'], rate,
                     rate * patches_per_step, _format_duration(left))
        writer.scalars(step, 'train', {**values, 'steps_per_second': rate}, epoch=step / spe)
        checkpoints.check_for_errors(step)  # report failed asynchronous saves early
      # Evaluate before checkpointing: a checkpoint of step s implies its evaluation is logged.
      if eval_ds is not None and (step == total_steps or (eval_every and step % eval_every == 0)):
        finite.now()
        t = time.time()
        final_metrics = run_eval(step, state)
        progress.busy(time.time() - t, evaluation=True)
      # A stop (SIGTERM, Ctrl-C) saves the step it stops at, as the schedule saves others.
      stopping = stop.should_stop(step) and step < total_steps  # once per step (multi-process)
      if stopping or step % config.checkpoint_every_steps == 0 or step == total_steps:
        finite.now()  # never save a non-finite state
        t = time.time()
        checkpoints.save_latest(step, state, train_iter.get_state())
        progress.busy(time.time() - t)
      if stopping:
        checkpoints.wait_until_finished(step)
        raise TrainingStopped(stop.signum or signal.SIGTERM, step, checkpoints.latest.directory)

    finite.now()
    if eval_ds is not None and start_step >= total_steps:
      writer.drop(start_step, 'test')  # evaluated again below: no duplicate line
      final_metrics = run_eval(start_step, state)
    checkpoints.wait_until_finished(total_steps)
    if is_main:
      for line in metric_writers.run_summary(workdir, total_steps, checkpoints.folders()):
        logging.info('%s', line)
    return final_metrics
