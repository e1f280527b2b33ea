"""Checkpoints of a training run (orbax `CheckpointManager`), laid out in the workdir as:

- `workdir/checkpoints/<step>/`: the latest `config.max_to_keep` checkpoints, each with two items:
  `state` (the whole `train.TrainState`: step, params, teacher_params, opt_state, rng) and `data`
  (the training iterator's state, JSON). A rerun with the same workdir resumes from the newest.
- `workdir/best/<step>/`: one checkpoint, the one with the best evaluation PSNR of the student
  (item `state` only; its metrics are kept by orbax next to it).

Restoring always goes onto an abstract target (shapes, dtypes and shardings of a freshly built
state): without one, orbax turns optax's state into plain lists. `restore_variables` reads only the
parameters, for inference and export, without building an optimizer.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
BEST_METRIC = 'psnr'


def latest_manager(workdir: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the latest checkpoints in `workdir/checkpoints` (items `state`, `data`)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), LATEST_DIR),
                               options=options, item_names=('state', 'data'))


def best_manager(workdir: str, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the best checkpoint (highest `metrics["psnr"]`) in `workdir/best`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda metrics: float(metrics[BEST_METRIC]), best_mode='max',
      keep_checkpoints_without_metrics=False, create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), BEST_DIR),
                               options=options, item_names=('state',))


def abstract_like(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) of every array in `tree`: a restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _encode_data_state(data_state: Any) -> Any:
  """A JSON-able form of an iterator state (a dict as is; bytes as base64)."""
  if isinstance(data_state, (bytes, bytearray)):
    return {'__bytes_base64__': base64.b64encode(bytes(data_state)).decode('ascii')}
  return data_state


def _decode_data_state(data_state: Any) -> Any:
  if isinstance(data_state, Mapping) and set(data_state) == {'__bytes_base64__'}:
    return base64.b64decode(data_state['__bytes_base64__'])
  return data_state


def save_latest(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
                force: bool = True) -> bool:
  """Saves (asynchronously) the train state and the data iterator state at `step`."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(_encode_data_state(data_state))), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   step: int | None = None) -> tuple[Any, Any, int]:
  """Restores `(state, data_state, step)` from the newest (or the given) checkpoint.

  Args:
    manager: from `latest_manager`.
    abstract_state: the target, `abstract_like(state)` of a freshly built state, whose shardings
      say where the restored arrays go.
    step: the step to restore; None for the newest.

  Raises:
    FileNotFoundError: there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {manager.directory}')
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored.state, _decode_data_state(restored.data), step


def save_best(manager: ocp.CheckpointManager, step: int, state: Any, psnr: float) -> bool:
  """Offers the state at `step` with evaluation PSNR `psnr`; orbax keeps only the best one."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                      metrics={BEST_METRIC: float(psnr)}, force=True)


def restore_variables(workdir: str, which: str = 'best',
                      step: int | None = None) -> tuple[dict[str, Any], int]:
  """The parameters of a run, without its optimizer state: `({'params', 'teacher_params'}, step)`.

  For inference and export. `teacher_params` is None for supervised runs. The arrays come back
  as orbax restores them without a target (numpy or single-device arrays).

  Args:
    workdir: the run's workdir.
    which: 'best' (`workdir/best`) or 'latest' (`workdir/checkpoints`).
    step: a particular step; None for the best or newest one.
  """
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  manager = (best_manager(workdir, read_only=True) if which == 'best'
             else latest_manager(workdir, read_only=True))
  try:
    if step is None:
      step = manager.best_step() if which == 'best' else manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {manager.directory}')
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  finally:
    manager.close()
  state = restored.state
  get = state.get if isinstance(state, Mapping) else (lambda k: getattr(state, k, None))
  return {'params': get('params'), 'teacher_params': get('teacher_params')}, int(step)
