"""Multi-process training: 2 processes x 2 CPU devices against 1 process x 4 devices.

`main.py` runs as 2 cooperating processes on 127.0.0.1 (`jax.distributed` with gloo collectives
on CPU), supervised `:test` config, global batch 4: each process reads 2 patches of each batch,
all 4 devices hold one. The parameters equal those of the single process with 4 devices up to
float32 rounding: the data and the per-device computation are the same, but the cross-process
all-reduce (gloo) sums the devices' gradients in another order than the in-process one, which
moves the last bits (measured: at most ~2e-8 after 3 steps); hence the 1e-6 tolerance. The two
processes resume from the checkpoint they wrote, and so does one process (one process resuming
its own checkpoint exactly is tests/test_train.py::test_resume_matches_uninterrupted_run).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import portpicker

from configs import crnet
from crnet_jax import checkpointing
from crnet_jax import input_pipeline
from crnet_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3  # checkpoints at 2 and 3 (checkpoint_every_steps=2 in :test)


def make_config(data_dir, steps):
  config = crnet.get_config('test')
  config.data.data_dir = data_dir
  config.num_train_steps = steps
  return config


def start_two_processes(workdir, data_dir, cache, steps, logs):
  """Starts main.py as 2 processes x 2 devices; returns a function that waits for them."""
  port = portpicker.pick_unused_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_COMPILATION_CACHE_DIR': cache, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  procs, files = [], []
  for i in range(2):
    files.append(open(os.path.join(logs, f'{os.path.basename(workdir)}_{steps}_{i}.log'), 'w+'))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'main.py'), '--config=configs/crnet.py:test',
         f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
         f'--config.num_train_steps={steps}', f'--coordinator_address=127.0.0.1:{port}',
         '--num_processes=2', f'--process_id={i}'],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=files[-1]))

  def wait(timeout=300):
    """Their stderr texts, once both ended (each must succeed)."""
    try:
      for p in procs:
        p.wait(timeout=timeout)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    texts = []
    for f in files:
      f.seek(0)
      texts.append(f.read())
      f.close()
    for p, text in zip(procs, texts):
      assert p.returncode == 0, text[-4000:]
    return texts

  return wait


def params_of(workdir, step=None):
  variables, restored_step = checkpointing.restore_variables(workdir, 'latest', step)
  return variables['params'], restored_step


def assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == 'train']


def test_two_processes_equal_one_process_and_resume_each_other(tmp_path):
  data_dir, cache = str(tmp_path / 'tfds'), str(tmp_path / 'jax_cache')
  input_pipeline.dataset_summary(make_config(data_dir, STEPS))  # builds the data once
  # 2 x 2 in subprocesses, stopped after the checkpoint of step 2 (later resumed to step 3),
  # while this process (1 x 4) makes the reference.
  multi = str(tmp_path / 'two_processes')
  wait = start_two_processes(multi, data_dir, cache, 2, str(tmp_path))
  reference = str(tmp_path / 'one_process')
  train.train_and_evaluate(make_config(data_dir, STEPS), reference)
  logs = wait()
  assert 'JAX process 1 of 2; 2 local devices of 4' in logs[1]
  assert 'Process 1 of 2 reads its shard: 2 of the 4 labeled patches' in logs[1]
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['2']
  assert_close(params_of(multi)[0], params_of(reference, 2)[0])
  crossed = str(tmp_path / 'crossed')
  shutil.copytree(multi, crossed)

  wait = start_two_processes(multi, data_dir, cache, STEPS, str(tmp_path))
  # Meanwhile, one process resumes from the checkpoint the two wrote (any topology restores).
  train.train_and_evaluate(make_config(data_dir, STEPS), crossed)
  assert_close(params_of(crossed)[0], params_of(reference)[0])
  logs = wait()
  for text in logs:
    assert 'Resumed from the checkpoint of step 2' in text
  params, step = params_of(multi)
  assert step == STEPS
  assert_close(params, params_of(reference)[0])
  # Process 0 alone wrote the logs: each step once, the same losses.
  records, expected = train_records(multi), train_records(reference)
  assert [r['step'] for r in records] == [1, 2, 3]
  np.testing.assert_allclose([r['loss'] for r in records], [r['loss'] for r in expected],
                             rtol=1e-5)
  assert len(os.listdir(os.path.join(multi, 'tensorboard'))) == 2  # one writer per run
