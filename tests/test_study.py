"""The label-efficiency study (configs/study.py, experiments/study/) end to end at CPU scale.

A tiny copy of the sources layout (docs/data.md) is generated in tmp_path (never the real data):
a few small photos for BSDS500 (with its id lists), SunHays80 and Urban100_sub20, the LOL 778
pair and two more LOL lows, DICM and LIME photos. Then pack -> prepare -> run (two runs, `cpu` size,
in-process) -> evaluate -> report, checking what each step writes.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from experiments.study import main as study
from experiments.study import report
from experiments.study import run as study_run
from experiments.study import shared
from configs import study as study_config
from crnet_jax import image_io
from crnet_jax.datasets import degrade
from crnet_jax.datasets import synthetic_pairs


def _photo(rng, h, w):
  """A smooth colour photo (gradients + blobs) with a little texture, uint8."""
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([0.5 + 0.4 * np.sin(3 * x + rng.uniform(0, 6)),
                   0.5 + 0.4 * np.cos(4 * y + rng.uniform(0, 6)),
                   0.5 + 0.3 * np.sin(2 * (x + y) + rng.uniform(0, 6))], -1)
  return (np.clip(base + 0.05 * rng.standard_normal((h, w, 3)), 0, 1) * 255).astype(np.uint8)


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, **kwargs)


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """A miniature copy of the sources layout: 10 train photos, 2 test photos, LOL, DICM, LIME."""
  root = str(tmp_path_factory.mktemp('sources'))
  rng = np.random.default_rng(0)
  train_ids = ['100', '101', '102', '103', '104', '105', '106']  # train, test and val
  test_ids = ['201', '202']  # in val, like CBSD68
  os.makedirs(os.path.join(root, 'BSDS500', 'splits'))
  with open(os.path.join(root, 'BSDS500', 'splits', 'CBSD432_ids.txt'), 'w') as f:
    f.write('\n'.join(train_ids) + '\n')
  with open(os.path.join(root, 'BSDS500', 'splits', 'CBSD68_ids.txt'), 'w') as f:
    f.write('\n'.join(test_ids) + '\n')
  for i, image_id in enumerate(train_ids + test_ids):
    split = 'val' if image_id in test_ids or i == 6 else ('train' if i < 3 else 'test')
    _save(os.path.join(root, 'BSDS500', split, image_id + '.jpg'), _photo(rng, 40, 48),
          quality=95)
  for image_id in test_ids:  # CBSD68's PNGs: the decoded JPEGs
    _save(os.path.join(root, 'CBSD68', 'test', image_id + '.png'), image_io.load_image_uint8(
        os.path.join(root, 'BSDS500', 'val', image_id + '.jpg')))
  _save(os.path.join(root, 'SunHays80', 'train', 'abbey_sun.jpg'), _photo(rng, 44, 40))
  for k in (1, 2):  # wider than max_side: downscaled by prepare (and by pack)
    _save(os.path.join(root, 'Urban100_sub20', 'train', f'img_00{k}.png'), _photo(rng, 60, 90))
  with open(os.path.join(root, 'Urban100_sub20', 'train', 'MANIFEST.tsv'), 'w') as f:
    f.write('not an image\n')
  lol = os.path.join(root, 'LOL', 'eval15')
  high778 = _photo(rng, 40, 56)
  _save(os.path.join(lol, 'high', '778.png'), high778)
  _save(os.path.join(lol, 'low', '778.png'), image_io.to_uint8(degrade.degrade(high778, 1)))
  for name in ('1', '22'):
    _save(os.path.join(lol, 'low', name + '.png'),
          image_io.to_uint8(degrade.degrade(_photo(rng, 40, 56), 2)))
  for name in ('01', '02'):
    _save(os.path.join(root, 'DICM', 'test', name + '.jpg'), (_photo(rng, 48, 36) // 6))
  _save(os.path.join(root, 'LIME', 'test', '1.bmp'), _photo(rng, 36, 44) // 5)
  return root


def test_configs_define_every_run_with_equal_budgets():
  for run in study_config.RUNS:
    for size in ('',) + study_config.SIZES:
      config = study_config.get_config(f'{run},{size}' if size else run)
      assert config.seed == config.data.seed == study_config.SEED
      assert config.data.dataset == 'paired_folders'
      assert config.run_name == run
  # An epoch is the same number of steps at 10% and 100% labels (the 532 study photos).
  for lf in (0.1, 1.0):
    labeled = 53 if lf < 1 else 532
    assert labeled * study_config.patches_per_image(lf) // 16 == 99
    assert labeled * study_config.patches_per_image(lf, base=10) // 8 == 66  # the `small` size
  full = study_config.get_config('crnet100')
  assert full.model.dtype == 'bfloat16' and full.data.patch_size == 128
  assert full.num_epochs == 100 and full.data.label_fraction == 1.0
  assert study_config.get_config('mcmt10-').loss.gamma == 0.0
  assert study_config.get_config('rn').model.masked_conv is False
  real = study_config.get_config('mcmt10_real')
  real.lock()
  real.study_dir = '/data/study'  # every path follows study_dir (as --config.study_dir does)
  assert real.data.low_dir == '/data/study/train/low'
  assert real.data.unlabeled_dirs.split(',') == [
      '/data/study/real_dark/dicm', '/data/study/real_dark/lime', '/data/study/real_dark/lol_low']
  assert not study_config.get_config('mcmt10').data.unlabeled_dirs
  with pytest.raises(ValueError, match='name a run'):
    study_config.get_config('cpu')
  with pytest.raises(ValueError, match='unknown token'):
    study_config.get_config('mcmt11')


def test_plot_functions(tmp_path):
  curves = str(tmp_path / 'c.png')
  report.plot_curves([{'label': 'a', 'color': (255, 0, 0), 'dashed': False,
                       'points': [(0, 10.0), (5, 12.5)]},
                      {'label': 'b', 'color': (0, 0, 255), 'dashed': True,
                       'points': [(5, 11.0)]}], curves, 'title')
  assert Image.open(curves).size == (1100, 620)


def test_crossing_step_and_gap():
  def curve(values, key='student_psnr'):
    return [{'step': 100 * (i + 1), key: v} for i, v in enumerate(values)]

  # mcmt10 falls behind, then passes crnet10 at step 300 and stays above.
  assert report.crossing_step(curve([5, 7, 9, 10]), curve([6, 8, 8, 9])) == 300
  assert report.crossing_step(curve([6, 8, 8, 9]), curve([5, 7, 9, 10])) is None
  assert report.crossing_step(curve([9, 7, 9]), curve([8, 8, 8])) == 300
  assert report.crossing_step(curve([8, 8.001]), curve([8, 8])) is None  # a tie is not a win
  runs = {name: {'curve': curve(c), 'evaluation': {'models': {'student': {'cbsd68': {'psnr': p}}}}}
          for name, c, p in (('crnet10', [6, 8], 20.0), ('crnet100', [7, 9], 24.0),
                             ('mcmt10', [5, 9], 23.0))}
  (line,) = report.reading_aids(runs)
  assert '+3.00 dB vs crnet10, 75% of the crnet10 -> crnet100 gap' in line
  assert 'from step 200 on' in line
  runs['crnet100']['evaluation']['models']['student']['cbsd68']['psnr'] = 19.0  # below crnet10
  line, note = report.reading_aids(runs)
  assert 'gap' not in line and 'no 10% -> 100% gap to close' in note


def test_study_end_to_end(sources, tmp_path):
  pack = str(tmp_path / 'pack')
  sizes = study.main(['pack', '--sources', sources, '--pack', pack, '--max_side', '64'])
  assert set(sizes) == {'BSDS500', 'SunHays80', 'Urban100_sub20', 'LOL', 'DICM', 'LIME'}
  assert Image.open(os.path.join(pack, 'Urban100_sub20', 'train', 'img_001.png')).size == (64, 43)
  assert os.path.isfile(os.path.join(pack, 'LIME', 'test', '1.png'))  # BMP -> PNG

  study_dir = str(tmp_path / 'study_data')
  manifest = study.main(['prepare', '--sources', sources, '--study_dir', study_dir,
                         '--max_side', '64'])
  assert manifest['counts'] == {'train': 10, 'cbsd68': 2, 'dicm': 2, 'lime': 1, 'lol_low': 2}
  assert manifest['cbsd68_check'].endswith('max abs diff 0')
  assert sorted(os.listdir(os.path.join(study_dir, 'real_dark', 'lol_low'))) == ['1.png',
                                                                                 '22.png']
  # The pairs are what the synthetic_pairs dataset makes of the photo (same seed and name).
  photo = synthetic_pairs.resize_max_side(image_io.load_image_uint8(
      os.path.join(sources, 'Urban100_sub20', 'train', 'img_002.png')), 64)
  low = image_io.to_uint8(degrade.degrade(photo, degrade.image_seed(0, 'urban_img_002')))
  np.testing.assert_array_equal(image_io.load_image_uint8(
      os.path.join(study_dir, 'train', 'low', 'urban_img_002.png')), low)
  # From the pack, the same study data.
  from_pack = str(tmp_path / 'from_pack')
  study.main(['prepare', '--sources', pack, '--study_dir', from_pack, '--max_side', '64'])
  for sub in ('train/low', 'train/high', 'cbsd68/low'):
    for name in os.listdir(os.path.join(study_dir, sub)):
      np.testing.assert_array_equal(
          image_io.load_image_uint8(os.path.join(study_dir, sub, name)),
          image_io.load_image_uint8(os.path.join(from_pack, sub, name)))
  with pytest.raises(SystemExit, match='other settings'):
    study.main(['prepare', '--sources', sources, '--study_dir', study_dir, '--seed', '1'])

  work = str(tmp_path / 'runs')
  common = ['--study_dir', study_dir, '--work', work, '--size', 'cpu']
  info = study.main(['run', '--runs', 'crnet10,mcmt10', '--in_process', *common])
  assert {r: p['total_steps'] for r, p in info.items()} == {'crnet10': 4, 'mcmt10': 4}
  assert info['mcmt10']['labeled'] == 1 and info['mcmt10']['unlabeled'] == 9
  for run in ('crnet10', 'mcmt10'):
    assert shared.latest_step(os.path.join(work, run)) == 4
    (call,) = shared.read_jsonl(os.path.join(work, run, 'study_log.jsonl'))
    assert call['from_step'] == 0 and call['to_step'] == 4
  assert [r['step'] for r in shared.eval_curve(os.path.join(work, 'mcmt10'))] == [2, 4]
  # Rerunning finds both runs finished and trains nothing.
  study.main(['run', '--runs', 'crnet10,mcmt10', '--in_process', *common])
  assert len(shared.read_jsonl(os.path.join(work, 'mcmt10', 'study_log.jsonl'))) == 1

  results = study.main(['evaluate', *common, '--grid_lol', '2', '--grid_dicm', '1',
                        '--grid_side', '48'])
  assert set(results) == {'crnet10', 'mcmt10'}
  assert set(results['crnet10']['models']) == {'student'}
  assert set(results['mcmt10']['models']) == {'student', 'teacher'}
  lol = results['mcmt10']['models']['teacher']['lol778']
  assert lol['num_images'] == 1 and np.isfinite(lol['psnr'])
  assert results['mcmt10']['models']['student']['cbsd68']['num_images'] == 2

  out = tmp_path / 'report'
  payload = study.main(['report', *common, '--grid_lol', '2', '--grid_dicm', '1',
                        '--grid_side', '48', '--title', 'CPU test',
                        '--table', str(out / 'results.md'), '--json', str(out / 'study.json'),
                        '--curves', str(out / 'curves.png'), '--grid', str(out / 'grid.png')])
  table = (out / 'results.md').read_text()
  for run in ('crnet10', 'mcmt10'):
    assert f'| {run} | 10% |' in table
  assert 'curves.png' in table and 'grid.png' in table
  data = json.loads((out / 'study.json').read_text())
  assert set(data['runs']) == {'crnet10', 'mcmt10'} == set(payload['runs'])
  assert data['runs']['mcmt10']['curve'][-1]['step'] == 4
  assert 'teacher_psnr' in data['runs']['mcmt10']['curve'][-1]
  assert data['data']['counts']['train'] == 10
  grid = Image.open(out / 'grid.png')
  # 3 rows (LOL 778, LOL 1, DICM 01); 4 columns: input, crnet10, mcmt10, mcmt10 teacher.
  assert grid.size[0] == 4 * 170 + 3 * 3
  assert Image.open(out / 'curves.png').size == (1100, 620)

  # Bundles restore a run elsewhere (to move it between machines).
  parts = study.main(['bundle', *common, '--out', str(tmp_path / 'bundle')])
  assert {os.path.basename(p) for p in parts} == {'crnet10.tgz.part00', 'mcmt10.tgz.part00'}
  restored = study.main(['unbundle', '--work', str(tmp_path / 'elsewhere'),
                         '--src', str(tmp_path / 'bundle')])
  assert restored == ['crnet10', 'mcmt10']
  assert shared.latest_step(str(tmp_path / 'elsewhere' / 'mcmt10')) == 4
  assert os.path.isfile(tmp_path / 'elsewhere' / 'mcmt10' / 'study_eval' / 'grid' / 'teacher'
                        / 'dicm_01.png')
  assert study.main(['unbundle', '--work', str(tmp_path / 'elsewhere'),
                     '--src', str(tmp_path / 'bundle')]) == []  # not newer: kept


def test_train_command_ends_at_the_call_target():
  cmd = study_run.train_command('mcmt10', 'cpu', '/w/mcmt10', '/s', 188,
                                [('num_train_steps', '300'), ('model.remat', 'lmrg')])
  assert cmd[:2] == ['main.py', '--config=configs/study.py:mcmt10,cpu']
  assert '--config.model.remat=lmrg' in cmd and '--config.study_dir=/s' in cmd
  assert [a for a in cmd if 'num_train_steps' in a] == ['--config.num_train_steps=188']
