"""Training and evaluation of CRNet (supervised) and MCMT (semi-supervised mean teacher).

`train_and_evaluate(config, workdir)` runs a whole experiment:

- Data: `input_pipeline.create_train_iterator` (process-local numpy batches, turned into global
  arrays sharded on the mesh axis 'data') and `input_pipeline.create_eval_dataset(config, 'test')`.
- State: `TrainState` (step, params, teacher_params, opt_state, rng), replicated on a 1-D mesh
  of all devices; the batch is sharded over the devices. The steps are `jax.jit`ted with the
  state donated. No pmap: the same code runs on one device, many devices and many hosts.
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
- Evaluation every `eval_every_epochs` epochs and at the end: PSNR and SSIM on whole test images
  (outputs clipped to [0, 1], padding excluded), of the student and, for MCMT, of the teacher;
  the input's own PSNR/SSIM (identity) is reported for reference.
- Checkpoints (`checkpointing.py`): the latest ones in `workdir/checkpoints` (state + data
  iterator state), the best by the student's test PSNR in `workdir/best`. The paper's numbers are
  the student's, so the best checkpoint is chosen by the student for both methods (the teacher's
  parameters are saved with it). A rerun with the same workdir resumes by itself.
- Logs: TensorBoard (`workdir/tensorboard`: scalars and low | enhanced | high images),
  `workdir/metrics.jsonl` (one JSON object per log/eval event), `workdir/config.json`,
  `workdir/parameters.txt` (the parameter table), `workdir/samples/step_<N>.png` (low | student |
  teacher | high of the first `num_eval_images` test images at each evaluation); written by
  process 0 only. The run ends with a summary (`run_summary`). The ETA counts the train steps and
  the evaluations apart (`Progress`). Every process saves its shards of the checkpoints (orbax).
- Robustness (README.md, "Many hosts, kills, bad inputs"): the config is validated
  (`ConfigError`) and the workdir checked for writing and free space before any data is built;
  a failed save raises `CheckpointSaveError` (an OSError naming the folder); a run killed
  anywhere resumes from the newest complete checkpoint, and the log lines after it are dropped,
  so the result equals an uninterrupted run's.
- A non-finite loss (or gradient norm) stops the run with `NonFiniteLossError`, naming the step
  and the loss terms; a state that produced it is never saved.
- One writer per workdir (`checkpointing.lock_workdir`); SIGTERM or SIGINT (Ctrl-C) stops after
  the current step with its checkpoint (`StopSignals`, `TrainingStopped`); a damaged latest
  checkpoint is named and skipped for the newest intact one (`_resume`). docs/reliability.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview
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
from crnet_jax import image_io
from crnet_jax import input_pipeline
from crnet_jax import logs
from crnet_jax import losses
from crnet_jax import models
from crnet_jax.progress import Progress
from crnet_jax.progress import format_duration as _format_duration

Array = jax.Array
PyTree = Any
METHODS = ('supervised', 'mcmt')
DATA_AXIS = 'data'


class ConfigError(ValueError):
  """A config value that cannot work (the key and the value are named), found before running."""


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, workdir gone...): the message names the folder."""


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


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first bad key of `config` (checked before anything runs)."""
  num_devices = jax.device_count() if num_devices is None else num_devices

  def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  def is_num(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

  def need(ok: bool, msg: str):
    if not ok:
      raise ConfigError(msg)

  need(config.method in METHODS, f"method must be 'supervised' or 'mcmt', got {config.method!r}")
  d = config.data
  keys = ['batch_size'] + (['unlabeled_batch_size'] if config.method == 'mcmt' else [])
  for key in keys:
    v = d[key]
    need(is_int(v) and v > 0 and v % num_devices == 0,
         f'data.{key} must be a positive multiple of the number of devices ({num_devices}), '
         f'got {v!r}')
  need(d.dataset in input_pipeline.DATASETS,
       f'data.dataset must be one of {input_pipeline.DATASETS}, got {d.dataset!r}')
  dirs = d.get('unlabeled_dirs', ())
  need(isinstance(dirs, str) or (isinstance(dirs, (tuple, list)) and
                                 all(isinstance(x, str) for x in dirs)),
       f'data.unlabeled_dirs must be a folder or a tuple of folders, got {dirs!r}')
  need(is_num(d.label_fraction) and 0.0 < d.label_fraction <= 1.0,
       f'data.label_fraction must be in (0, 1], got {d.label_fraction!r}')
  e = d.get('epoch_images', 'labeled')
  need(e in input_pipeline.EPOCH_IMAGES,
       f'data.epoch_images must be one of {input_pipeline.EPOCH_IMAGES}, got {e!r}')
  for key in ('patch_size', 'patches_per_image', 'eval_batch_size'):
    need(is_int(d[key]) and d[key] > 0, f'data.{key} must be a positive integer, got {d[key]!r}')
  w = d.get('num_workers', 0)
  need(is_int(w) and w >= 0,
       f'data.num_workers must be a non-negative integer (0 = load in the main process), got {w!r}')
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
    models.create_model(config.model)  # checks every model field
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


def eval_step(model: models.CRNet, params: PyTree, teacher_params: PyTree | None,
              batch: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
  """Per-image metrics and outputs of one evaluation batch.

  Returns:
    ({'input_psnr', 'input_ssim', 'student_psnr', 'student_ssim'[, 'teacher_psnr',
    'teacher_ssim']}: (n,) PSNR/SSIM on the real pixels (`batch['mask']`), and
    {'student'[, 'teacher']}: the outputs clipped to [0, 1]). The input's metrics are those of
    the identity (the low-light image itself).
  """
  high, mask = batch['high'], batch['mask']
  low = jnp.clip(batch['low'], 0.0, 1.0)
  metrics = {'input_psnr': losses.psnr(low, high, mask=mask),
             'input_ssim': losses.ssim(low, high, mask=mask)}
  outputs = {}
  for name, p in (('student', params), ('teacher', teacher_params)):
    if p is None:
      continue
    outputs[name] = models.enhance(model, p, batch['low'], mask)
    metrics[f'{name}_psnr'] = losses.psnr(outputs[name], high, mask=mask)
    metrics[f'{name}_ssim'] = losses.ssim(outputs[name], high, mask=mask)
  return metrics, outputs


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
                   eval_step=_compiled_eval_step(model, mesh))


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


@functools.lru_cache(maxsize=16)
def _compiled_eval_step(model: models.CRNet, mesh: jax.sharding.Mesh) -> Callable[..., Any]:
  rep = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P(DATA_AXIS))
  return jax.jit(functools.partial(eval_step, model), in_shardings=(rep, rep, data),
                 out_shardings=rep)


# ------------------------------------------------------------------------------------------------
# Host-side functions.


def global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, Array]:
  """Process-local numpy arrays -> global arrays sharded on the batch axis (any host count)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def _replicated_global(x: np.ndarray, sharding: NamedSharding) -> Array:
  """A global array from data every process holds whole (evaluation batches)."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(x) % multiple
  if not extra:
    return x
  return np.concatenate([x, np.zeros((extra,) + x.shape[1:], x.dtype)])


def evaluate(fns: Functions, params: PyTree, teacher_params: PyTree | None,
             eval_ds: Iterable[Mapping[str, np.ndarray]], num_images: int = 0
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """Mean PSNR/SSIM over the real images of `eval_ds`, and up to `num_images` example images.

  Every metric is computed per image on its real pixels (`mask`), then summed with the `valid`
  flags and divided by the number of valid images, so padded batches change nothing.

  Returns:
    ({'student_psnr', 'student_ssim', ['teacher_psnr', 'teacher_ssim'], 'input_psnr',
    'input_ssim', 'num_images'}, [{'name', 'low', 'student', ['teacher'], 'high'}, ...]) with the
    images cropped to their real size.
  """
  num_devices = fns.mesh.size
  sums: dict[str, float] = collections.defaultdict(float)
  count = 0
  examples: list[dict[str, np.ndarray]] = []
  for batch in eval_ds:
    valid = np.asarray(batch['valid'], bool)
    n = len(valid)
    arrays = {k: _replicated_global(_pad_to_multiple(np.asarray(batch[k], np.float32),
                                                     num_devices), fns.data_sharding)
              for k in ('low', 'high', 'mask')}
    per_image, outputs = fns.eval_step(params, teacher_params, arrays)
    for key, values in jax.device_get(per_image).items():
      values = np.asarray(values, np.float64)[:n]
      sums[key] += float(np.sum(np.where(valid, values, 0.0)))
    count += int(valid.sum())
    if len(examples) < num_images and valid.any():
      outputs = jax.device_get(outputs)
      for j in np.flatnonzero(valid)[:num_images - len(examples)]:
        h, w = int(batch['height'][j]), int(batch['width'][j])
        example = {'name': str(batch['name'][j]), 'low': np.asarray(batch['low'][j, :h, :w]),
                   'high': np.asarray(batch['high'][j, :h, :w])}
        for key, out in outputs.items():
          example[key] = np.asarray(out[j, :h, :w])
        examples.append(example)
  if count == 0:
    raise ValueError('the evaluation set has no valid image')
  results = {k: v / count for k, v in sums.items()}
  results['num_images'] = count
  return results, examples


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


def _write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename (never half written)."""
  tmp = f'{path}.tmp.{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


PARAMETERS_FILE = 'parameters.txt'
SAMPLES_DIR = 'samples'  # samples/step_<N>.png at each evaluation


def _count(tree: PyTree) -> int:
  """The number of scalars in the arrays of `tree`."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def parameter_table(params: PyTree) -> str:
  """One row per parameter array (name, shape, dtype, size, mean, std), then the integer totals."""
  table = parameter_overview.get_parameter_overview(jax.device_get(params))
  rows = [line for line in table.splitlines() if not line.startswith('Total:')]
  return '\n'.join(rows) + (f'\nTotal: {_count(params):,} parameters, {_nbytes(params):,} '
                            'bytes\n')


def _nbytes(tree: PyTree) -> int:
  """Bytes of the (global) arrays of `tree`: the size of one checkpoint of it."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def evaluation_steps(first: int, last: int, eval_every: int, total_steps: int) -> int:
  """How many of the steps `first..last` evaluate: every `eval_every`-th (0: none) and the last."""
  if last < first:
    return 0
  n = (last // eval_every - (first - 1) // eval_every) if eval_every > 0 else 0
  if first <= total_steps <= last and not (eval_every > 0 and total_steps % eval_every == 0):
    n += 1
  return n


def _import_tensorboardx():
  """`import tensorboardX`, without letting it import torch (2+ s per run when installed).

  tensorboardX imports torch, if it can, only to accept torch tensors; we log numpy values.
  """
  if 'torch' in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get('torch', 0) is None:
      del sys.modules['torch']
  return tensorboardX


class _Writer:
  """TensorBoard (tensorboardX) and `metrics.jsonl`, on process 0 only.

  Lines of `metrics.jsonl` with a step after `resume_step` (the step the run starts from: its
  checkpoint's, or 0), or cut short (a kill during a write), are dropped first (the file is
  rewritten atomically), and TensorBoard hides its events after it (`purge_step`): steps that
  run again after a kill are logged once.
  """

  def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self._tb = None
    self._workdir = workdir
    self._jsonl = os.path.join(workdir, 'metrics.jsonl')
    if enabled:
      self.drop(resume_step + 1)
      tensorboardx = _import_tensorboardx()
      self._tb = tensorboardx.SummaryWriter(os.path.join(workdir, 'tensorboard'),
                                            purge_step=resume_step + 1)

  def drop(self, from_step: int, split: str | None = None) -> None:
    """Removes the records with step >= `from_step` (of `split`, or all) and broken lines."""
    if not self.enabled or not os.path.exists(self._jsonl):
      return
    with open(self._jsonl) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
        step = int(record['step'])
      except (ValueError, KeyError, TypeError):
        continue  # a line cut short by a kill
      if not line.endswith('\n'):
        continue
      if step >= from_step and (split is None or record.get('split') == split):
        continue
      kept.append(line)
    if len(kept) != len(lines):
      logging.info('metrics.jsonl: dropped %d line(s) from step %d on (they are logged again).',
                   len(lines) - len(kept), from_step)
      _write_atomically(self._jsonl, ''.join(kept))

  def scalars(self, step: int, prefix: str, values: Mapping[str, float], **extra) -> None:
    if not self.enabled:
      return
    for key, value in values.items():
      self._tb.add_scalar(f'{prefix}/{key}', float(value), step)
    record = {'step': int(step), 'split': prefix, **extra,
              **{k: float(v) for k, v in values.items()}}
    with open(self._jsonl, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def images(self, step: int, examples: list[dict[str, np.ndarray]]) -> None:
    """One image per example and model: low | enhanced | high side by side."""
    if not self.enabled:
      return
    for i, ex in enumerate(examples):
      for model_name in ('student', 'teacher'):
        if model_name in ex:
          triplet = np.concatenate([ex['low'], ex[model_name], ex['high']], axis=1)
          self._tb.add_image(f'test_{model_name}/{i}_{ex["name"]}',
                             np.clip(triplet, 0.0, 1.0), step, dataformats='HWC')

  def samples(self, step: int, examples: list[dict[str, np.ndarray]]) -> str | None:
    """`samples/step_<step>.png`: a row per example, low | student | teacher | high."""
    if not self.enabled or not examples:
      return None
    from crnet_jax import inference  # pylint: disable=g-import-not-at-top
    path = os.path.join(self._workdir, SAMPLES_DIR, f'step_{step}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_io.save_image(path, inference.sample_grid(examples))  # atomic
    return path

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _metric_collection(names: Iterable[str]) -> type[clu_metrics.Collection]:
  return clu_metrics.Collection.create(
      **{name: clu_metrics.Average.from_output(name) for name in names})


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
    checkpointing.wake_paused()
    if self._sync:
      os.kill(os.getpid(), signal.SIGTERM)  # jax's preemption service tells every process

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (every process gets the same answer)."""
    if self._sync:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.signum is not None


def _saved_config_changes(workdir: str, config: ml_collections.ConfigDict) -> list[str] | None:
  """The model/method fields where `workdir/config.json` differs from `config` (None: no file)."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return None
  current = json.loads(config.to_json_best_effort())
  changes = []
  if saved.get('method') != current.get('method'):
    changes.append(f'method ({saved.get("method")!r} saved, {current.get("method")!r} now)')
  saved_model, model = saved.get('model') or {}, current.get('model') or {}
  for key in sorted(set(saved_model) | set(model)):
    if saved_model.get(key) != model.get(key):
      changes.append(f'model.{key} ({saved_model.get(key)!r} saved, {model.get(key)!r} now)')
  return changes


def _resume(latest: Any, abstract_state: Any, workdir: str,
            config: ml_collections.ConfigDict) -> tuple[Any, Any, int]:
  """Restores `(state, data_state, step)` from the newest intact checkpoint of `latest`.

  A damaged checkpoint (`checkpointing.find_damage`, or a restore that fails while the saved
  `config.json` agrees with `config` on the method and the model) is named in a warning and
  skipped; once an older one restores, the damaged ones newer than it are renamed
  `<step>.damaged` (process 0; nothing is deleted) so that their steps can be saved again.
  A restore failure is blamed on the config only when `config.json` differs in those fields.

  Raises:
    ConfigError: the checkpoint does not match the config (the differing fields are named).
    checkpointing.DamagedCheckpointError: no checkpoint is intact (each is named).
  """
  damaged: list[tuple[int, str]] = []
  for step in sorted(latest.all_steps(), reverse=True):
    step_dir = latest.directory / str(step)
    damage = checkpointing.find_damage(step_dir, ('state', 'data'))
    if damage is None:
      try:
        restored = checkpointing.restore_latest(latest, abstract_state, step)
        break
      except Exception as e:  # pylint: disable=broad-except
        changes = _saved_config_changes(workdir, config)
        if changes or changes is None:
          differs = (f'its config.json differs in {", ".join(changes)}' if changes else
                     'a different method or model? Or a damaged checkpoint')
          raise ConfigError(
              f'{step_dir}: cannot resume from this checkpoint: it does not match this config '
              f'({differs}). Use a new --workdir, or the config the run was started with '
              f'({os.path.join(workdir, "config.json")}). Cause: {e}') from e
        damage = checkpointing.describe_restore_error(e, step_dir)
    logging.warning('Damaged checkpoint %s, skipped: %s', step_dir, damage)
    damaged.append((step, damage))
  else:
    raise checkpointing.DamagedCheckpointError(
        f'{latest.directory}: no intact checkpoint to resume from; damaged: ' +
        '; '.join(f'step {s}: {d}' for s, d in damaged) + '. Nothing was changed: move the '
        'damaged checkpoints away to start this run again from an earlier one (or from scratch).')
  state, data_state, step = restored
  if damaged:
    set_aside = []
    if jax.process_index() == 0:
      set_aside = [checkpointing.set_aside_damaged(latest.directory, s) for s, _ in damaged]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('crnet: damaged checkpoints set aside')
    latest.reload()
    logging.warning('Resuming from the newest intact checkpoint, step %d; the damaged newer '
                    'one(s) %s are kept as %s (delete them when you no longer need them).',
                    step, ', '.join(str(s) for s, _ in damaged),
                    ', '.join(set_aside) or f'<step>{checkpointing.DAMAGED_SUFFIX}')
  return state, data_state, step


def _scores(record: Mapping[str, Any]) -> str:
  """'student PSNR 21.52 dB, SSIM 0.6580; teacher ...' of an evaluation record."""
  return '; '.join(f'{who} PSNR {record[f"{who}_psnr"]:.2f} dB, SSIM {record[f"{who}_ssim"]:.4f}'
                   for who in ('student', 'teacher') if f'{who}_psnr' in record)


def run_summary(workdir: str, total_steps: int, latest_step: int | None,
                best_step: int | None) -> list[str]:
  """The lines that end a run: last and best scores, checkpoints, samples, the next command.

  The scores are the 'test' records of `workdir/metrics.jsonl` (every evaluation of the run,
  resumed parts included); the best is the student's highest PSNR, as for `workdir/best`.
  """
  evals = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get('split') == 'test' and 'student_psnr' in record:
          evals.append(record)
  except OSError:
    pass
  lines = [f'Done: {total_steps} steps in {workdir}.']
  if evals:
    last = max(evals, key=lambda r: r['step'])
    top = max(evals, key=lambda r: (r['student_psnr'], -r['step']))
    lines.append(f'Last evaluation (step {last["step"]}): {_scores(last)}.')
    lines.append(f'Best evaluation (step {top["step"]}, by the student\'s PSNR): {_scores(top)}.')
  checkpoints = [f'{what} {os.path.join(workdir, folder, str(step))}' for what, folder, step in
                 (('best', checkpointing.BEST_DIR, best_step),
                  ('latest', checkpointing.LATEST_DIR, latest_step)) if step is not None]
  if checkpoints:
    lines.append(f'Checkpoints: {", ".join(checkpoints)}.')
  samples = os.path.join(workdir, SAMPLES_DIR)
  if evals and os.path.isdir(samples):
    columns = 'low | student | teacher | high' if 'teacher_psnr' in evals[-1] else (
        'low | student | high')
    lines.append(f'Samples ({columns}): {samples}/step_<N>.png; curves: '
                 f'tensorboard --logdir={os.path.join(workdir, "tensorboard")} '
                 '(pip install tensorboard).')
  lines.append(f'Enhance with it: python main.py --mode=enhance --workdir={workdir} '
               '--input=photos/ --output=enhanced/' +
               (' (--params=teacher for the teacher)' if evals and 'teacher_psnr' in evals[-1]
                else ''))
  return lines


# ------------------------------------------------------------------------------------------------
# The experiment.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir/checkpoints` if there is a checkpoint) and evaluates.

  Killed at any moment (SIGKILL, preemption), a rerun with the same config and workdir ends with
  the same parameters, checkpoints and metrics as a run that was never interrupted: it resumes
  from the newest complete checkpoint (a save cut short is ignored), drops the lines of
  `metrics.jsonl` written after it (TensorBoard purges them too) and redoes those steps. At a step
  that both evaluates and checkpoints, the evaluation comes first, so a checkpoint implies the
  evaluation of its step is logged.

  Args:
    config: the run config (`configs/default.py` documents every field).
    workdir: where checkpoints, TensorBoard logs, metrics.jsonl and config.json go.

  Returns:
    The final evaluation metrics (`evaluate`'s dict, plus 'step'), or {'step': ...} when the
    dataset has no test split.

  Raises:
    ConfigError: a bad config value (named in the message), or a checkpoint in `workdir` that
      does not match the config.
    OSError: the workdir is not writable, its disk too full for two checkpoints, or a checkpoint
      save failed (the message names the folder and the last complete checkpoint).
    DataError: bad input data (the file is named).
    NonFiniteLossError: the loss became NaN or infinite (the step and its terms are named).
    checkpointing.WorkdirBusyError: another run holds the workdir (an OSError; who is named).
    checkpointing.DamagedCheckpointError: no checkpoint of the workdir is intact (an OSError).
    TrainingStopped: SIGTERM or SIGINT arrived; the checkpoint of the step it stopped at is saved.
  """
  validate_config(config)
  logs.quiet_libraries()  # main.py has done it already; for Python callers
  workdir = os.path.abspath(workdir)
  checkpointing.check_writable(workdir)  # before building any data: fail in seconds
  is_main = jax.process_index() == 0

  # Every process validates the data (same errors everywhere) and builds the datasets; with a
  # shared data_dir the first build wins and the others reuse it (datasets.base.prepare).
  summary = input_pipeline.dataset_summary(config)
  logging.info('Dataset: %s', summary['description'])
  spe = int(input_pipeline.steps_per_epoch(config))
  total_steps = num_train_steps(config, spe)
  mcmt = config.method == 'mcmt'
  patches_per_step = config.data.batch_size + (config.data.unlabeled_batch_size if mcmt else 0)
  logging.info('Method %s: %d steps (%d per epoch, %.4g epochs), %d patches of %dx%d per step.',
               config.method, total_steps, spe, total_steps / spe, patches_per_step,
               config.data.patch_size, config.data.patch_size)
  train_iter = input_pipeline.create_train_iterator(
      config, process_index=jax.process_index(), process_count=jax.process_count())
  if jax.process_count() > 1:
    logging.info('Process %d of %d reads its shard: %d of the %d labeled%s patches of each step.',
                 jax.process_index(), jax.process_count(),
                 config.data.batch_size // jax.process_count(), config.data.batch_size,
                 f' (and {config.data.unlabeled_batch_size // jax.process_count()} of the '
                 f'{config.data.unlabeled_batch_size} unlabeled)' if mcmt else '')
  try:  # every data check is done before the workdir is touched; any failure closes the iterator
    eval_ds = input_pipeline.create_eval_dataset(config, 'test') if summary['test'] else None
    if eval_ds is not None:
      input_pipeline.check_eval_sizes(eval_ds, losses.SSIM_WINDOW)
    mesh = create_mesh()
    model = models.create_model(config.model)
    hp = StepConfig.from_config(config, spe)
    fns = compiled_functions(model, hp, mesh)
    t0 = time.time()
    state = fns.init(jax.random.PRNGKey(config.seed))
    logging.info('Model: CRNet, %s parameters%s; initialised in %.1f s (table: %s).',
                 f'{_count(state.params):,}', ' (student; the teacher is a copy)' if mcmt else '',
                 time.time() - t0, os.path.join(workdir, PARAMETERS_FILE))
    checkpointing.check_free_space(workdir, _nbytes(state))
    # One writer: a second run stops here, having changed nothing in the workdir (a run refused
    # for bad data or config above leaves even the lock file as it was).
    workdir_lock = contextlib.ExitStack()
    workdir_lock.enter_context(checkpointing.lock_workdir(workdir))
  except BaseException:
    train_iter.close()
    raise

  latest = checkpointing.latest_manager(workdir, config.max_to_keep)
  best = checkpointing.best_manager(workdir)
  writer = None
  stop = StopSignals()
  try:
    if latest.latest_step() is not None:
      state, data_state, restored_step = _resume(latest, checkpointing.abstract_like(state),
                                                 workdir, config)
      train_iter.set_state(data_state)
      logging.info('Resumed from the checkpoint of step %d in %s.', restored_step,
                   latest.directory)
    start_step = int(jax.device_get(state.step))
    # Logs from after the checkpoint (a run killed later) are dropped: those steps run again.
    writer = _Writer(workdir, is_main, resume_step=start_step)
    if is_main:  # after a successful restore: a mismatching config leaves the old one in place
      _write_atomically(os.path.join(workdir, 'config.json'),
                        config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
      if not os.path.exists(os.path.join(workdir, PARAMETERS_FILE)):  # once per run
        _write_atomically(os.path.join(workdir, PARAMETERS_FILE), parameter_table(state.params))
    if start_step >= total_steps:
      logging.info('Already trained for %d steps (asked for %d): evaluating only.', start_step,
                   total_steps)

    if eval_ds is None:
      logging.warning('The dataset has no test split: no evaluation.')
    eval_every = int(round(float(config.eval_every_epochs) * spe))
    num_images = int(config.get('num_eval_images', 3))
    collection_cls, collection = None, None
    pending = None  # (step, metrics) of the last step, checked one step later (no stall)
    final_metrics: dict[str, Any] = {'step': start_step}
    has_eval = eval_ds is not None
    progress = Progress(start_step, total_steps, time.time(), lambda step: evaluation_steps(
        step, total_steps, eval_every, total_steps) if has_eval else 0)

    def last_checkpoint() -> str:
      try:
        latest.wait_until_finished()
      except Exception:  # pylint: disable=broad-except
        pass
      s = latest.latest_step()
      return (f'the last checkpoint (step {s}) in {latest.directory} is intact' if s is not None
              else f'there is no checkpoint in {latest.directory}')

    def saving(step: int, what: str, directory: Any, fn: Callable[[], Any]) -> Any:
      """Runs a save (or waits for the asynchronous ones); a failure -> CheckpointSaveError.

      orbax reports a failed write (e.g. tensorstore's `ValueError: RESOURCE_EXHAUSTED ... No
      space left on device`) at the next save or wait, hence "detected at step".
      """
      try:
        return fn()
      except Exception as e:  # pylint: disable=broad-except
        text = f'{type(e).__name__}: {e}'
        code = e.errno if isinstance(e, OSError) and e.errno else (
            errno.ENOSPC if ('No space left' in text or 'os_error_code=\'28\'' in text) else
            errno.EIO)
        raise CheckpointSaveError(
            code, f'Saving a {what} checkpoint in {directory} failed (detected at step {step}): '
            f'{text}. The disk may be full or the workdir no longer writable; '
            f'{last_checkpoint()}: a rerun with the same workdir continues from there.') from e

    def run_eval(step: int) -> dict[str, Any]:
      t = time.time()
      results, examples = evaluate(fns, state.params, state.teacher_params, eval_ds,
                                   num_images if is_main else 0)
      checkpointing.pause_for_tests('eval', step)
      parts = [f'{k}={results[k]:.4f}' for k in sorted(results) if k != 'num_images']
      logging.info('Eval at step %d (epoch %.2f, %d test images, %.1f s): %s', step, step / spe,
                   results['num_images'], time.time() - t, ', '.join(parts))
      values = {k: v for k, v in results.items() if k != 'num_images'}
      writer.scalars(step, 'test', values, epoch=step / spe, num_images=results['num_images'])
      writer.images(step, examples)
      writer.samples(step, examples)
      writer.flush()
      if step not in best.all_steps():
        saving(step, 'best', best.directory,
               lambda: checkpointing.save_best(best, step, state, results['student_psnr']))
      return {'step': step, **results}

    stop.__enter__()  # SIGTERM / Ctrl-C from here on: finish the step, save, stop
    for step in range(start_step + 1, total_steps + 1):
      batch = global_batch(next(train_iter), fns.data_sharding)
      state, step_metrics = fns.train_step(state, batch)
      checkpointing.pause_for_tests('step', step)
      if pending is not None:
        _check_finite(*pending, last_checkpoint)
      pending = (step, step_metrics)
      if collection_cls is None:
        collection_cls = _metric_collection(step_metrics)
      update = collection_cls.single_from_model_output(**step_metrics)
      collection = update if collection is None else collection.merge(update)
      if step == start_step + 1:
        _check_finite(step, step_metrics, last_checkpoint)
        logging.info('Init, data start and first step (compilation included): %.1f s.',
                     time.time() - t0)
      if step % config.log_every_steps == 0 or step == total_steps:
        _check_finite(step, step_metrics, last_checkpoint)
        values = jax.device_get(collection.compute())
        collection = None
        rate, left = progress.log(step, time.time())
        logging.info('Step %d/%d (epoch %.2f): loss %.5f | %.2f steps/s, %.1f patches/s, '
                     'ETA %s', step, total_steps, step / spe, values['loss'], rate,
                     rate * patches_per_step, _format_duration(left))
        writer.scalars(step, 'train', {**values, 'steps_per_second': rate}, epoch=step / spe)
        for manager, what in ((latest, 'latest'), (best, 'best')):  # report failed saves early
          saving(step, what, manager.directory, manager.check_for_errors)
      # Evaluate before checkpointing: a checkpoint of step s implies its evaluation is logged.
      if eval_ds is not None and (step == total_steps or (eval_every and step % eval_every == 0)):
        _check_finite(step, step_metrics, last_checkpoint)
        t = time.time()
        final_metrics = run_eval(step)
        progress.busy(time.time() - t, evaluation=True)
      # A stop (SIGTERM, Ctrl-C) saves the step it stops at, as the schedule saves others.
      stopping = stop.should_stop(step) and step < total_steps  # once per step (multi-process)
      if stopping or step % config.checkpoint_every_steps == 0 or step == total_steps:
        _check_finite(step, step_metrics, last_checkpoint)  # never save a non-finite state
        t = time.time()
        saving(step, 'latest', latest.directory,
               lambda: checkpointing.save_latest(latest, step, state, train_iter.get_state()))
        progress.busy(time.time() - t)
      if stopping:
        saving(step, 'latest', latest.directory, latest.wait_until_finished)
        saving(step, 'best', best.directory, best.wait_until_finished)
        raise TrainingStopped(stop.signum or signal.SIGTERM, step, latest.directory)
    if pending is not None:
      _check_finite(*pending, last_checkpoint)
    if eval_ds is not None and start_step >= total_steps:
      writer.drop(start_step, 'test')  # evaluated again below: no duplicate line
      final_metrics = run_eval(start_step)
    saving(total_steps, 'latest', latest.directory, latest.wait_until_finished)
    saving(total_steps, 'best', best.directory, best.wait_until_finished)
    if is_main:
      for line in run_summary(workdir, total_steps, latest.latest_step(), best.best_step()):
        logging.info('%s', line)
    return final_metrics
  finally:
    stop.__exit__()
    for manager in (latest, best):
      try:
        manager.wait_until_finished()
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.error('Closing the checkpoint manager of %s: %s', manager.directory, e)
    if writer is not None:
      writer.close()
    train_iter.close()
    workdir_lock.close()
