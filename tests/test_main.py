"""main.py's enhance, evaluate and export modes on a tiny trained MCMT run.

Also: export never writes into a training workdir or a non-empty folder, a workdir is always read
through its checkpoints (an export left inside it by an older version never shadows them), the
parameters used are logged in one line, and inference errors are one line (docs/reliability.md).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import mcmt
from crnet_jax import checkpointing
from crnet_jax import export
from crnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A finished `configs/mcmt.py:test` run (student and teacher)."""
  config = mcmt.get_config('test')
  config.data.data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, workdir)
  return workdir


def main_py(*args, check=True):
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=check)


def outputs(model, params, x):
  return np.asarray(jax.jit(model.apply)({'params': params}, x)[0])


def test_export_gives_the_training_checkpoints_output(run_dir, tmp_path):
  main_py('--mode=export', f'--workdir={run_dir}', f'--output={tmp_path / "exp"}',
          '--params=teacher')
  x = np.random.default_rng(0).random((1, 19, 23, 3)).astype(np.float32)
  model, params, _ = export.load_model(run_dir, 'teacher')
  exported_model, exported_params, _ = export.load_model(str(tmp_path / 'exp'))
  np.testing.assert_array_equal(outputs(exported_model, exported_params, x),
                                outputs(model, params, x))
  student_model, student_params, _ = export.load_model(run_dir, 'student')
  assert not np.array_equal(outputs(student_model, student_params, x), outputs(model, params, x))
  assert (tmp_path / 'exp' / export.SERIALIZED_FILE).stat().st_size > 0


def test_enhance_mode_writes_pngs_and_reports_bad_files(run_dir, tmp_path):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  Image.fromarray((np.random.default_rng(1).random((27, 31, 3)) * 50).astype(np.uint8)).save(
      inputs / 'dark.jpg')
  (inputs / 'broken.png').write_bytes(b'not an image')
  result = main_py('--mode=enhance', f'--workdir={run_dir}', f'--input={inputs}',
                   f'--output={tmp_path / "out"}')
  assert os.listdir(tmp_path / 'out') == ['dark.png']
  assert 'broken.png' in result.stderr
  # One line says which parameters; no library chatter (tests/test_cli_output.py, training).
  for chatter in ('Unable to initialize backend', 'CheckpointManagerOptions',
                  'Given directory is read only', 'orbax-checkpoint version', 'Restoring checkpoint'):
    assert chatter not in result.stderr, (chatter, result.stderr[-3000:])
  facts = [line for line in result.stderr.splitlines() if 'Parameters: ' in line]
  assert len(facts) == 1 and 'best checkpoint, student parameters' in facts[0], facts
  missing = main_py('--mode=enhance', f'--workdir={tmp_path / "no_run"}', f'--input={inputs}',
                    f'--output={tmp_path / "out2"}', check=False)
  assert missing.returncode != 0
  assert 'checkpoint directory not found' in missing.stderr.splitlines()[-1]


def snapshot(folder):
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        out[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha1(f.read()).hexdigest()
  return out


def popen(*args):
  return subprocess.Popen([sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def add_checkpoint(workdir, step, params, teacher_params=None):
  """A newer latest checkpoint, as more training would leave it."""
  state = {'step': np.int32(step), 'params': params}
  if teacher_params is not None:
    state['teacher_params'] = teacher_params
  manager = checkpointing.latest_manager(workdir, max_to_keep=5)
  checkpointing.save_latest(manager, step, state, {'step': step})
  manager.wait_until_finished()
  manager.close()


def test_export_never_shadows_a_run(run_dir, tmp_path):
  run = str(tmp_path / 'run')
  shutil.copytree(run_dir, run)
  before = snapshot(run)
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('mine')
  procs = {'into the run': popen('--mode=export', f'--workdir={run}', f'--output={run}'),
           'into a full folder': popen('--mode=export', f'--workdir={run}',
                                       f'--output={tmp_path / "mine"}')}
  for name, fragment in (('into the run', 'is a training workdir'),
                         ('into a full folder', 'not empty')):
    _, stderr = procs[name].communicate(timeout=300)
    assert procs[name].returncode == 1 and 'Traceback' not in stderr, (name, stderr[-3000:])
    assert fragment in stderr.strip().splitlines()[-1], (name, stderr[-3000:])
  assert snapshot(run) == before
  assert os.listdir(tmp_path / 'mine') == ['notes.txt']

  # An export left in the run by an older version, then more training: --checkpoint=latest is
  # the newest checkpoint, not the export.
  main_py('--mode=export', f'--workdir={run}', f'--output={tmp_path / "exp"}')
  for name in (export.PARAMS_DIR, export.MODEL_CONFIG_FILE):
    copy = shutil.copytree if name == export.PARAMS_DIR else shutil.copy
    copy(str(tmp_path / 'exp' / name), os.path.join(run, name))
  variables, step = checkpointing.restore_variables(run, 'latest')
  newer = jax.tree.map(lambda v: np.asarray(v) + 0.01, variables['params'])
  add_checkpoint(run, step + 1, newer, variables['teacher_params'])
  _, params, _ = export.load_model(run, 'student', 'latest')
  jax.tree.map(np.testing.assert_array_equal, params, newer)
  x = np.random.default_rng(2).random((1, 12, 14, 3)).astype(np.float32)
  model, _, _ = export.load_model(run)
  (tmp_path / 'in').mkdir()
  Image.fromarray((x[0] * 255).astype(np.uint8)).save(tmp_path / 'in' / 'x.png')
  result = main_py('--mode=enhance', f'--workdir={run}', '--checkpoint=latest',
                   f'--input={tmp_path / "in"}', f'--output={tmp_path / "out"}')
  lines = [l for l in result.stderr.splitlines() if 'Parameters: ' in l]
  assert len(lines) == 1, result.stderr[-3000:]
  assert f'checkpoints/{step + 1}: step {step + 1}, latest checkpoint, student' in lines[0]


def test_inference_errors_are_one_line_and_the_parameters_are_named(run_dir, tmp_path):
  # A supervised run (no teacher) and a run whose config.json does not match its checkpoints.
  variables, step = checkpointing.restore_variables(run_dir, 'latest')
  supervised, mismatch = str(tmp_path / 'supervised'), str(tmp_path / 'mismatch')
  os.makedirs(supervised)
  shutil.copy(os.path.join(run_dir, 'config.json'), supervised)
  add_checkpoint(supervised, step, variables['params'])
  shutil.copytree(run_dir, mismatch)
  config = json.load(open(os.path.join(mismatch, 'config.json')))
  config['model']['features'] *= 2
  json.dump(config, open(os.path.join(mismatch, 'config.json'), 'w'))
  inputs = tmp_path / 'in'
  inputs.mkdir()
  Image.fromarray(np.full((9, 10, 3), 20, np.uint8)).save(inputs / 'a.png')
  enhance = lambda workdir, *args: popen('--mode=enhance', f'--workdir={workdir}',
                                         f'--input={inputs}', *args)
  runs = {  # name -> (process, exit status, what the last line holds)
      'teacher of a supervised run': (
          enhance(supervised, '--params=teacher', f'--output={tmp_path / "o1"}'), 1,
          [f'error: {supervised}: this run has no teacher']),
      'config does not match': (
          enhance(mismatch, f'--output={tmp_path / "o2"}'), 1,
          [f'error: {mismatch}/config.json: the model config does not match']),
      'output is the input': (enhance(run_dir, f'--output={inputs}'), 1,
                              [f'error: {inputs}: the output folder is the input folder']),
      'missing flag': (popen('--mode=enhance', f'--workdir={run_dir}'), 1,
                       ['error: --mode=enhance needs --input and --output']),
      'teacher': (enhance(run_dir, '--params=teacher', f'--output={tmp_path / "o3"}'), 0, []),
  }
  for name, (proc, status, fragments) in runs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, (name, stderr[-3000:])
    assert 'Traceback' not in stderr, (name, stderr[-3000:])
    for fragment in fragments:
      assert fragment in stderr.strip().splitlines()[-1], (name, fragment, stderr[-3000:])
    if name == 'teacher':
      lines = [l for l in stderr.splitlines() if 'Parameters: ' in l]
      assert len(lines) == 1 and 'teacher parameters' in lines[0], stderr[-3000:]
      assert os.path.join(run_dir, 'best') in lines[0] and ': step ' in lines[0], lines
  assert os.listdir(inputs) == ['a.png']
