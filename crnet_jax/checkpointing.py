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
folders cannot be written.

A training run holds its checkpoints in a `RunCheckpoints`: it resumes from the newest intact
latest checkpoint (`resume`), saves the latest and the best ones, and turns a failed save, which
orbax reports at the next save or wait, into a `CheckpointSaveError` naming the folder and the
last complete checkpoint.

One writer per workdir: `lock_workdir` takes an exclusive `fcntl.flock` on `workdir/.lock`
(process 0 of a run; the file holds its host name and pid). The OS drops the lock when the
process ends, however it ends, so a killed run leaves no stale lock; a second run on the same
workdir fails at once with `WorkdirBusyError`, before it changes anything. Where the file system
cannot lock (some network or fuse mounts), a warning says so and the run goes on unprotected.

Damaged checkpoints (a truncated or corrupt file: a copy cut short, a disk error): `find_damage`
checks a committed checkpoint folder without reading its arrays (every JSON metadata file parses,
every OCDBT node or manifest file holds the length its header says, the items are there), and a
failed restore is described by `describe_restore_error` (the file or the array it could not
read). Training skips a damaged latest checkpoint for the newest intact one and renames it
`<step>.damaged` (`set_aside_damaged`) so that the step can be saved again; inference
(`restore_variables`) raises `DamagedCheckpointError` naming it and listing the intact ones.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from crnet_jax.config_checks import ConfigError

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
BEST_METRIC = 'psnr'
LOCK_FILE = '.lock'
DAMAGED_SUFFIX = '.damaged'


class WorkdirBusyError(OSError):
  """Another training run holds the workdir's lock (its host and pid are named)."""


class DamagedCheckpointError(OSError):
  """A checkpoint cannot be read (a truncated or corrupt file): the message names it."""


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (disk full, workdir gone...): the message names the folder."""


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


class WorkdirLock:
  """An exclusive `fcntl.flock` on `workdir/.lock`, holding `{"host", "pid", "since"}`.

  flock locks belong to the open file: the OS drops them when the process ends (exit, crash,
  SIGKILL), so a lock is never stale, and the file is left in place (removing it would race with
  a run opening it). A run that finds it locked reads who holds it, changes nothing, and raises
  `WorkdirBusyError`. Where flock is not supported (ENOLCK, EOPNOTSUPP, ENOSYS: some network,
  object-store or fuse mounts), `acquire` warns once and holds nothing.
  """

  _warned: set[str] = set()

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def holder(self) -> str:
    """Who holds the lock, from the file: 'process PID on host HOST (since ...)'."""
    try:
      with open(self.path) as f:
        info = json.load(f)
      return (f'process {int(info["pid"])} on host {info["host"]}'
              + (f' (since {info["since"]})' if info.get('since') else ''))
    except (OSError, ValueError, KeyError, TypeError):
      return 'another process'

  def acquire(self) -> 'WorkdirLock':
    """Takes the lock (without waiting).

    Raises:
      WorkdirBusyError: another process holds it.
      OSError: the lock file cannot be opened (the message names it).
    """
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise OSError(e.errno, f'{self.path}: cannot open the workdir lock ({e.strerror})') from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        workdir = os.path.dirname(self.path)
        raise WorkdirBusyError(
            f'{workdir}: in use by another training run ({self.holder()} holds '
            f'{self.path}). Wait for it to end or stop it, or use another --workdir.') from e
      if self.path not in WorkdirLock._warned:
        WorkdirLock._warned.add(self.path)
        logging.warning('%s: this file system cannot lock files (%s): two trainings on this '
                        'workdir would not be prevented.', self.path, e.strerror or e)
      return self
    info = {'host': socket.gethostname(), 'pid': os.getpid(),
            'since': time.strftime('%Y-%m-%d %H:%M:%S %Z')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + '\n').encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    """Drops the lock (closing the file drops it; the file stays)."""
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None


@contextlib.contextmanager
def lock_workdir(workdir: str) -> Iterator[WorkdirLock | None]:
  """Holds `WorkdirLock(workdir)` (process 0) for the duration of the block.

  With several processes, process 0 takes the lock and broadcasts whether it got it, so every
  process of a second run on a busy workdir raises `WorkdirBusyError` (not only process 0, which
  would leave the others waiting for it in a collective).
  """
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  error = None
  if lock is not None:
    try:
      lock.acquire()
    except WorkdirBusyError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    busy = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if busy and error is None:
      error = WorkdirBusyError(
          f'{os.path.abspath(workdir)}: in use by another training run '
          f'({WorkdirLock(workdir).holder()} holds it, process 0 found). Wait for it to end or '
          'stop it, or use another --workdir.')
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints.

_JSON_FILES = ('_CHECKPOINT_METADATA', '_METADATA', '_sharding', 'metadata', 'metrics')
_OCDBT_MAGIC = b'\x0c\xdb'  # OCDBT manifest and b-tree node files: magic (4), length (8, LE)


def find_damage(step_dir: Any, items: tuple[str, ...] = ('state',)) -> str | None:
  """The first sign of damage in the committed checkpoint `step_dir`, or None if it looks intact.

  Reads no array: checks that each item folder of `items` is there, that every JSON metadata
  file of orbax (`_CHECKPOINT_METADATA`, `_METADATA`, `_sharding`, `array_metadatas/*`, the JSON
  item `data/metadata`, `metrics/metrics`) parses, and that every OCDBT manifest or b-tree node
  file holds at least the length its header says (a file may hold several records). A file of
  array values cut short is found only when restoring (`describe_restore_error`).

  Returns:
    'FILE: what is wrong' (FILE the full path), or None.
  """
  step_dir = os.fspath(step_dir)
  for item in items:
    if not os.path.isdir(os.path.join(step_dir, item)):
      return f'{os.path.join(step_dir, item)}: missing (the checkpoint has no {item!r} item)'
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      try:
        if name in _JSON_FILES or os.path.basename(root) == 'array_metadatas':
          with open(path, 'rb') as f:
            json.loads(f.read().decode('utf-8'))
          continue
        with open(path, 'rb') as f:
          header = f.read(12)
        if len(header) == 12 and header[:2] == _OCDBT_MAGIC:
          expected, size = int.from_bytes(header[4:12], 'little'), os.path.getsize(path)
          if size < expected:  # a file may hold several records: only shorter is damage
            return f'{path}: truncated ({size} bytes, its header says {expected})'
      except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        return f'{path}: not valid JSON, truncated or corrupt ({e})'
      except OSError as e:
        return f'{path}: unreadable ({e.strerror or e})'
  return None


def describe_restore_error(error: BaseException, step_dir: Any) -> str:
  """'FILE: what is wrong' for a failed restore: the file (or array) orbax could not read."""
  text = str(error)
  files = re.findall(r'local file "([^"]+)"', text)
  files = [f for f in files if not f.endswith(os.sep)]  # the database folder itself
  first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
  if files:
    return f'{files[-1]}: cannot be read ({first_line[:300]})'
  arrays = [a for a in re.findall(r"'path': '([^']+?)/?'", text) if not a.startswith(os.sep)]
  where = os.path.join(os.fspath(step_dir), 'state')
  if arrays:
    return (f'{where}: the values of array {arrays[-1]} cannot be read (a data file is '
            'truncated or corrupt)')
  return f'{os.fspath(step_dir)}: cannot be restored ({type(error).__name__}: {first_line[:300]})'


def intact_steps(manager: ocp.CheckpointManager, items: tuple[str, ...] = ('state',)) -> list[int]:
  """The steps of `manager` whose folders `find_damage` finds intact, oldest first."""
  return [s for s in manager.all_steps()
          if find_damage(manager.directory / str(s), items) is None]


def set_aside_damaged(directory: Any, step: int) -> str:
  """Renames the damaged checkpoint `directory/<step>` to `<step>.damaged` (or `.damaged.2`...).

  Nothing is deleted or overwritten: the folder keeps its files under a name orbax neither lists
  as a step nor cleans up, so the step can be saved again. Process 0 only (with the workdir's
  lock held). Returns the new path.
  """
  source = os.path.join(os.fspath(directory), str(step))
  target, n = source + DAMAGED_SUFFIX, 1
  while os.path.exists(target):
    n += 1
    target = f'{source}{DAMAGED_SUFFIX}.{n}'
  os.rename(source, target)
  return target


def latest_manager(workdir: str, max_to_keep: int = 3,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of the latest checkpoints in `workdir/checkpoints` (items `state`, `data`).

  Unless read-only, it deletes the temporary folders of saves that were interrupted.
  """
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

  Raises:
    FileNotFoundError: there is no checkpoint.
    DamagedCheckpointError: the checkpoint is damaged; the message names it and its damaged file
      and lists the intact checkpoints of the run (best and latest).
  """
  if which not in ('best', 'latest'):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  manager, newest = _reader(workdir, which)
  try:
    if step is None:
      step = newest()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {manager.directory}')
    step_dir = manager.directory / str(step)
    damage = find_damage(step_dir)
    if damage is None:
      target = _single_device_target(manager, step)
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target)))
      except Exception as e:  # pylint: disable=broad-except
        damage = describe_restore_error(e, step_dir)
    if damage is not None:
      raise DamagedCheckpointError(
          f'{step_dir}: damaged checkpoint, cannot be restored: {damage}. '
          f'{_describe_intact(workdir, exclude=os.fspath(step_dir))}')
  finally:
    manager.close()
  state = restored.state
  get = state.get if isinstance(state, Mapping) else (lambda k: getattr(state, k, None))
  return {'params': get('params'), 'teacher_params': get('teacher_params')}, int(step)


def _reader(workdir: str, which: str) -> tuple[ocp.CheckpointManager, Callable[[], int | None]]:
  """A read-only manager of the run's 'best' or 'latest' checkpoints, and its newest step."""
  if which == 'best':
    manager = best_manager(workdir, read_only=True)
    return manager, manager.best_step
  manager = latest_manager(workdir, read_only=True)
  return manager, manager.latest_step


def _describe_intact(workdir: str, exclude: str) -> str:
  """'Intact checkpoints of this run: ...', with the `--checkpoint` choice that uses one."""
  found, hint = [], ''
  for which in ('best', 'latest'):
    manager, newest_step = _reader(workdir, which)
    try:
      steps = intact_steps(manager)
      paths = [os.fspath(manager.directory / str(s)) for s in steps]
      found += [p for p in paths if p != exclude]
      newest = newest_step()
      if not hint and newest in steps and paths[steps.index(newest)] != exclude:
        hint = f' (--checkpoint={which} uses {paths[steps.index(newest)]})'
    except Exception:  # pylint: disable=broad-except
      pass
    finally:
      manager.close()
  if not found:
    return 'The run has no intact checkpoint.'
  return f'Intact checkpoints of this run: {", ".join(found)}{hint}.'


# ------------------------------------------------------------------------------------------------
# The checkpoints of a training run.


def saved_config_changes(workdir: str, config: Any) -> list[str] | None:
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


def resume(latest: ocp.CheckpointManager, abstract_state: Any, workdir: str,
           config: Any) -> tuple[Any, Any, int]:
  """Restores `(state, data_state, step)` from the newest intact checkpoint of `latest`.

  A damaged checkpoint (`find_damage`, or a restore that fails while the saved `config.json`
  agrees with `config` on the method and the model) is named in a warning and skipped; once an
  older one restores, the damaged ones newer than it are renamed `<step>.damaged` (process 0;
  nothing is deleted) so that their steps can be saved again. A restore failure is blamed on the
  config only when `config.json` differs in those fields.

  Raises:
    ConfigError: the checkpoint does not match the config (the differing fields are named).
    DamagedCheckpointError: no checkpoint is intact (each is named).
  """
  damaged: list[tuple[int, str]] = []
  for step in sorted(latest.all_steps(), reverse=True):
    step_dir = latest.directory / str(step)
    damage = find_damage(step_dir, ('state', 'data'))
    if damage is None:
      try:
        restored = restore_latest(latest, abstract_state, step)
        break
      except Exception as e:  # pylint: disable=broad-except
        changes = saved_config_changes(workdir, config)
        if changes or changes is None:
          differs = (f'its config.json differs in {", ".join(changes)}' if changes else
                     'a different method or model? Or a damaged checkpoint')
          raise ConfigError(
              f'{step_dir}: cannot resume from this checkpoint: it does not match this config '
              f'({differs}). Use a new --workdir, or the config the run was started with '
              f'({os.path.join(workdir, "config.json")}). Cause: {e}') from e
        damage = describe_restore_error(e, step_dir)
    logging.warning('Damaged checkpoint %s, skipped: %s', step_dir, damage)
    damaged.append((step, damage))
  else:
    raise DamagedCheckpointError(
        f'{latest.directory}: no intact checkpoint to resume from; damaged: ' +
        '; '.join(f'step {s}: {d}' for s, d in damaged) + '. Nothing was changed: move the '
        'damaged checkpoints away to start this run again from an earlier one (or from scratch).')
  state, data_state, step = restored
  if damaged:
    set_aside = []
    if jax.process_index() == 0:
      set_aside = [set_aside_damaged(latest.directory, s) for s, _ in damaged]
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('crnet: damaged checkpoints set aside')
    latest.reload()
    logging.warning('Resuming from the newest intact checkpoint, step %d; the damaged newer '
                    'one(s) %s are kept as %s (delete them when you no longer need them).',
                    step, ', '.join(str(s) for s, _ in damaged),
                    ', '.join(set_aside) or f'<step>{DAMAGED_SUFFIX}')
  return state, data_state, step


def _save_error_code(error: Exception, text: str) -> int:
  """The errno of a failed save: its own, ENOSPC for tensorstore's "No space left", else EIO."""
  if isinstance(error, OSError) and error.errno:
    return error.errno
  return errno.ENOSPC if ('No space left' in text or 'os_error_code=\'28\'' in text) else errno.EIO


class RunCheckpoints:
  """The checkpoints of a training run: the latest ones and the best one (by the student's PSNR).

  Opened with the workdir's lock held (opening deletes the temporary folders of interrupted
  saves). Every save and wait goes through `_saving`: orbax reports a failed write (e.g.
  tensorstore's `ValueError: RESOURCE_EXHAUSTED ... No space left on device`) at the next save or
  wait, and it becomes a `CheckpointSaveError` naming the folder, the step it was detected at and
  the last complete checkpoint. A context manager: on exit it waits for the saves and closes the
  managers (a failure there is logged, the exception in flight, if any, is the one raised).
  """

  def __init__(self, workdir: str, max_to_keep: int):
    self.workdir = os.path.abspath(workdir)
    self.latest = latest_manager(self.workdir, max_to_keep)
    self.best = best_manager(self.workdir)

  def __enter__(self) -> 'RunCheckpoints':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def resume(self, state: Any, data_iterator: Any, config: Any) -> Any:
    """The state of the newest intact latest checkpoint, or `state` when there is none.

    `state` is a freshly built state: the target of the restore (its shapes and shardings). The
    data iterator continues from the checkpoint's position (`set_state`). See the module
    function `resume` for damaged checkpoints and config mismatches (`config`: the run's).
    """
    if self.latest.latest_step() is None:
      return state
    state, data_state, step = resume(self.latest, abstract_like(state), self.workdir, config)
    data_iterator.set_state(data_state)
    logging.info('Resumed from the checkpoint of step %d in %s.', step, self.latest.directory)
    return state

  def describe_last(self) -> str:
    """Where a rerun resumes from: 'the last checkpoint (step S) in DIR is intact' (or none)."""
    try:
      self.latest.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass
    s = self.latest.latest_step()
    return (f'the last checkpoint (step {s}) in {self.latest.directory} is intact'
            if s is not None else f'there is no checkpoint in {self.latest.directory}')

  def _saving(self, step: int, what: str, fn: Callable[[], Any]) -> Any:
    """Runs `fn` (a save, a wait, a check) of the `what` ('latest', 'best') manager."""
    directory = (self.latest if what == 'latest' else self.best).directory
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      text = f'{type(e).__name__}: {e}'
      raise CheckpointSaveError(
          _save_error_code(e, text),
          f'Saving a {what} checkpoint in {directory} failed (detected at step {step}): '
          f'{text}. The disk may be full or the workdir no longer writable; '
          f'{self.describe_last()}: a rerun with the same workdir continues from there.') from e

  def save_latest(self, step: int, state: Any, data_state: Any) -> None:
    """Saves (asynchronously) the state and the data iterator's state at `step`."""
    self._saving(step, 'latest', lambda: save_latest(self.latest, step, state, data_state))

  def save_best(self, step: int, state: Any, psnr: float) -> None:
    """Offers the state of `step`, evaluated at `psnr`, as the best (once per step)."""
    if step not in self.best.all_steps():
      self._saving(step, 'best', lambda: save_best(self.best, step, state, psnr))

  def check_for_errors(self, step: int) -> None:
    """Raises `CheckpointSaveError` if an asynchronous save has failed (reported early)."""
    self._saving(step, 'latest', self.latest.check_for_errors)
    self._saving(step, 'best', self.best.check_for_errors)

  def wait_until_finished(self, step: int) -> None:
    """Waits for the saves in flight (`CheckpointSaveError` if one failed)."""
    self._saving(step, 'latest', self.latest.wait_until_finished)
    self._saving(step, 'best', self.best.wait_until_finished)

  def folders(self) -> dict[str, str]:
    """{'best': its folder, 'latest': the newest one's}, for those that exist."""
    steps = (('best', BEST_DIR, self.best.best_step()),
             ('latest', LATEST_DIR, self.latest.latest_step()))
    return {what: os.path.join(self.workdir, folder, str(step))
            for what, folder, step in steps if step is not None}

  def close(self) -> None:
    for manager in (self.latest, self.best):
      try:
        manager.wait_until_finished()
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.error('Closing the checkpoint manager of %s: %s', manager.directory, e)
