"""Kill anywhere, lose nothing: SIGKILL during a step, an evaluation and a checkpoint save.

A `main.py` training subprocess (MCMT `:test` config, 4 steps, checkpoints at 2 and 4,
evaluations at 3 and 4) is killed at three moments drawn at random (one of each kind; the draw
is printed) and restarted each time; its final checkpoint, best checkpoint and metrics.jsonl
must equal those of an uninterrupted run exactly. The subprocess runs `main.py` through
`tests/launcher.py`, whose pause points (`CRNET_TEST_PAUSE_IN`) make each kill land where it
should. Restarts share a persistent compilation cache. Also: an unwritable or full workdir fails
with a clear message.
"""

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading

import jax
from jax.experimental.compilation_cache import compilation_cache
import numpy as np
import pytest

from configs import mcmt
from crnet_jax import checkpointing
from crnet_jax import train
from tests import launcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, CKPT_EVERY, EVAL_EVERY = 4, 2, 3  # the :test MCMT run has 1 step per epoch
OVERRIDES = {'num_train_steps': STEPS, 'checkpoint_every_steps': CKPT_EVERY,
             'eval_every_epochs': EVAL_EVERY}
PHASES = ('step', 'eval', 'save')  # their order within one training step


def make_config(data_dir):
  config = mcmt.get_config('test')
  config.data.data_dir = data_dir
  config.update(OVERRIDES)
  return config


def main_args(workdir, data_dir):
  return [sys.executable, os.path.join(REPO, 'tests', 'launcher.py'),
          '--config=configs/mcmt.py:test',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          *[f'--config.{k}={v}' for k, v in OVERRIDES.items()]]


def subprocess_env(cache_dir, **extra):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': cache_dir,
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  env.pop(launcher.PAUSE_ENV, None)
  env.update(extra)
  return env


def committed_steps(workdir):
  folder = os.path.join(workdir, checkpointing.LATEST_DIR)
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def run_until_paused(args, env, workdir, where, step, timeout=240):
  """Starts `args`, waits for the pause marker of (where, step), SIGKILLs it; returns stderr."""
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  timer = threading.Timer(timeout, proc.kill)
  timer.start()
  lines, marker = [], f'{launcher.PAUSE_MARKER} {where} {step}'
  try:
    for line in proc.stderr:
      lines.append(line)
      if line.strip() == marker:
        break
    paused = bool(lines) and lines[-1].strip() == marker
    snapshot = (os.listdir(os.path.join(workdir, checkpointing.LATEST_DIR))
                if paused and where == 'save' else None)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    timer.cancel()
    proc.stderr.close()
  assert paused, f'never reached {where}@{step}:\n' + ''.join(lines[-30:])
  assert proc.returncode == -signal.SIGKILL
  return ''.join(lines), snapshot


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for r in records:
    r.pop('steps_per_second', None)  # wall-clock
  return records


def restore_full(workdir, which):
  manager = (checkpointing.latest_manager(workdir, read_only=True) if which == 'latest'
             else checkpointing.best_manager(workdir, read_only=True))
  try:
    step = manager.latest_step() if which == 'latest' else manager.best_step()
    target = checkpointing._single_device_target(manager, step)  # pylint: disable=protected-access
    restored = manager.restore(step, args=checkpointing.ocp.args.Composite(
        state=checkpointing.ocp.args.StandardRestore(target)))
  finally:
    manager.close()
  return step, restored.state


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def draw_kill_points(rng):
  """One (where, step) of each kind, in the order a run meets them."""
  evals = sorted({*range(EVAL_EVERY, STEPS + 1, EVAL_EVERY), STEPS})
  saves = sorted({*range(CKPT_EVERY, STEPS + 1, CKPT_EVERY), STEPS})
  points = [('step', rng.randint(1, STEPS)), ('eval', rng.choice(evals)),
            ('save', rng.choice(saves))]
  return sorted(points, key=lambda p: (p[1], PHASES.index(p[0])))


@contextlib.contextmanager
def persistent_compilation_cache(path):
  """Uses (and fills) the subprocesses' compilation cache in this process too, then stops."""
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs')
  old = {name: jax.config.values[name] for name in names}
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in old.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
  data_dir, cache = str(tmp_path / 'tfds'), str(tmp_path / 'jax_cache')
  seed = int(os.environ.get('CRNET_KILL_SEED', random.randrange(10**6)))
  points = draw_kill_points(random.Random(seed))
  print(f'kill points (CRNET_KILL_SEED={seed}): {points}')
  workdir = str(tmp_path / 'killed')
  args = main_args(workdir, data_dir)
  previous = None
  for where, step in points:
    stderr, snapshot = run_until_paused(
        args, subprocess_env(cache, **{launcher.PAUSE_ENV: f'{where}@{step}'}), workdir,
        where, step)
    if previous is not None:  # it resumed from the newest complete checkpoint
      assert f'Resumed from the checkpoint of step {previous}' in stderr, (where, step)
    committed = committed_steps(workdir)
    if where == 'save':  # killed with the checkpoint written but not committed
      assert str(step) not in snapshot
      assert any(n.startswith(f'{step}.orbax-checkpoint-tmp') for n in snapshot), snapshot
      assert step not in committed
    previous = committed[-1] if committed else None

  with open(tmp_path / 'final.log', 'w+') as log:
    final = subprocess.Popen(args, cwd=REPO, env=subprocess_env(cache), text=True,
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
      # Meanwhile the uninterrupted reference, here (compiled by the subprocesses, mostly).
      reference = str(tmp_path / 'reference')
      with persistent_compilation_cache(cache):
        assert train.train_and_evaluate(make_config(data_dir), reference)['step'] == STEPS
    finally:
      final.wait(timeout=240)
      log.seek(0)
      stderr = log.read()
  assert final.returncode == 0, stderr[-3000:]
  if previous is not None:
    assert f'Resumed from the checkpoint of step {previous}' in stderr
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]

  for which in ('latest', 'best'):
    step_a, a = restore_full(workdir, which)
    step_b, b = restore_full(reference, which)
    assert step_a == step_b
    assert_trees_equal(a, b)  # params, teacher, Adam state, rng: bit for bit
  assert read_metrics(workdir) == read_metrics(reference)


def test_unwritable_workdir_fails_at_start_naming_the_path(tmp_path):
  config = make_config(str(tmp_path / 'tfds'))
  a_file = tmp_path / 'file'
  a_file.write_text('not a folder')
  with pytest.raises(OSError, match=f'not writable: cannot create or write {a_file}'):
    train.train_and_evaluate(config, str(a_file))
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').write_text('in the way')
  with pytest.raises(OSError, match=f'cannot create or write {workdir / "checkpoints"}'):
    train.train_and_evaluate(config, str(workdir))
  assert not (tmp_path / 'tfds').exists()  # failed before building any data
  if os.geteuid() != 0:  # root writes anywhere
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(OSError, match='Permission denied'):
      train.train_and_evaluate(config, str(locked))


def test_full_disk_fails_at_start_or_at_the_save(tmp_path, monkeypatch):
  data_dir = str(tmp_path / 'tfds')

  monkeypatch.setattr(checkpointing, '_free_bytes', lambda path: 4096)
  with pytest.raises(OSError, match='not enough free space') as err:
    train.train_and_evaluate(make_config(data_dir), str(tmp_path / 'start'))
  assert err.value.errno == errno.ENOSPC
  monkeypatch.undo()

  # The disk fills up during the run: the save of step 2 fails (as orbax reports it).
  real_save = checkpointing.save_latest

  def save_latest(manager, step, *args, **kwargs):
    if step == 2:
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file: No space left on device')
    return real_save(manager, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing, 'save_latest', save_latest)
  workdir = str(tmp_path / 'save')
  with pytest.raises(train.CheckpointSaveError, match='No space left on device') as err:
    train.train_and_evaluate(make_config(data_dir), workdir)
  assert err.value.errno == errno.ENOSPC
  assert f'Saving a latest checkpoint in {workdir}/checkpoints failed' in str(err.value)
  assert 'there is no checkpoint' in str(err.value)
