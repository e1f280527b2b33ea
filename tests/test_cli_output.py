"""What `main.py` prints: one line per fact, no library chatter, and the files a run leaves.

One tiny MCMT run of `main.py` in a subprocess (test_main.py checks what enhance prints).
"""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHATTER = ("Unable to initialize backend", 'Load dataset info', 'Downloading and preparing',
           'Subsequent calls will reuse', 'CheckpointManagerOptions', 'Given directory is read only',
           'orbax-checkpoint version', '+------')


def main_py(*args):
  env = {**os.environ, 'CRNET_JAX_CACHE_DIR': '', 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(workdir, train process) of a configs/mcmt.py:test run (enhancing with it: test_main.py)."""
  tmp = tmp_path_factory.mktemp('cli')
  workdir = str(tmp / 'run')
  train = main_py('--config=configs/mcmt.py:test', f'--workdir={workdir}',
                  f'--config.data.data_dir={tmp / "tfds"}', '--config.num_eval_images=2')
  assert train.returncode == 0, train.stderr[-3000:]
  return workdir, train


def test_one_line_per_fact_and_no_library_chatter(trained):
  workdir, train = trained
  text = train.stdout + train.stderr
  for chatter in CHATTER:
    assert chatter not in text, (chatter, text[-3000:])
  lines = train.stderr.splitlines()
  for fact in ('JAX process 0 of 1', 'Dataset: ', 'Model: CRNet, 5,142 parameters'):
    assert sum(fact in line for line in lines) == 1, (fact, train.stderr[-3000:])
  assert len(lines) < 25, train.stderr
  with open(os.path.join(workdir, 'parameters.txt')) as f:
    table = f.read()
  assert table.splitlines()[-1] == 'Total: 5,142 parameters, 20,568 bytes'
  assert 'lmrg_0' in table


def test_samples_on_disk_and_the_summary(trained):
  workdir, train = trained
  assert os.listdir(os.path.join(workdir, 'samples')) == ['step_3.png']
  grid = np.asarray(Image.open(os.path.join(workdir, 'samples', 'step_3.png')).convert('RGB'))
  cell, gap, header = 192, 4, 18  # inference.sample_grid's layout
  assert grid.shape[1] == 4 * cell + 3 * gap  # low | student | teacher | high
  # Column headers: text (white pixels) in each of the 4 columns' title bars.
  bar = grid[:header]
  for i in range(4):
    assert (bar[:, i * (cell + gap):i * (cell + gap) + cell] > 128).any(), i
  # Rows: separated by all-white lines of `gap` pixels, one before each row.
  white = np.flatnonzero((grid[header:] == 255).all(axis=(1, 2)))
  starts = [i for i in white if i - 1 not in white]
  assert len(starts) == 2, starts
  text = train.stderr
  for fragment in ('Last evaluation (step 3): student PSNR ', '; teacher PSNR ',
                   "Best evaluation (step 3, by the student's PSNR)",
                   f'Checkpoints: best {workdir}/best/3, latest {workdir}/checkpoints/3.',
                   f'{workdir}/samples/step_<N>.png', 'pip install tensorboard',
                   f'python main.py --mode=enhance --workdir={workdir} --input='):
    assert fragment in text, (fragment, text[-3000:])


def test_help_lists_the_config_arguments_and_mode_config_prints_the_config(tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  from configs import crnet, lol, mcmt, study  # pylint: disable=g-import-not-at-top
  text = main_py('--help').stdout
  configs = text[text.index('Configs:'):]
  for name in (*crnet.ROWS, *crnet.SIZES, *mcmt.ROWS, *lol.ARMS, *lol.SIZES, *study.RUNS,
               *study.SIZES):
    assert re.search(rf'(?<![\w+-]){re.escape(name)}(?![\w+-])', configs), (name, configs)
  assert '--mode=config' in configs
  workdir = tmp_path / 'run'
  result = main_py('--mode=config', '--config=configs/mcmt.py:test',
                   '--config.data.batch_size=8', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  config = json.loads(result.stdout)
  assert config['method'] == 'mcmt' and config['data']['batch_size'] == 8
  assert config['model']['features'] == 4  # the `test` size
  assert not workdir.exists()


def test_library_filter_keeps_ours_and_warnings():
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from crnet_jax import logs  # pylint: disable=g-import-not-at-top

  def record(path, level, msg='note'):
    return logging.LogRecord('x', level, path, 1, msg, None, None)

  library = os.path.join(os.sep, 'venv', 'site-packages', 'orbax', 'checkpoint_manager.py')
  keep = logs.LibraryFilter().filter
  assert keep(record(os.path.join(REPO, 'crnet_jax', 'train.py'), logging.INFO))
  assert not keep(record(library, logging.INFO))
  assert keep(record(library, logging.WARNING, 'disk almost full'))
  assert not keep(record(library, logging.WARNING, 'Given directory is read only=/run/best'))
  assert keep(record(library, logging.ERROR))
  # A library's error keeps its line but not its traceback (orbax's background save failing
  # when the workdir is deleted during training); ours keep theirs.
  try:
    raise ValueError('No ArrayMetadata found')
  except ValueError:
    import sys  # pylint: disable=g-import-not-at-top
    info = sys.exc_info()
  theirs, mine = record(library, logging.ERROR), record(os.path.join(REPO, 'main.py'),
                                                        logging.ERROR)
  theirs.exc_info = mine.exc_info = info
  assert keep(theirs) and theirs.exc_info is None
  assert keep(mine) and mine.exc_info is info
  logger = absl_logging.get_absl_logger()
  try:
    logs.quiet_libraries(0)
    assert logs._FILTER in logger.filters  # pylint: disable=protected-access
    logs.quiet_libraries(1)
    assert logs._FILTER not in logger.filters  # pylint: disable=protected-access
  finally:
    logs.quiet_libraries(0)
