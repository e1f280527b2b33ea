"""LOL v1 runs end to end at a tiny size: the arms, the pack, the GPU command, the study's table.

A miniature LOL layout (our485 / eval15, small generated photos) is written in tmp_path; nothing
outside the repository is read.
"""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from experiments.lol import lol
from experiments.lol import lol_study
from configs import lol as lol_configs
from crnet_jax import input_pipeline
from crnet_jax import release

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 40, 48


def _photo(rng):
  y, x = np.mgrid[0:H, 0:W] / max(H, W)
  base = np.stack([0.5 + 0.4 * np.sin(3 * x + rng.uniform(0, 6)),
                   0.5 + 0.4 * np.cos(4 * y + rng.uniform(0, 6)),
                   0.5 + 0.3 * np.sin(2 * (x + y) + rng.uniform(0, 6))], -1)
  return np.clip(base + 0.03 * rng.standard_normal((H, W, 3)), 0, 1)


@pytest.fixture(scope='module')
def lol_dir(tmp_path_factory):
  """10 train pairs and 2 test pairs in LOL v1's layout; low = 0.15 * high ** 1.3."""
  root = str(tmp_path_factory.mktemp('LOL'))
  rng = np.random.default_rng(0)
  for split, names in (('our485', [str(i) for i in range(1, 11)]), ('eval15', ['90', '91'])):
    for name in names:
      high = _photo(rng)
      for kind, image in (('high', high), ('low', 0.15 * high ** 1.3)):
        os.makedirs(os.path.join(root, split, kind), exist_ok=True)
        Image.fromarray((image * 255).round().astype(np.uint8)).save(
            os.path.join(root, split, kind, name + '.png'))
  return root


def test_arms_share_labels_and_steps():
  """Every arm of a size: its method and loss; one label fraction for the 10% arms; equal steps."""
  for size in ('', 'cpu', 'test'):
    configs = {arm: lol_configs.get_config(f'{arm},{size}' if size else arm)
               for arm in lol_configs.ARMS}
    assert {a: c.method for a, c in configs.items()} == {
        'few': 'supervised', 'full': 'supervised', 'mcmt': 'mcmt', 'mcmt-': 'mcmt',
        'mcmt_real': 'mcmt'}
    assert configs['mcmt-'].loss.gamma == 0.0 and configs['mcmt'].loss.gamma == 1.0
    assert configs['full'].data.label_fraction == 1.0
    assert {c.data.label_fraction for a, c in configs.items() if a != 'full'} == {0.1}
    assert all(c.data.dataset == 'lol' for c in configs.values())
    if size:
      assert len({c.num_train_steps for c in configs.values()}) == 1
    else:  # the paper's schedule in epochs: 49 * 30 // 16 and 485 * 3 // 16 steps per epoch
      few, full = configs['few'].data, configs['full'].data
      assert (49 * few.patches_per_image // few.batch_size,
              485 * full.patches_per_image // full.batch_size) == (91, 90)
  with pytest.raises(ValueError, match='name one arm'):
    lol_configs.get_config('test')


def test_pack_then_train_few_then_release(lol_dir, tmp_path):
  """The GPU command at a tiny size: pack -> lol_gpu.sh (train, evaluate, release) -> load."""
  pack = str(tmp_path / 'pack')
  manifest = lol.main(['pack', '--lol_dir', lol_dir, '--out', pack, '--label_fraction', '0.3',
                       '--data_dir', str(tmp_path / 'tfds')])
  # The pack holds the pairs that the seeded split of the whole folder labels, and eval15.
  config = lol_configs.get_config('few,test')
  config.data.update(lol_dir=lol_dir, label_fraction=0.3, data_dir=str(tmp_path / 'tfds'))
  labeled, _, n = input_pipeline._train_data_counts(config)  # pylint: disable=protected-access
  assert n == 10 and len(labeled) == len(manifest['labeled']) == 3
  assert sorted(os.listdir(os.path.join(pack, 'our485', 'high'))) == sorted(
      f'{k}.png' for k in manifest['labeled'])
  assert sorted(os.listdir(os.path.join(pack, 'eval15', 'low'))) == ['90.png', '91.png']
  with pytest.raises(SystemExit, match='not empty'):  # a pack never overwrites a folder
    lol.main(['pack', '--lol_dir', lol_dir, '--out', pack])

  out = str(tmp_path / 'out')
  env = {**os.environ, 'LOL_CONFIG_ARG': 'few,test', 'JAX_PLATFORMS': 'cpu',
         'PATH': os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH']}
  subprocess.run(['bash', os.path.join(REPO, 'experiments', 'lol', 'lol_gpu.sh'), pack, out,
                  '--config.num_train_steps=4'], check=True, env=env, timeout=300,
                 capture_output=True)
  summary = json.load(open(os.path.join(out, 'summary.json')))
  assert summary['last']['step'] == 4 and summary['steps'] == 4
  assert np.isfinite(summary['last']['student_psnr'])
  model, params, model_config, info = release.load_release(os.path.join(out, 'release'))
  assert info['step'] == 4 and info['eval']['student_psnr'] == summary['last']['student_psnr']
  assert model_config.features == 4
  # float16 on disk, float32 in memory, within float16's rounding of the trained parameters.
  from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  trained, _ = checkpointing.restore_variables(os.path.join(out, 'run'), 'latest')
  for a, b in zip(jax_leaves(params), jax_leaves(trained['params'])):
    assert a.dtype == np.float32
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  x = np.random.default_rng(1).random((1, 16, 24, 3), np.float32)
  assert model.apply({'params': params}, x)[0].shape == x.shape


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(v) for v in jax.tree.leaves(tree)]


def test_release_refuses_damage_and_mismatch(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from crnet_jax import models  # pylint: disable=g-import-not-at-top
  from crnet_jax.image_io import DataError  # pylint: disable=g-import-not-at-top
  model_config = lol_configs.get_config('few,test').model
  params = models.init_params(models.create_model(model_config), jax.random.PRNGKey(0))
  folder = release.save_release(str(tmp_path / 'r'), params, model_config, {'step': 1})
  with pytest.raises(FileExistsError):
    release.save_release(folder, params, model_config, {})
  with pytest.raises(ValueError, match='float16 range'):
    big = jax.tree.map(lambda p: p * 0 + 1e6, params)
    release.save_release(str(tmp_path / 'big'), big, model_config, {})
  other = ml_collections.ConfigDict(model_config.to_dict())
  other.features = 8
  meta = json.load(open(os.path.join(folder, release.MODEL_FILE)))
  meta['model'] = other.to_dict()
  json.dump(meta, open(os.path.join(folder, release.MODEL_FILE), 'w'))
  with pytest.raises(DataError, match='params.npz: .* has shape'):
    release.load_release(folder)
  with open(os.path.join(folder, release.PARAMS_FILE), 'wb') as f:
    f.write(b'PK\x03\x04 truncated')
  with pytest.raises(DataError, match='cannot read the parameters'):
    release.load_release(folder)


def _write_run(work, arm, seed, psnrs, teacher=False, steps=30):
  workdir = os.path.join(work, f'{arm}-s{seed}')
  os.makedirs(workdir)
  json.dump({'num_train_steps': steps}, open(os.path.join(workdir, 'config.json'), 'w'))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for i, p in enumerate(psnrs):
      # Training logs: 1 - SSIM falling to p / 1000 (the report averages the last 5 logs).
      for j in range(3):
        f.write(json.dumps({'step': 10 * i + 3 * j + 1, 'split': 'train',
                            'enhancement': p / 1000 + 0.01 * (2 - j)}) + '\n')
      r = {'step': 10 * (i + 1), 'split': 'test', 'student_psnr': p, 'student_ssim': p / 100}
      if teacher:
        r.update(teacher_psnr=p + 0.5, teacher_ssim=p / 100)
      f.write(json.dumps(r) + '\n')


def test_study_report_means_pairs_and_gap_share(tmp_path):
  """The report reads the last step (not the best), pairs seeds, and measures the gap closed."""
  work = str(tmp_path / 'work')
  _write_run(work, 'few', 0, [15.0, 19.0, 18.0])   # best 19 at step 20: not reported
  _write_run(work, 'few', 1, [15.0, 16.0, 17.0])
  _write_run(work, 'full', 0, [16.0, 19.0, 20.0])
  _write_run(work, 'full', 1, [16.0, 18.0, 20.0])
  _write_run(work, 'mcmt', 0, [15.0, 18.0, 19.0], teacher=True)
  _write_run(work, 'mcmt', 1, [15.0, 17.0, 18.5], teacher=True)
  _write_run(work, 'mcmt-', 0, [15.0, 16.0], steps=30)  # unfinished: no record at step 30
  summary = lol_study.main(['report', '--work', work, '--out', str(tmp_path / 'rep')])
  arms = summary['arms']
  assert arms['few']['student_psnr']['per_seed'] == {0: 18.0, 1: 17.0}
  assert summary['full_minus_few'] == {0: 2.0, 1: 3.0}
  assert arms['mcmt']['student_minus_few'] == {0: 1.0, 1: 1.5}
  assert arms['mcmt']['student_gap_share'] == pytest.approx((1.0 / 2.0 + 1.5 / 3.0) / 2)
  assert arms['mcmt']['teacher_minus_few'] == {0: 1.5, 1: 2.0}
  assert arms['mcmt']['student_psnr']['std'] == pytest.approx(np.std([19.0, 18.5], ddof=1))
  assert arms['mcmt-']['seeds'] == [] and arms['mcmt-']['unfinished'] == [0]
  text = open(str(tmp_path / 'rep.md')).read()
  assert '| mcmt | 0,1 | 18.75 +- 0.35 |' in text and '+1.00, +1.50' in text
  # How well each arm fits its labels: the last 5 training logs, then the mean over seeds.
  few0 = np.mean([0.019 + 0.01, 0.019, 0.018 + 0.02, 0.018 + 0.01, 0.018])
  few1 = np.mean([0.016 + 0.01, 0.016, 0.017 + 0.02, 0.017 + 0.01, 0.017])
  assert arms['few']['train_enhancement'] == pytest.approx((few0 + few1) / 2)
  assert f"| few | {(few0 + few1) / 2:.4f} | {1 - 0.175:.4f} |" in text
  assert Image.open(str(tmp_path / 'rep_curves.png')).size[0] > 500


def test_study_run_trains_each_seed_once(lol_dir, tmp_path):
  """`run` at the tiny size: a seed of the MCMT arm trains to its last step, student and teacher
  evaluated, with that seed's config; a rerun trains nothing. (`few` is trained above.)"""
  work = str(tmp_path / 'work')
  common = ['--lol_dir', lol_dir, '--size', 'test', '--arms', 'mcmt', '--seeds', '1',
            '--work', work, '--data_dir', str(tmp_path / 'tfds'), '--probe_steps', '0']
  assert lol_study.main(['run', *common]) == {'mcmt-s1': 0}
  last = lol_study.collect(work)['mcmt'][1]['last']
  assert last is not None and last['step'] == 3 and np.isfinite(last['teacher_psnr'])
  # A seed sets config.seed and config.data.seed (the init, the label split, the data order).
  config = json.load(open(os.path.join(work, 'mcmt-s1', 'config.json')))
  assert config['seed'] == config['data']['seed'] == 1
  assert lol_study.main(['run', *common]) == {}
  # The energy probe with the paper's summed energy reproduces the run's last evaluation.
  from experiments.lol import energy_probe  # pylint: disable=g-import-not-at-top
  records = energy_probe.main(['--workdir', os.path.join(work, 'mcmt-s1'),
                               '--pairs', os.path.join(lol_dir, 'eval15'), '--pixels', '0,64'])
  assert [r['reference_pixels'] for r in records] == ['sum', 64]
  assert records[0]['step'] == 3 and records[0]['images'] == 2
  assert records[0]['psnr'] == pytest.approx(last['student_psnr'], abs=2e-3)


def test_enhance_with_a_release_and_without_a_model(lol_dir, tmp_path):
  """A release folder works as --workdir; with no --workdir and no shipped model, one line."""
  import jax  # pylint: disable=g-import-not-at-top
  from crnet_jax import models  # pylint: disable=g-import-not-at-top
  model_config = lol_configs.get_config('few,test').model
  params = models.init_params(models.create_model(model_config), jax.random.PRNGKey(0))
  folder = release.save_release(str(tmp_path / 'models' / 'crnet_lol10'), params, model_config,
                                {'trained_on': 'nothing', 'step': 7})
  assert release.shipped_model(str(tmp_path / 'models')) == folder
  assert release.shipped_model(str(tmp_path / 'none')) is None
  out = tmp_path / 'out'
  low = os.path.join(lol_dir, 'eval15', 'low', '90.png')
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  done = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=enhance',
                         f'--workdir={folder}', f'--input={low}', f'--output={out}'],
                        env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert os.listdir(out) == ['90.png']
  assert 'released model (nothing; step 7)' in done.stderr
  if release.shipped_model() is None:
    done = subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), '--mode=enhance',
                           f'--input={low}', f'--output={tmp_path / "out2"}'],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith('error: --mode=enhance needs --workdir')
