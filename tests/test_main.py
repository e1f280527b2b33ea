"""main.py's enhance, evaluate and export modes on a tiny trained MCMT run."""

import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from configs import mcmt
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
  missing = main_py('--mode=enhance', f'--workdir={tmp_path / "no_run"}', f'--input={inputs}',
                    f'--output={tmp_path / "out2"}', check=False)
  assert missing.returncode != 0
  assert 'checkpoint directory not found' in missing.stderr.splitlines()[-1]
