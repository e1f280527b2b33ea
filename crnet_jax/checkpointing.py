"""Checkpoints of a training run (orbax `CheckpointManager`), laid out in the workdir as:

- `workdir/checkpoints/<step>/`: the latest `config.max_to_keep` checkpoints, each with two items:
  `state` (the whole `train.TrainState`: step, params, teacher_params, opt_state, rng) and `data`
  (the training iterator's state, JSON). A rerun with the same workdir resumes from the newest.
- `workdir/best/<step>/`: one checkpoint, the one with the best evaluation PSNR of the student
  (item `state` only; its metrics are kept by orbax next to it).

Restoring always goes onto an abstract target (shapes, dtypes and shardings of a freshly built
state): without one, orbax turns optax's state into plain lists. `restore_variables` reads only the
parameters, for inference and export, without building an optimizer, on one device whatever the
topology (number of processes and devices) that saved them.

Interrupted saves: orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp-*` and renames it to
`<step>` only once every item (and, with several processes, every process) is written, so a run
killed during a save leaves a temporary folder that `latest_step()` ignores: the previous
checkpoint restores. The managers here delete such leftovers when they open (process 0).

With several processes every process calls `save` (each writes its shards of the arrays; the JSON
`data` item and the commit are done by process 0). The data iterator's state is the same on every
process (the global step; see `input_pipeline.TrainIterator`), so one JSON item holds it.

`check_writable(workdir)` fails fast, before any data is built, when the workdir or its checkpoint
folders cannot be written; `pause_for_tests` is a test-only hook (see its docstring).
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import sys
import time
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
BEST_METRIC = 'psnr'
# Test-only hook (tests/test_kill_resume.py): 'WHERE@STEP', WHERE in 'step', 'eval', 'save'.
PAUSE_ENV = 'CRNET_TEST_PAUSE_IN'
PAUSE_MARKER = 'CRNET_TEST_PAUSED'


def pause_for_tests(where: str, step: int) -> None:
  """Test-only: when `$CRNET_TEST_PAUSE_IN` is `f'{where}@{step}'`, prints a marker and sleeps.

  The kill/resume test sets the variable in a training subprocess, waits for the line
  `CRNET_TEST_PAUSED <where> <step>` on its stderr and sends SIGKILL, so that the kill lands
  reliably during a train step ('step', the step's computation dispatched but nothing saved),
  an evaluation ('eval') or a checkpoint save ('save', with every file of the checkpoint written
  to its temporary folder but not yet committed). Without the variable this does nothing.
  """
  if os.environ.get(PAUSE_ENV) == f'{where}@{step}':
    print(f'{PAUSE_MARKER} {where} {step}', file=sys.stderr, flush=True)
    time.sleep(3600)


def _install_save_pause_hook() -> None:
  """With `$CRNET_TEST_PAUSE_IN=save@N`, the commit (rename) of `checkpoints/N` pauses first."""
  spec = os.environ.get(PAUSE_ENV, '')
  if not spec.startswith('save@'):
    return
  cls = ocp.path.atomicity.AtomicRenameTemporaryPath
  if getattr(cls.finalize, '_crnet_pause', False):
    return
  original = cls.finalize

  async def finalize(self):
    final = self.get_final()
    if final.parent.name == LATEST_DIR and final.name.isdigit():
      pause_for_tests('save', int(final.name))
    return await original(self)

  finalize._crnet_pause = True  # pylint: disable=protected-access
  cls.finalize = finalize


def check_writable(workdir: str) -> None:
  """Creates `workdir`, `workdir/checkpoints` and `workdir/best` and writes a file in each.

  Raises:
    OSError: naming the folder that cannot be created or written, with the system's reason.
  """
  workdir = os.path.abspath(workdir)
  tag = f'.write_test.{jax.process_index()}.{os.getpid()}'
  for folder in (workdir, os.path.join(workdir, LATEST_DIR), os.path.join(workdir, BEST_DIR)):
    probe = os.path.join(folder, tag)
    try:
      os.makedirs(folder, exist_ok=True)
      with open(probe, 'w') as f:
        f.write('ok')
        f.flush()
        os.fsync(f.fileno())
      os.remove(probe)
    except OSError as e:
      raise OSError(e.errno, f'the workdir is not writable: cannot create or write {folder} '
                    f'({e.strerror or e}). Use another --workdir, or fix its permissions / free '
                    'space.') from e


def _free_bytes(path: str) -> int | None:
  """Bytes available to this user on the file system of `path` (None if unknown)."""
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def check_free_space(workdir: str, checkpoint_bytes: int) -> None:
  """Fails (ENOSPC) when the workdir's file system has less room than two checkpoints need.

  One latest and one best checkpoint can be written at once; `checkpoint_bytes` is the size of
  the arrays of one (the train state). A run that would fill the disk after hours stops here.
  """
  free = _free_bytes(workdir)
  if free is None:
    return
  need = 2 * int(checkpoint_bytes) + (16 << 20)  # + metadata, logs and some margin
  if free < need:
    raise OSError(errno.ENOSPC, f'not enough free space in {workdir}: {free / 2**20:.1f} MiB '
                  f'free, a checkpoint needs {checkpoint_bytes / 2**20:.1f} MiB and two can be '
                  f'written at once (at least {need / 2**20:.1f} MiB). Free some space or use '
                  'another --workdir.')


def latest_manager(workdir: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the latest checkpoints in `workdir/checkpoints` (items `state`, `data`).

  Unless read-only, it deletes the temporary folders of saves that were interrupted.
  """
  _install_save_pause_hook()
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only,
                                         cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), LATEST_DIR),
                               options=options, item_names=('state', 'data'))


def best_manager(workdir: str, read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the best checkpoint (highest `metrics["psnr"]`) in `workdir/best`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, best_fn=lambda metrics: float(metrics[BEST_METRIC]), best_mode='max',
      keep_checkpoints_without_metrics=False, create=not read_only, read_only=read_only,
      cleanup_tmp_directories=not read_only)
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


def _single_device_target(manager: ocp.CheckpointManager, step: int) -> Any:
  """A restore target for the `state` item of `step` on this process's first device.

  Built from the checkpoint's own metadata, so that a checkpoint written by any number of
  processes and devices restores here (without a target orbax refuses another topology).
  Returns None (restore without a target) when the metadata cannot be read.
  """
  path = manager.directory / str(step) / 'state'
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(path)
    tree = getattr(metadata, 'tree', metadata)
  except Exception:  # pylint: disable=broad-except
    return None
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(m):
    if hasattr(m, 'shape') and hasattr(m, 'dtype'):
      return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
    return m

  return jax.tree.map(leaf, tree, is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'))


def restore_variables(workdir: str, which: str = 'best',
                      step: int | None = None) -> tuple[dict[str, Any], int]:
  """The parameters of a run, without its optimizer state: `({'params', 'teacher_params'}, step)`.

  For inference and export. `teacher_params` is None for supervised runs. The arrays come back
  on this process's first device, whatever the topology of the run that saved them.

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
    target = _single_device_target(manager, step)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  finally:
    manager.close()
  state = restored.state
  get = state.get if isinstance(state, Mapping) else (lambda k: getattr(state, k, None))
  return {'params': get('params'), 'teacher_params': get('teacher_params')}, int(step)
