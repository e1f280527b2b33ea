"""main.py's evaluate (and enhance, export) in this process, on a tiny released model; the bar.

- evaluate keeps the enhanced images, records the model and the data in metrics.json, and draws a
  contact sheet with one captioned row per pair;
- `--skip_unpaired` scores the pairs only; without it the unpaired files are one error line;
- data problems are reported (all at once) before the checkpoint is read;
- `--output=x.png` with one input file writes x.png;
- `progress.Bar`: a few plain lines ending at 100% when stderr is not a terminal, one line
  redrawn in place when it is, nothing for a single item.
"""

import functools
import io
import json
import os
import zlib

from absl.testing import flagsaver
import jax
import numpy as np
from PIL import Image
import pytest

from configs import default
from crnet_jax import export
from crnet_jax import image_io
from crnet_jax import inference
from crnet_jax import losses
from crnet_jax import models
from crnet_jax import progress
from crnet_jax import release
import main

SIZE = (20, 28)  # (H, W) of every test image
ROW = inference.CAPTION_SIZE + 2 * 5 + round(SIZE[0] * inference.SHEET_CELL / SIZE[1])


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """A released tiny CRNet (one LMRG of one block, 4 features), as `--workdir`."""
  config = default.get_model_config()
  config.update(features=4, num_groups=1, recurrences=1, num_blocks=1)
  model = models.create_model(config)
  params = jax.jit(functools.partial(models.init_params, model))(jax.random.key(0))
  folder = str(tmp_path_factory.mktemp('release') / 'tiny')
  release.save_release(folder, params, config, {'step': 7, 'parameters': 'teacher',
                                                'checkpoint': 'best', 'trained_on': 'nothing'})
  return folder


def write_pairs(root, low_names, high_names, size=SIZE):
  for folder, names, scale in (('low', low_names, 0.2), ('high', high_names, 1.0)):
    os.makedirs(root / folder, exist_ok=True)
    for name in names:
      rng = np.random.default_rng(zlib.crc32(name.encode()))
      Image.fromarray((rng.random(size + (3,)) * 255 * scale).astype(np.uint8)).save(
          root / folder / name)
  return str(root / 'low'), str(root / 'high')


def run_main(**flags):
  """main.main with these flags; the `error: ...` line of a failure, else None."""
  with flagsaver.flagsaver(**flags):
    try:
      main.main(['main.py'])
    except SystemExit as e:
      assert isinstance(e.code, str), e.code
      return e.code
  return None


def evaluate(workdir, low, high, output, **flags):
  return run_main(mode='evaluate', workdir=workdir, low_dir=low, high_dir=high,
                  output=str(output), **flags)


def test_evaluate_keeps_the_images_records_the_run_and_draws_one_row_per_pair(model_dir,
                                                                             tmp_path):
  low, high = write_pairs(tmp_path, ['a.png', 'b.png', 'c.png'], ['a.png', 'b.png', 'c.png'])
  one_low, one_high = write_pairs(tmp_path / 'one', ['a.png'], ['a.png'])
  assert evaluate(model_dir, low, high, tmp_path / 'eval') is None
  assert evaluate(model_dir, one_low, one_high, tmp_path / 'eval1') is None

  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  model, params, config = export.load_model(model_dir)
  assert metrics['model']['path'] == model_dir
  assert metrics['model']['kind'] == 'released model'
  assert (metrics['model']['step'], metrics['model']['params']) == (7, 'teacher')
  assert metrics['model']['config'] == config.to_dict()
  assert metrics['data'] == {'low_dir': low, 'high_dir': high, 'skip_unpaired': False}
  assert metrics['scored'] == ['a.png', 'b.png', 'c.png'] and metrics['skipped'] == []
  assert metrics['num_images'] == 3 and metrics['written_by'] == image_io.OUTPUT_MARK
  for key in ('psnr', 'ssim', 'input_psnr', 'input_ssim'):
    assert metrics['mean'][key] == pytest.approx(np.mean([r[key] for r in metrics['images']]))

  # The enhanced images: the model's output, marked as ours; their scores are the recorded ones
  # (up to the rounding to 8 bits).
  enhancer = inference.Enhancer(model, params)
  assert sorted(os.listdir(tmp_path / 'eval' / 'enhanced')) == ['a.png', 'b.png', 'c.png']
  for record in metrics['images']:
    path = tmp_path / 'eval' / record['enhanced']
    assert image_io.is_own_output(path)
    saved = image_io.load_image(path)
    want = enhancer(image_io.load_image(os.path.join(low, record['low'])))
    diff = image_io.to_uint8(saved).astype(int) - image_io.to_uint8(want)
    assert np.abs(diff).max() <= 1
    truth = image_io.load_image(os.path.join(high, record['high']))
    assert float(losses.psnr(saved, truth)) == pytest.approx(record['psnr'], abs=0.05)
    assert float(losses.psnr(want, truth)) == pytest.approx(record['psnr'], abs=1e-4)

  # The contact sheet: one row (caption bar, images, gap) per pair, at a fixed width.
  sheet = np.asarray(Image.open(tmp_path / 'eval' / 'contact_sheet.png').convert('RGB'))
  single = np.asarray(Image.open(tmp_path / 'eval1' / 'contact_sheet.png').convert('RGB'))
  assert sheet.shape[1] == single.shape[1] == 3 * inference.SHEET_CELL + 2 * inference.SHEET_GAP
  assert sheet.shape[0] - single.shape[0] == 2 * (ROW + inference.SHEET_GAP)
  # The captions' text is CAPTION_SIZE (16) pixels high: light pixels on 14 lines or more of
  # each dark bar (Pillow's default font, 10.5 pixels, gives 10).
  dark = [(row == 32).all(axis=-1).mean() > 0.5 for row in sheet]
  starts = [y for y in range(1, len(dark)) if dark[y] and not dark[y - 1]] + [0]
  assert len(starts) == 4  # the title, then a caption per row
  for y in starts:
    text = [(sheet[y + i].min(axis=-1) > 200).any() for i in range(inference.CAPTION_SIZE + 10)]
    assert sum(text) >= 14, (y, sum(text))


def test_skip_unpaired_scores_the_pairs_only(model_dir, tmp_path):
  low, high = write_pairs(tmp_path, ['a.png', 'b.png', 'c.png'], ['a.png', 'b.jpg', 'd.png'])
  error = evaluate(model_dir, low, high, tmp_path / 'eval')
  assert error is not None and '\n' not in error, error
  assert error.startswith('error: 2 file(s) without a partner') and '--skip_unpaired' in error
  assert f'{low}/c.png: no ground truth named c.* in {high}' in error
  assert f'{high}/d.png: no low image named d.* in {low}' in error
  assert not (tmp_path / 'eval').exists()

  assert evaluate(model_dir, low, high, tmp_path / 'eval', skip_unpaired=True) is None
  metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert metrics['scored'] == ['a.png', 'b.png']
  assert [r['high'] for r in metrics['images']] == ['a.png', 'b.jpg']
  assert [s['file'] for s in metrics['skipped']] == [f'{low}/c.png', f'{high}/d.png']
  assert metrics['data']['skip_unpaired'] is True
  assert sorted(os.listdir(tmp_path / 'eval' / 'enhanced')) == ['a.png', 'b.png']


def test_data_problems_come_before_the_checkpoint(model_dir, tmp_path):
  no_run = str(tmp_path / 'no_run')  # no checkpoint there: named only once the data are good
  low, high = write_pairs(tmp_path, ['a.png', 'b.png'], ['a.png', 'b.png', 'c.png'])
  (tmp_path / 'low' / 'a.png').write_text('not an image')
  (tmp_path / 'empty').mkdir()
  cases = {  # (low, high) -> what the error line holds, every problem in it
      (str(tmp_path / 'nowhere'), str(tmp_path / 'gone')): [
          f'{tmp_path}/nowhere: low folder not found', f'{tmp_path}/gone: ground-truth folder'],
      (str(tmp_path / 'empty'), high): [f'{tmp_path}/empty: low folder is empty'],
      (low, high): ['2 problems with the evaluation data', f'{low}/a.png: not an image file',
                    f'{high}/c.png: no low image named c.*'],
  }
  for (lows, highs), fragments in cases.items():
    error = evaluate(no_run, lows, highs, tmp_path / 'eval')
    assert error is not None and '\n' not in error, error
    for fragment in fragments:
      assert fragment in error, (fragment, error)
    assert 'no_run' not in error and 'checkpoint' not in error, error
  # With --skip_unpaired only the unreadable image is left: still a data error, first.
  error = evaluate(no_run, low, high, tmp_path / 'eval', skip_unpaired=True)
  assert 'a.png: not an image file' in error and 'c.png' not in error, error
  # Good data: now the checkpoint is read, and its absence is the error.
  os.remove(tmp_path / 'low' / 'a.png')
  write_pairs(tmp_path, ['a.png'], [])
  error = evaluate(no_run, low, high, tmp_path / 'eval', skip_unpaired=True)
  assert error == f'error: {no_run}: checkpoint directory not found', error
  assert not (tmp_path / 'eval').exists()


def test_one_file_to_a_named_output_and_the_bars_of_enhance_and_export(model_dir, tmp_path,
                                                                       capsys):
  low, _ = write_pairs(tmp_path, ['a.png', 'b.png', 'c.png'], [])
  assert run_main(mode='enhance', workdir=model_dir, input=f'{low}/a.png',
                  output=str(tmp_path / 'x.png')) is None
  assert sorted(os.listdir(tmp_path)) == ['high', 'low', 'x.png']
  assert image_io.is_own_output(tmp_path / 'x.png')
  assert 'enhance ' not in capsys.readouterr().err  # one image: no bar

  assert run_main(mode='enhance', workdir=model_dir, input=low,
                  output=str(tmp_path / 'out')) is None
  np.testing.assert_array_equal(image_io.load_image(tmp_path / 'x.png'),
                                image_io.load_image(tmp_path / 'out' / 'a.png'))
  bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith('enhance ')]
  assert len(bar) == 3 and bar[-1].startswith('enhance  3/3 [####################] 100% in ')
  assert 'ETA' in bar[0], bar

  assert run_main(mode='export', workdir=model_dir, output=str(tmp_path / 'exp')) is None
  bar = [line for line in capsys.readouterr().err.splitlines() if line.startswith('export ')]
  assert len(bar) == 3 and bar[-1].startswith('export  3/3 ') and '100%' in bar[-1], bar
  # The export remembers where its parameters come from; evaluate records it.
  write_pairs(tmp_path, ['a.png'], ['a.png'])
  assert evaluate(str(tmp_path / 'exp'), low, str(tmp_path / 'high'), tmp_path / 'eval',
                  skip_unpaired=True) is None
  model = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())['model']
  assert (model['kind'], model['step'], model['params']) == ('exported model', 7, 'teacher')
  assert model['exported_from']['path'] == model_dir


class Clock:
  """A fake clock: the first item takes 11 s (it compiles), every other one 1 s."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now

  def tick(self):
    self.now += 11.0 if self.now == 0 else 1.0


class Terminal(io.StringIO):

  def isatty(self):
    return True


def run_bar(stream, total, **kwargs):
  clock = Clock()
  bar = progress.Bar('enhance', total, stream=stream, clock=clock, **kwargs)
  for _ in range(total):
    clock.tick()
    bar.update()
  bar.close()
  return stream.getvalue()


def test_bar_lines_in_a_log_and_on_a_terminal():
  lines = run_bar(io.StringIO(), 40).splitlines()
  # A few plain lines, at each quarter, the last at 100%; the ETA leaves out the first item.
  assert lines == [
      'enhance  10/40 [#####...............]  25% ETA 30s',
      'enhance  20/40 [##########..........]  50% ETA 20s',
      'enhance  30/40 [###############.....]  75% ETA 10s',
      'enhance  40/40 [####################] 100% in 50s']
  # On a terminal: one line, redrawn in place, then a newline.
  text = run_bar(Terminal(), 5)
  assert text.count('\r') == 5 and text.count('\n') == 1 and text.endswith('100% in 15s\n')
  assert text.split('\r')[1] == 'enhance  1/5 [####................]  20% ETA 44s'
  # Nothing for a single item or when disabled; a slow terminal is redrawn at most every interval.
  assert run_bar(io.StringIO(), 1) == run_bar(Terminal(), 1) == ''
  assert run_bar(io.StringIO(), 40, enabled=False) == ''
  assert run_bar(Terminal(), 40, interval=5.0).count('\r') == 9  # at 11 s, every 5 s, 50 s
  # `track` closes the bar (and the terminal's line) when the loop stops early.
  stream = Terminal()
  for i in progress.track(range(10), 'evaluate', stream=stream, interval=0):
    if i == 3:
      break
  assert stream.getvalue().endswith('\n') and '3/10' in stream.getvalue()
  assert [progress.format_duration(s) for s in (41.4, 125, 3723)] == ['41s', '2m05s', '1h02m03s']
