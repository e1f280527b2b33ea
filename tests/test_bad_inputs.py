"""A corpus of bad inputs, generated here, each with its documented outcome.

The outcomes are listed in docs/reliability.md, section "Bad inputs: outcomes".

- Accepted, converted as documented (crnet_jax/image_io.py): 16-bit PNG, grayscale, palette,
  RGBA, CMYK JPEG and EXIF-rotated JPEG pairs give training batches (in this process; training
  on them is training on any batch); in the unlabeled pool of MCMT, unreadable, too small and
  too large files are skipped with one warning per kind.
- Refused before anything runs, with a `DataError` naming the file (in this process, one case
  after the other, on a workdir holding a run's checkpoints: its files must not change): truncated
  PNG and JPEG, a zero-byte file, a text file named .png, a 1x1 image and one smaller than the
  patch, a 10000x10000 image (over the pixel limit), a pair of different sizes, a file without its
  partner, an empty folder, a missing folder, a test image smaller than the SSIM window.
- Config errors: an unknown key, a value of the wrong type (main.py's flag parsing), a zero or
  negative batch size and a label fraction outside (0, 1] (`ConfigError`, naming the key).
- Through main.py (subprocesses, run side by side): one of each kind ends with exit status 1
  and a last line `error: ...` (or absl's flag error) naming the file or the key, no traceback;
  so do a missing config file, one with a syntax error (file:line), one whose get_config raises
  (file:line), an unknown config argument and a negative data.num_workers.
"""

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from configs import crnet
from configs import mcmt
from crnet_jax import checkpointing
from crnet_jax import image_io
from crnet_jax import input_pipeline
from crnet_jax import train
from crnet_jax.image_io import DataError
from crnet_jax.image_io import MissingDataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pillow warns about the 10000x10000 files before image_io refuses them (outside pytest,
# image_io silences that warning).
pytestmark = pytest.mark.filterwarnings('ignore::PIL.Image.DecompressionBombWarning')
H, W = 24, 32  # a normal image of the corpus (patches of the :test config are 16x16)


def pattern(h=H, w=W, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  image.save(path, **kwargs)
  return str(path)


def write(path, data):
  with open(path, 'wb') as f:
    f.write(data)
  return str(path)


def truncated(path, fmt):
  save(path, pattern(64, 64), format=fmt)
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])
  return str(path)


def snapshot(folder):
  """{relative path: sha1} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
  return out


def paired_config(root, low, high, *, method='supervised', test_low=None, test_high=None,
                  unlabeled=()):
  config = (mcmt if method == 'mcmt' else crnet).get_config('test')
  d = config.data
  d.dataset = 'paired_folders'
  d.low_dir, d.high_dir = str(low), str(high)
  d.test_low_dir = str(test_low or root / 'ok_test' / 'low')
  d.test_high_dir = str(test_high or root / 'ok_test' / 'high')
  d.unlabeled_dirs = tuple(str(u) for u in unlabeled)
  d.data_dir = str(root / 'tfds')
  d.label_fraction = 1.0
  config.num_train_steps = 1
  config.checkpoint_every_steps = 1
  return config


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('corpus')
  for i in range(2):  # a good test split, shared by every case
    save(root / 'ok_test' / 'high' / f't{i}.png', pattern(seed=50 + i))
    save(root / 'ok_test' / 'low' / f't{i}.png', pattern(seed=50 + i) // 4)

  # Accepted formats: each low file paired with an 8-bit RGB high of the size a viewer shows.
  ok = root / 'formats'
  gray16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 37)
  save(ok / 'low' / 'gray16.png', Image.fromarray(gray16))
  save(ok / 'low' / 'gray.png', pattern()[..., 0])
  save(ok / 'low' / 'palette.png', Image.fromarray(pattern(seed=2)).convert('P'))
  save(ok / 'low' / 'rgba.png', np.dstack([pattern(seed=3), np.full((H, W), 9, np.uint8)]))
  save(ok / 'low' / 'cmyk.jpg', Image.fromarray(pattern(seed=4)).convert('CMYK'))
  exif = Image.Exif()
  exif[0x0112] = 6  # stored W x H, shown rotated by 90 degrees: H x W becomes W x H
  save(ok / 'low' / 'rotated.jpg', pattern(seed=5), exif=exif)
  for name in ('gray16', 'gray', 'palette', 'rgba', 'cmyk'):
    save(ok / 'high' / f'{name}.png', pattern(seed=10))
  save(ok / 'high' / 'rotated.png', pattern(W, H, seed=11))  # the size after the rotation
  unl = root / 'unlabeled'  # skipped with one warning; the one good file is kept
  save(unl / 'good.png', pattern(seed=6) // 4)
  truncated(unl / 'truncated.png', 'PNG')
  (unl / 'text.png').write_text('not an image')
  save(unl / 'tiny.png', pattern(1, 1))
  save(unl / 'huge.png', Image.new('L', (10000, 10000), 7), compress_level=9)

  # Bad labeled files: one folder pair per case, otherwise good.
  cases = {}

  def case(name, low_file_writer, high_size=(H, W), partner=True):
    low, high = root / name / 'low', root / name / 'high'
    save(low / 'good.png', pattern(seed=7))
    save(high / 'good.png', pattern(seed=8))
    bad = low_file_writer(low)
    if partner:
      stem = os.path.splitext(os.path.basename(bad))[0]
      save(high / f'{stem}.png', pattern(*high_size, seed=9))
    cases[name] = (low, high, bad)

  case('truncated_png', lambda d: truncated(d / 'bad.png', 'PNG'))
  case('truncated_jpeg', lambda d: truncated(d / 'bad.jpg', 'JPEG'))
  case('zero_bytes', lambda d: write(d / 'bad.png', b''))
  case('text_as_png', lambda d: write(d / 'bad.png', b'hello, not an image'))
  case('one_pixel', lambda d: save(d / 'bad.png', pattern(1, 1)), high_size=(1, 1))
  case('smaller_than_patch', lambda d: save(d / 'bad.png', pattern(12, 40)), high_size=(12, 40))
  case('huge', lambda d: save(d / 'bad.png', Image.new('L', (10000, 10000), 7),
                              compress_level=9))
  case('size_mismatch', lambda d: save(d / 'bad.png', pattern()), high_size=(H + 2, W))
  case('no_partner', lambda d: save(d / 'bad.png', pattern()), partner=False)
  os.makedirs(root / 'empty')
  return root, cases


class _Warnings(logging.Handler):

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def existing_run(tmp_path_factory):
  """A workdir as a run leaves it: checkpoints (real orbax ones, small), metrics, config."""
  workdir = str(tmp_path_factory.mktemp('existing') / 'run')
  state = {'step': np.int32(5), 'params': {'w': np.arange(6, dtype=np.float32)}}
  latest, best = checkpointing.latest_manager(workdir), checkpointing.best_manager(workdir)
  checkpointing.save_latest(latest, 5, state, {'step': 5})
  checkpointing.save_best(best, 5, state, 20.0)
  for manager in (latest, best):
    manager.wait_until_finished()
    manager.close()
  for name in ('metrics.jsonl', 'config.json'):
    with open(os.path.join(workdir, name), 'w') as f:
      f.write('{"step": 5}\n')
  return workdir


def test_accepted_formats_are_converted_and_bad_unlabeled_files_skipped(corpus):
  root, _ = corpus
  # MCMT on the 6 pairs of accepted formats, with the pool of bad files: the data builds, the
  # good unlabeled file is used, the others are skipped with a warning.
  config = paired_config(root, root / 'formats' / 'low', root / 'formats' / 'high',
                         method='mcmt', unlabeled=[root / 'unlabeled'])
  handler = _Warnings()
  logging.getLogger('absl').addHandler(handler)
  try:
    iterator = input_pipeline.create_train_iterator(config)
    batch = next(iterator)
    iterator.close()
  finally:
    logging.getLogger('absl').removeHandler(handler)
  assert batch['low'].shape == batch['unlabeled'].shape == (4, 16, 16, 3)
  assert all(0 <= b.min() and b.max() <= 1 for b in batch.values())
  assert input_pipeline.dataset_summary(config)['labeled'] == 6
  skipped = [m for m in handler.messages if 'Skipped' in m]
  assert len(skipped) == 2  # unreadable files (when the pool is built), too small (at the start)
  for name in ('truncated.png', 'text.png', 'huge.png'):
    assert name in skipped[0]
  assert '10000x10000' in skipped[0]
  assert 'tiny.png' in skipped[1]
  # The conversions: 16-bit / 65535, gray replicated, alpha dropped, orientation applied (the
  # rotated JPEG matches its partner's size only once rotated).
  low = root / 'formats' / 'low'
  gray16 = image_io.load_image(low / 'gray16.png')
  assert gray16.shape == (H, W, 3) and gray16[..., 0].max() == pytest.approx(
      (H * W - 1) * 37 / 65535, abs=1e-6)
  assert image_io.load_image(low / 'rotated.jpg').shape == (W, H, 3)
  np.testing.assert_array_equal(image_io.load_image_uint8(low / 'rgba.png'), pattern(seed=3))


CASES = {  # name -> (exception, message fragment besides the path)
    'truncated_png': (DataError, 'corrupt or truncated'),
    'truncated_jpeg': (DataError, 'corrupt or truncated'),
    'zero_bytes': (DataError, 'not an image file'),
    'text_as_png': (DataError, 'not an image file'),
    'one_pixel': (DataError, 'smaller than data.patch_size=16'),
    'smaller_than_patch': (DataError, 'smaller than data.patch_size=16'),
    'huge': (DataError, '10000x10000 (WxH) = 100,000,000 pixels, more than the limit'),
    'size_mismatch': (DataError, 'differs from its partner'),
    'no_partner': (DataError, 'no high partner'),
}


def test_bad_data_is_refused_naming_the_file_and_touches_no_checkpoint(corpus, existing_run):
  root, cases = corpus
  # A workdir with a run in it: a mistaken rerun on bad data must leave it as it is.
  workdir = existing_run
  before = snapshot(workdir)
  assert any(p.startswith('checkpoints/5/') for p in before)

  def refused(config, exception, *fragments):
    with pytest.raises(exception) as err:
      train.train_and_evaluate(config, workdir)
    for fragment in fragments:
      assert fragment in str(err.value), (fragment, str(err.value))
    assert snapshot(workdir) == before
    return err.value

  for name, (exception, fragment) in CASES.items():
    low, high, bad = cases[name]
    refused(paired_config(root, low, high), exception, str(bad), fragment)
  refused(paired_config(root, root / 'empty', root / 'formats' / 'high'), DataError,
          f'{root / "empty"}: low folder (data.low_dir) is empty')
  err = refused(paired_config(root, root / 'missing', root / 'formats' / 'high'),
                MissingDataError, f'{root / "missing"}: low folder (data.low_dir) not found')
  assert isinstance(err, FileNotFoundError)
  low, high, bad = cases['one_pixel']  # as a test image: no SSIM window fits
  refused(paired_config(root, root / 'formats' / 'low', root / 'formats' / 'high',
                        test_low=low, test_high=high),
          DataError, str(bad), 'smaller than the 11x11 SSIM window')

  # Config values (checked before anything else).
  for key, value, fragment in [
      ('batch_size', 0, 'data.batch_size must be a positive multiple of the number of devices'),
      ('batch_size', -4, 'got -4'),
      ('label_fraction', 0.0, 'data.label_fraction must be in (0, 1], got 0.0'),
      ('label_fraction', 1.5, 'data.label_fraction must be in (0, 1], got 1.5'),
      ('patch_size', 8, 'data.patch_size must be at least the SSIM window (11)'),
      ('epoch_images', 'unlabeled', "data.epoch_images must be one of ('labeled', 'all')")]:
    config = paired_config(root, root / 'formats' / 'low', root / 'formats' / 'high')
    config.data[key] = value
    refused(config, train.ConfigError, fragment)


def main_py(*args, workdir):
  return subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'main.py'), *args, f'--workdir={workdir}'],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_main_py_exits_with_a_clear_message(corpus, tmp_path):
  root, cases = corpus
  low, high, bad = cases['truncated_jpeg']
  data = [f'--config.data.data_dir={root / "tfds"}', '--config.data.dataset=paired_folders',
          f'--config.data.low_dir={low}', f'--config.data.high_dir={high}']
  runs = {  # name -> (process, what its last line must hold)
      'bad file': (main_py('--config=configs/crnet.py:test', *data, workdir=tmp_path / 'a'),
                   ['error: ', str(bad), 'corrupt or truncated']),
      'unknown key': (main_py('--config=configs/crnet.py:test', '--config.data.batchsize=4',
                              workdir=tmp_path / 'b'),
                      ["error: bad config override on the command line: unknown config field "
                       "'batchsize'", 'Did you mean "batch_size"']),
      'wrong type': (main_py('--config=configs/crnet.py:test', '--config.data.batch_size=four',
                             workdir=tmp_path / 'c'),
                     ['error: flag --config.data.batch_size=four: invalid literal for int()']),
      'bad value': (main_py('--config=configs/mcmt.py:test', '--config.data.label_fraction=2',
                            workdir=tmp_path / 'd'),
                    ['error: data.label_fraction must be in (0, 1], got 2']),
      'no cluster': (main_py('--mode=enhance', '--distributed_auto', workdir=tmp_path / 'e'),
                     ['error: --distributed_auto: jax.distributed.initialize() found no cluster']),
  }
  broken = tmp_path / 'broken.py'
  broken.write_text('"""A config with a syntax error on line 3."""\n\ndef get_config(:\n  pass\n')
  raising = tmp_path / 'raising.py'
  raising.write_text('def get_config():\n  raise RuntimeError("no such dataset")\n')
  runs.update({
      'missing config': (main_py('--config=configs/nope.py', workdir=tmp_path / 'f'),
                         ['error: configs/nope.py: config file not found']),
      'syntax error': (main_py(f'--config={broken}', workdir=tmp_path / 'g'),
                       [f'error: {broken}:3: syntax error']),
      'raising config': (main_py(f'--config={raising}', workdir=tmp_path / 'h'),
                         [f'error: {raising}:2: get_config() failed: RuntimeError: no such']),
      'unknown argument': (main_py('--config=configs/crnet.py:tset', workdir=tmp_path / 'i'),
                           ["error: configs/crnet.py:", "get_config('tset') failed",
                            "unknown token 'tset'"]),
      'negative workers': (main_py('--config=configs/crnet.py:test',
                                   '--config.data.num_workers=-1', workdir=tmp_path / 'j'),
                           ['error: data.num_workers must be a non-negative integer']),
  })
  for name, (proc, fragments) in runs.items():
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, (name, stderr[-3000:])
    assert 'Traceback' not in stderr, (name, stderr[-3000:])
    last = stderr.strip().splitlines()[-1]
    for fragment in fragments:
      assert fragment in last, (name, fragment, last)
    assert 'bad config override' not in last or name == 'unknown key', (name, last)
  for name in 'bcdefghij':  # config errors stop before the workdir is touched
    assert not os.path.exists(tmp_path / name)


def test_traceback_only_when_asked_for(tmp_path):
  # The same mistake, with CRNET_TRACEBACK=1: Python's traceback comes with it.
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), '--config=configs/crnet.py:tset',
       f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'CRNET_TRACEBACK': '1'})
  assert result.returncode != 0
  assert 'Traceback' in result.stderr and "unknown token 'tset'" in result.stderr
