"""One writer per workdir, a stop saves, a damaged checkpoint is named and skipped.

- A second training on a workdir that a run holds fails at once (`error: <workdir>: in use by
  another training run (process PID on host HOST ...)`, exit 1) and changes no file of it; where
  the file system cannot lock, one warning and the run goes on.
- SIGTERM or SIGINT at a step drawn at random (through the pause points of `tests/launcher.py`,
  `CRNET_TEST_PAUSE_IN`): the run finishes the step, saves its checkpoint, prints one line and
  exits 143 or 130; the rerun ends bit for bit like an uninterrupted run (state, best
  checkpoint, metrics.jsonl, and so the data iterator's position). A second Ctrl-C aborts.
- A truncated file in the newest of two checkpoints (an array file, `_METADATA`,
  `_CHECKPOINT_METADATA`, the `data` item): training names it, resumes from the older one, keeps
  the damaged one as `<step>.damaged` and ends bit for bit like an uninterrupted run; inference
  (`restore_variables`) on a damaged best checkpoint names it and lists the intact ones.

The uninterrupted reference (MCMT `:test`, 4 steps, checkpoints at 2 and 4, evaluations at 3
and 4) runs once per test process; the subprocesses share its persistent compilation cache.
"""

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from crnet_jax import checkpointing
from crnet_jax import train
from tests import launcher
from tests import test_kill_resume as kr
from tests.test_bad_inputs import snapshot  # {relative path: sha1} of a folder

STEPS = kr.STEPS


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """(data_dir, compilation cache, workdir of an uninterrupted run)."""
  base = tmp_path_factory.mktemp('reference')
  data_dir, cache, workdir = str(base / 'tfds'), str(base / 'jax_cache'), str(base / 'run')
  with kr.persistent_compilation_cache(cache):
    assert train.train_and_evaluate(kr.make_config(data_dir), workdir)['step'] == STEPS
  return data_dir, cache, workdir


def assert_same_run(workdir, reference_workdir):
  for which in ('latest', 'best'):
    step_a, a = kr.restore_full(workdir, which)
    step_b, b = kr.restore_full(reference_workdir, which)
    assert step_a == step_b, which
    kr.assert_trees_equal(a, b)  # params, teacher, Adam state, rng: bit for bit
  assert kr.read_metrics(workdir) == kr.read_metrics(reference_workdir)


# ------------------------------------------------------------------------------------------------
# One writer per workdir.


def test_busy_workdir_is_refused_without_changing_it(reference, tmp_path):
  data_dir, _, ref_workdir = reference
  workdir = str(tmp_path / 'run')
  shutil.copytree(ref_workdir, workdir)
  holder = checkpointing.WorkdirLock(workdir).acquire()  # another run holds it
  try:
    before = snapshot(workdir)
    with pytest.raises(checkpointing.WorkdirBusyError) as err:
      train.train_and_evaluate(kr.make_config(data_dir), workdir)
    assert isinstance(err.value, OSError)
    assert str(err.value).startswith(
        f'{workdir}: in use by another training run (process {os.getpid()} on host '
        f'{socket.gethostname()}')
    assert snapshot(workdir) == before
  finally:
    holder.release()
  # Released (as when the holder ends, however it ends): the next run goes ahead.
  assert train.train_and_evaluate(kr.make_config(data_dir), workdir)['step'] == STEPS


def test_unlockable_file_system_warns_once_and_goes_on(tmp_path, monkeypatch, caplog):
  import fcntl  # pylint: disable=g-import-not-at-top
  import errno  # pylint: disable=g-import-not-at-top

  def flock(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')

  monkeypatch.setattr(fcntl, 'flock', flock)
  with caplog.at_level(logging.WARNING):
    for _ in range(2):
      with checkpointing.lock_workdir(str(tmp_path)):
        pass
  warnings = [r.getMessage() for r in caplog.records if 'cannot lock' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert str(tmp_path / checkpointing.LOCK_FILE) in warnings[0]


# ------------------------------------------------------------------------------------------------
# A stop saves.


def test_stop_signal_saves_the_step_then_resume_equals_uninterrupted(reference, tmp_path):
  data_dir, cache, ref_workdir = reference
  seed = int(os.environ.get('CRNET_STOP_SEED', random.randrange(10**6)))
  rng = random.Random(seed)
  step, sig = rng.randint(1, STEPS - 1), rng.choice([signal.SIGTERM, signal.SIGINT])
  print(f'stop at step {step} with {sig.name} (CRNET_STOP_SEED={seed})')
  workdir = str(tmp_path / 'run')
  args = kr.main_args(workdir, data_dir)
  env = kr.subprocess_env(cache, **{launcher.PAUSE_ENV: f'step@{step}'})
  proc = subprocess.Popen(args, cwd=kr.REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  timer = threading.Timer(240, proc.kill)
  timer.start()
  lines, marker = [], f'{launcher.PAUSE_MARKER} step {step}'
  try:
    for line in proc.stderr:
      lines.append(line)
      if line.strip() == marker:
        break
    assert lines and lines[-1].strip() == marker, ''.join(lines[-30:])

    # Meanwhile, a second run on the same workdir is refused and changes nothing (once the
    # first run's asynchronous save of the previous checkpoint, if any, has finished).
    before = None
    while before != snapshot(workdir):
      before = snapshot(workdir)
      time.sleep(0.5)
    second = subprocess.run(args, cwd=kr.REPO, env=kr.subprocess_env(cache), text=True,
                            capture_output=True, timeout=240)
    assert second.returncode == 1, second.stderr[-3000:]
    last = second.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {workdir}: in use by another training run (process '
                           f'{proc.pid} on host {socket.gethostname()}'), last
    assert 'Traceback' not in second.stderr
    assert snapshot(workdir) == before

    os.kill(proc.pid, sig)
    lines += proc.stderr.readlines()
    proc.wait()
  finally:
    timer.cancel()
    proc.stderr.close()
  stderr = ''.join(lines)
  assert proc.returncode == 128 + sig, stderr[-3000:]
  assert lines[-1].strip() == (
      f'stopped at step {step} ({sig.name}): checkpoint saved in {workdir}/checkpoints/{step}; '
      'rerun the same command to continue'), stderr[-3000:]
  assert 'Traceback' not in stderr
  assert kr.committed_steps(workdir)[-1] == step  # no step lost
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]

  final = subprocess.run(args, cwd=kr.REPO, env=kr.subprocess_env(cache), text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=240)
  assert final.returncode == 0, final.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {step}' in final.stderr
  assert_same_run(workdir, ref_workdir)


def test_stop_signals_second_ctrl_c_aborts_and_handlers_come_back(monkeypatch):
  previous = signal.getsignal(signal.SIGINT)
  exits = []
  monkeypatch.setattr(train.os, '_exit', exits.append)
  with train.StopSignals() as stop:
    assert not stop.should_stop(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs in this (main) thread
    assert stop.signum == signal.SIGINT and stop.should_stop(1) and not exits
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert exits == [130]
  assert signal.getsignal(signal.SIGINT) is previous


# ------------------------------------------------------------------------------------------------
# A damaged checkpoint is named and skipped.


def damage(step_dir, kind):
  """Truncates the files of `kind` in the checkpoint folder `step_dir` to half; returns them.

  'array': every OCDBT data file of `state` (in `state/d/` and `state/ocdbt.process_*/d/`).
  Which of them a restore reads depends on tensorstore's layout (cutting only the largest one
  left the restore intact in about one run of three), so all of them are cut.
  """
  if kind == 'array':
    paths = sorted(os.path.join(root, n) for root, _, names in
                   os.walk(os.path.join(step_dir, 'state'))
                   if os.path.basename(root) == 'd' for n in names)
  else:
    paths = [os.path.join(step_dir, {'_METADATA': 'state/_METADATA',
                                     '_CHECKPOINT_METADATA': '_CHECKPOINT_METADATA',
                                     'data': 'data/metadata'}[kind])]
  for path in paths:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  return paths


@pytest.mark.parametrize('kind', ['array', '_METADATA', '_CHECKPOINT_METADATA', 'data'])
def test_damaged_newest_checkpoint_is_named_and_skipped(reference, tmp_path, kind, caplog):
  data_dir, cache, ref_workdir = reference
  workdir = str(tmp_path / 'run')
  shutil.copytree(ref_workdir, workdir)
  newest = os.path.join(workdir, 'checkpoints', str(STEPS))
  paths = damage(newest, kind)
  damaged_bytes = {}
  for path in paths:
    with open(path, 'rb') as f:
      damaged_bytes[path] = f.read()
  with caplog.at_level(logging.WARNING), kr.persistent_compilation_cache(cache):
    assert train.train_and_evaluate(kr.make_config(data_dir), workdir)['step'] == STEPS
  text = '\n'.join(r.getMessage() for r in caplog.records)
  assert f'Damaged checkpoint {newest}, skipped' in text, text
  assert any(path in text for path in paths), text  # a damaged file is named
  assert f'Resuming from the newest intact checkpoint, step {kr.CKPT_EVERY}' in text
  # Kept, renamed (nothing deleted), out of orbax's way; the step was saved again.
  kept = newest + checkpointing.DAMAGED_SUFFIX
  for path, data in damaged_bytes.items():
    with open(kept + path[len(newest):], 'rb') as f:
      assert f.read() == data
  assert_same_run(workdir, ref_workdir)


@pytest.mark.parametrize('kind', ['_METADATA', '_CHECKPOINT_METADATA'])
def test_restore_variables_names_a_damaged_best_checkpoint(reference, tmp_path, kind):
  _, _, ref_workdir = reference
  workdir = str(tmp_path / 'run')
  shutil.copytree(ref_workdir, workdir)
  best = os.path.join(workdir, 'best', str(STEPS))
  damage(best, kind)
  with pytest.raises(checkpointing.DamagedCheckpointError) as err:
    checkpointing.restore_variables(workdir, 'best')
  message = str(err.value)
  assert isinstance(err.value, OSError) and '\n' not in message
  assert message.startswith(f'{best}: damaged checkpoint'), message
  assert (f'Intact checkpoints of this run: {workdir}/checkpoints/{kr.CKPT_EVERY}, '
          f'{workdir}/checkpoints/{STEPS} (--checkpoint=latest uses '
          f'{workdir}/checkpoints/{STEPS})') in message
  variables, step = checkpointing.restore_variables(workdir, 'latest')  # the intact one works
  assert step == STEPS and variables['params'] is not None
