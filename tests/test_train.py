"""Training: end-to-end runs on 4 fake CPU devices, the mean teacher, resumption, the learning
rate schedule, padded evaluation, config errors and the non-finite loss guard.

Every run uses the `:test` configs (a ~6k-parameter CRNet, 16x16 patches, images downscaled to
64 pixels) so the compiled steps are shared between tests (`train.compiled_functions` is cached).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import crnet
from configs import mcmt
from crnet_jax import checkpointing
from crnet_jax import evaluation
from crnet_jax import input_pipeline
from crnet_jax import losses
from crnet_jax import models
from crnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def make_config(method, data_dir, **overrides):
  config = (crnet if method == 'supervised' else mcmt).get_config('test')
  config.data.data_dir = data_dir
  config.update(overrides)
  return config


def random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  p, b = config.data.patch_size, config.data.batch_size
  batch = {'low': rng.random((b, p, p, 3), np.float32) * 0.2,
           'high': rng.random((b, p, p, 3), np.float32)}
  if config.method == 'mcmt':
    batch['unlabeled'] = rng.random((config.data.unlabeled_batch_size, p, p, 3), np.float32)
  return batch


def functions_for(config, steps_per_epoch=1):
  model = models.create_model(config.model)
  hp = train.StepConfig.from_config(config, steps_per_epoch)
  return model, hp, train.compiled_functions(model, hp, train.create_mesh())


def read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def latest_data_state(workdir):
  manager = checkpointing.latest_manager(workdir, read_only=True)
  try:
    step = manager.latest_step()
    restored = manager.restore(step, args=checkpointing.ocp.args.Composite(
        data=checkpointing.ocp.args.JsonRestore()))
    return step, restored.data
  finally:
    manager.close()


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def finished_run(data_dir, tmp_path_factory):
  """method -> (workdir, result) of a whole 3-step `:test` run, made once per module."""
  runs = {}

  def get(method):
    if method not in runs:
      workdir = str(tmp_path_factory.mktemp(method) / 'workdir')
      runs[method] = workdir, train.train_and_evaluate(make_config(method, data_dir), workdir)
    return runs[method]

  return get


@pytest.mark.parametrize('method', ['supervised', 'mcmt'])
def test_end_to_end(method, finished_run):
  workdir, result = finished_run(method)
  assert result['step'] == 3
  assert result['num_images'] == 2
  names = ['input_psnr', 'input_ssim', 'student_psnr', 'student_ssim']
  if method == 'mcmt':
    names += ['teacher_psnr', 'teacher_ssim']
  for name in names:
    assert np.isfinite(result[name]), name
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '3']
  assert os.listdir(os.path.join(workdir, 'best')) == ['3']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['method'] == method
  records = read_jsonl(workdir)
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == [1, 2, 3]
  terms = {'loss', 'enhancement', 'mid_step', 'learning_rate', 'grad_norm'}
  if method == 'mcmt':
    terms |= {'consistency', 'mid_consistency', 'progressive', 'multi_consistency', 'lam',
              'ema_decay'}
  assert terms <= set(train_records[0])
  test_records = [r for r in records if r['split'] == 'test']
  assert len(test_records) == 1 and test_records[0]['student_psnr'] == result['student_psnr']
  variables, step = checkpointing.restore_variables(workdir, 'best')
  assert step == 3
  assert (variables['teacher_params'] is None) == (method == 'supervised')


# Steps and the least gain (dB of test PSNR over the input's own, the identity) a run of the
# `:test` config must reach; the compiled steps are those of the 3-step runs above (same
# hyperparameters: learning rate 5e-4, halved at epochs 20, 40, 60, 90). Measured gains over
# seeds 0-2 and data seeds 0-1: supervised, 60 steps: 3.1-6.6 dB; MCMT (1 labeled image, so 1
# step per epoch and the learning rate halved at steps 20 and 40), 40 steps: 0.38-0.48 dB for
# the student, 0.050-0.058 dB for the teacher. With learning_rate 0 (validate_config bypassed)
# every gain is -0.001 dB and this test fails.
TRAINING_GAINS = {'supervised': (60, 1.5), 'mcmt': (40, 0.2)}


@pytest.mark.parametrize('method', ['supervised', 'mcmt'])
def test_training_beats_the_identity(method, data_dir, tmp_path):
  steps, margin = TRAINING_GAINS[method]
  config = make_config(method, data_dir, num_train_steps=steps, checkpoint_every_steps=steps,
                       log_every_steps=steps)
  result = train.train_and_evaluate(config, str(tmp_path / 'workdir'))
  assert result['step'] == steps
  assert result['student_psnr'] > result['input_psnr'] + margin, result
  if method == 'mcmt':  # the teacher follows the student (EMA, decay 0.99)
    assert result['teacher_psnr'] > result['input_psnr'] + 0.02, result


def test_teacher_is_ema_of_student_and_gets_no_gradient(data_dir):
  config = make_config('mcmt', data_dir)
  model, hp, fns = functions_for(config)
  state = fns.init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(*[np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)])
                                  for p in (state.params, state.teacher_params)])
  for i in range(2):
    batch = train.global_batch(random_batch(config, i), fns.data_sharding)
    old_teacher = jax.device_get(state.teacher_params)
    old_student = jax.device_get(state.params)
    state, metrics = fns.train_step(state, batch)
    assert float(metrics['ema_decay']) == pytest.approx(0.99)
    expected = optax.incremental_update(jax.device_get(state.params), old_teacher, 1 - 0.99)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
                 jax.device_get(state.teacher_params), expected)
    # The student moved; the teacher moved by exactly 1% of the way to it.
    assert not np.allclose(jax.tree.leaves(old_student)[0],
                           jax.tree.leaves(jax.device_get(state.params))[0])

  # No gradient flows into the teacher: d loss / d teacher_params is exactly zero.
  batch = train.global_batch(random_batch(config, 5), fns.data_sharding)
  tx = train.create_optimizer(hp)

  def loss_of_teacher(teacher_params):
    s = state.replace(teacher_params=teacher_params)
    return train.mcmt_step(s, batch, model=model, tx=tx, hp=hp)[1]['loss']

  grads = jax.jit(jax.grad(loss_of_teacher))(state.teacher_params)
  for g in jax.tree.leaves(grads):
    assert not np.any(np.asarray(g))


def test_ema_warmup_and_rampup_schedules():
  hp = train.StepConfig(method='mcmt', ema_decay=0.99, ema_warmup=True, lam=2.0, rampup_steps=10)
  decays = [float(train.ema_decay(hp, jnp.asarray(s))) for s in (1, 2, 9, 1000)]
  np.testing.assert_allclose(decays, [0.5, 2 / 3, 0.9, 0.99], rtol=1e-6)
  assert float(train.ema_decay(train.StepConfig(ema_decay=0.99), jnp.asarray(1))) == (
      pytest.approx(0.99))
  lams = [float(train.consistency_weight(hp, jnp.asarray(s))) for s in (0, 5, 10, 50)]
  np.testing.assert_allclose(lams, [2 * np.exp(-5), 2 * np.exp(-5 * 0.25), 2.0, 2.0], rtol=1e-6)
  assert float(train.consistency_weight(train.StepConfig(lam=0.5), jnp.asarray(0))) == 0.5


def test_teacher_input_noise_clipped_or_not():
  config = mcmt.get_config()
  assert config.mcmt.clip_noisy_input  # the default: clipped to [0, 1]
  std = config.mcmt.noise_std
  hp = train.StepConfig.from_config(config, steps_per_epoch=10)
  assert hp.clip_noisy_input and hp.noise_std == std
  config.mcmt.clip_noisy_input = False
  assert not train.StepConfig.from_config(config, steps_per_epoch=10).clip_noisy_input
  state = train.TrainState(step=jnp.asarray(3, jnp.int32), params=None, teacher_params=None,
                           opt_state=None, rng=jax.random.PRNGKey(0))
  # Left half black (0), right half mid-grey (0.5).
  x = jnp.concatenate([jnp.zeros((2, 128, 64, 3)), jnp.full((2, 128, 64, 3), 0.5)], axis=2)
  clipped = np.asarray(train.teacher_input(state, x, std))
  unclipped = np.asarray(train.teacher_input(state, x, std, clip=False))
  black = np.asarray(x) == 0
  assert unclipped[black].min() < 0  # zero-mean noise goes below black
  assert clipped.min() >= 0 and clipped.max() <= 1
  # The same draw: clipping only cuts, and on mid-grey it changes nothing.
  np.testing.assert_array_equal(clipped, np.clip(unclipped, 0, 1))
  noise = unclipped - np.asarray(x)
  # 98,304 draws: the sample std is within 1% of noise_std (its standard error is 0.23%).
  assert np.std(noise) == pytest.approx(std, rel=0.01)
  assert abs(np.mean(noise)) < 3 * std / np.sqrt(noise.size)
  # Clipped, the black pixels get brighter on average: E[max(0, std z)] = std / sqrt(2 pi).
  assert np.mean(clipped[black]) == pytest.approx(std / np.sqrt(2 * np.pi), rel=0.03)
  assert np.asarray(train.teacher_input(state, x, 0.0)).tolist() == np.asarray(x).tolist()


def test_learning_rate_schedule_halves_at_configured_epochs(data_dir):
  config = make_config('supervised', data_dir, learning_rate=1e-3, lr_decay_epochs=(2, 4, 4.5))
  schedule = train.create_learning_rate_schedule(config, steps_per_epoch=10)
  lrs = {s: float(schedule(s)) for s in (0, 19, 20, 39, 40, 44, 45, 1000)}
  expected = {0: 1e-3, 19: 1e-3, 20: 5e-4, 39: 5e-4, 40: 2.5e-4, 44: 2.5e-4, 45: 1.25e-4,
              1000: 1.25e-4}
  for s in expected:
    assert lrs[s] == pytest.approx(expected[s], rel=1e-6), s
  # Two decays that fall on the same step both apply.
  config.lr_decay_epochs = (1, 1.04)
  assert float(train.create_learning_rate_schedule(config, 10)(10)) == pytest.approx(2.5e-4)
  # The paper's recipe: 5e-4, halved at epochs 20, 40, 60 and 90.
  paper = crnet.get_config()
  schedule = train.create_learning_rate_schedule(paper, steps_per_epoch=100)
  assert [float(schedule(e * 100)) for e in (0, 20, 40, 60, 90)] == pytest.approx(
      [5e-4, 2.5e-4, 1.25e-4, 6.25e-5, 3.125e-5])
  assert train.num_train_steps(paper, 100) == 10000


def test_resume_matches_uninterrupted_run(data_dir, finished_run, tmp_path, caplog):
  resumed = str(tmp_path / 'resumed')
  straight, _ = finished_run('mcmt')  # 3 steps without interruption
  train.train_and_evaluate(make_config('mcmt', data_dir, num_train_steps=2), resumed)
  assert latest_data_state(resumed)[0] == 2
  caplog.set_level('INFO')
  train.train_and_evaluate(make_config('mcmt', data_dir, num_train_steps=3), resumed)
  assert 'Resumed from the checkpoint of step 2' in caplog.text

  a, step_a = checkpointing.restore_variables(resumed, 'latest')
  b, step_b = checkpointing.restore_variables(straight, 'latest')
  assert step_a == step_b == 3
  assert_trees_equal(a, b)  # student and teacher, bit for bit
  # The same data order: the same iterator state, and the same loss at every step.
  assert latest_data_state(resumed) == latest_data_state(straight)
  assert latest_data_state(straight)[1]['step'] == 3
  losses_of = lambda w: {r['step']: r['loss'] for r in read_jsonl(w) if r['split'] == 'train'}
  assert losses_of(resumed) == losses_of(straight)
  assert sorted(losses_of(resumed)) == [1, 2, 3]


def test_evaluation_with_padded_batches_equals_per_image_mean(data_dir):
  config = make_config('supervised', data_dir)
  model, _, fns = functions_for(config)
  state = fns.init(jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  # Landscape images (0, 1, 3) and portrait ones (2, 4): two padded shapes, not one 48x48.
  shapes = [(32, 48), (25, 35), (48, 32), (32, 48), (41, 27)]
  source = []
  for i, (h, w) in enumerate(shapes):
    high = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    low = (high * rng.uniform(0.1, 0.5)).astype(np.uint8)
    source.append({'low': low, 'high': high, 'name': f'img{i}'.encode()})
  meta = {'names': [f'img{i}' for i in range(len(shapes))],
          'heights': [h for h, _ in shapes], 'widths': [w for _, w in shapes]}
  # 5 images in batches of 4: 3 landscape and 2 portrait ones, each batch completed by padding.
  eval_ds = input_pipeline.EvalDataset(source, meta, batch_size=4, pad_multiple=8)
  batches = list(eval_ds)
  assert len(eval_ds) == len(batches) == 2 and eval_ds.shapes == [(32, 48), (48, 32)]
  assert batches[0]['low'].shape == (4, 32, 48, 3) and batches[1]['low'].shape == (4, 48, 32, 3)
  assert list(batches[0]['valid']) == [True, True, True, False]
  assert list(batches[1]['valid']) == [True, True, False, False]
  assert [list(b['name'][b['valid']]) for b in batches] == [['img0', 'img1', 'img3'],
                                                             ['img2', 'img4']]

  results, examples = evaluation.evaluate(fns, state.params, None, eval_ds, num_images=2)

  @jax.jit
  def one_image(params, low, high):  # no padding, no mask: the image alone
    out = jnp.clip(model.apply({'params': params}, low)[0], 0, 1)
    return {'student_psnr': losses.psnr(out, high), 'student_ssim': losses.ssim(out, high),
            'input_psnr': losses.psnr(low, high), 'input_ssim': losses.ssim(low, high)}

  per_image = [jax.device_get(one_image(jax.device_get(state.params),
                                        rec['low'][None].astype(np.float32) / 255,
                                        rec['high'][None].astype(np.float32) / 255))
               for rec in source]
  assert results['num_images'] == 5
  for key in per_image[0]:
    expected = np.mean([float(p[key][0]) for p in per_image])
    assert results[key] == pytest.approx(expected, rel=1e-4, abs=1e-5), key
  assert [ex['name'] for ex in examples] == ['img0', 'img1']
  assert examples[1]['student'].shape == (25, 35, 3)


def test_validate_config_names_the_key(data_dir):
  config = make_config('supervised', data_dir)
  train.validate_config(config, num_devices=4)
  bad = [({'data.batch_size': 6}, 'data.batch_size must be a positive multiple of the number '
          'of devices (4), got 6'),
         ({'method': 'semi'}, "method must be 'supervised' or 'mcmt'"),
         ({'data.label_fraction': 0.0}, 'data.label_fraction must be in (0, 1]'),
         ({'mcmt.ema_decay': 1.0}, 'mcmt.ema_decay'),
         ({'num_train_steps': 0}, 'num_train_steps'),
         ({'model.memory': 'lstm'}, 'model.memory')]
  for overrides, message in bad:
    c = make_config('supervised', data_dir)
    for key, value in overrides.items():
      node = c
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      with node.ignore_type():
        node[leaf] = value
    with pytest.raises(ValueError) as err:
      train.validate_config(c, num_devices=4)
    assert message in str(err.value)
  c = make_config('mcmt', data_dir)
  c.data.unlabeled_batch_size = 2
  with pytest.raises(ValueError, match='data.unlabeled_batch_size must be a positive multiple'):
    train.validate_config(c, num_devices=4)


def test_mistyped_config_key_is_a_clear_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/crnet.py:test',
       '--config.data.batchsize=4', f'--workdir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode != 0
  assert 'batchsize' in proc.stderr
  assert 'batch_size' in proc.stderr  # "Did you mean ..."
  assert not os.listdir(tmp_path)


class _NaNAtBatch:
  """Wraps a train iterator; batch `index` (1-based) gets a NaN pixel in its first patch."""

  def __init__(self, iterator, index):
    self._it, self._index, self._count = iterator, index, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = dict(next(self._it))
    self._count += 1
    if self._count == self._index:
      batch['low'] = batch['low'].copy()
      batch['low'][0, 0, 0, 0] = np.nan
    return batch

  def __getattr__(self, name):
    return getattr(self._it, name)


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / 'nan')
  real = input_pipeline.create_train_iterator
  monkeypatch.setattr(input_pipeline, 'create_train_iterator',
                      lambda *a, **k: _NaNAtBatch(real(*a, **k), 3))
  config = make_config('supervised', data_dir, num_train_steps=5, checkpoint_every_steps=1,
                       log_every_steps=100)
  with pytest.raises(train.NonFiniteLossError) as err:
    train.train_and_evaluate(config, workdir)
  message = str(err.value)
  assert 'step 3' in message
  assert 'loss=nan' in message and 'enhancement=nan' in message and 'mid_step=' in message
  assert 'last checkpoint (step 2)' in message

  variables, step = checkpointing.restore_variables(workdir, 'latest')
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables['params']))
  # The run resumes from that checkpoint (without the NaN batch it would go on to the end).
  monkeypatch.setattr(input_pipeline, 'create_train_iterator', real)
  assert train.train_and_evaluate(config, workdir)['step'] == 5


def test_resuming_with_another_method_is_a_clear_error(data_dir, finished_run, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(finished_run('mcmt')[0], workdir)
  with pytest.raises(ValueError, match='does not match this config'):
    train.train_and_evaluate(make_config('supervised', data_dir), workdir)


def test_config_arguments():
  full = crnet.get_config()
  assert (full.method, full.data.label_fraction, full.loss.beta) == ('supervised', 1.0, 1.0)
  assert full.model.masked_conv and full.model.layer_attention
  rows = {'rn': (False, False, 0.0), 'mrn': (True, False, 0.0), 'mrn+': (True, False, 1.0),
          'crnet-': (True, True, 0.0), 'crnet': (True, True, 1.0)}
  for row, (masked, attention, beta) in rows.items():
    c = crnet.get_config(f'demo,{row}')
    assert (c.model.masked_conv, c.model.layer_attention, c.loss.beta) == (
        masked, attention, beta), row
    assert c.model.features == 8  # the demo size applies too
  assert crnet.get_config('crnet10').data.label_fraction == 0.1
  assert crnet.get_config('crnet10').method == 'supervised'
  ours = mcmt.get_config()
  assert (ours.method, ours.data.label_fraction, ours.loss.gamma) == ('mcmt', 0.1, 1.0)
  assert mcmt.get_config('ours-,demo').loss.gamma == 0.0
  assert mcmt.get_config('test').num_train_steps == 3
  for bad in ('foo', 'rn,mrn', 'demo,test'):
    with pytest.raises(ValueError, match='config argument'):
      crnet.get_config(bad)
  with pytest.raises(ValueError, match='unknown token'):
    mcmt.get_config('crnet')


def test_eta_counts_evaluations_apart_and_does_not_jump():
  # 100 steps of 0.1 s, a log every 10, an evaluation of 30 s every 20 steps (the first one
  # compiles: 40 s), a save of 2 s every 50; the first interval compiles for 20 s.
  progress = train.Progress(0, 100, 0.0, lambda step: train.evaluation_steps(step, 100, 20, 100))
  t, finishes, rates = 0.0, {}, []
  for step in range(10, 101, 10):
    t += 1.0 + (20.0 if step == 10 else 0.0)
    rate, left = progress.log(step, t)
    rates.append(rate)
    finishes[step] = t + left
    for busy, evaluation, every in ((40.0 if step == 20 else 30.0, True, 20), (2.0, False, 50)):
      if step % every == 0:
        progress.busy(busy, evaluation=evaluation)
        t += busy
  assert all(abs(r - 10.0) < 1e-6 for r in rates[1:]), rates  # train steps only
  for step in range(50, 101, 10):  # once a second evaluation is measured: the true end, +- 5%
    assert abs(finishes[step] - t) < 0.05 * t, (step, finishes, t)
  assert train.evaluation_steps(95, 100, 30, 100) == 1
  assert train.evaluation_steps(1, 100, 0, 100) == 1
  assert train.evaluation_steps(21, 100, 20, 100) == 4
