"""`run`: trains the study's runs one after another, resumable, within a time budget."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

from experiments.study import shared


def device_description() -> str:
  """The accelerator jax sees, from a short child process (the parent keeps off the GPU)."""
  code = ('import jax; d = jax.devices(); '
          'print(f"{len(d)} x {d[0].platform} {d[0].device_kind}")')
  try:
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1]
  except (subprocess.SubprocessError, IndexError) as e:
    return f'unknown ({type(e).__name__})'


def _in_process_device() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()
  return f'{len(d)} x {d[0].platform} {d[0].device_kind}'


def plan(runs: Sequence[str], size: str, study_dir: str, work: str,
         overrides: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
  """Per run: counts, steps per epoch, total steps and steps done (builds the datasets once)."""
  from crnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  out = {}
  for run in runs:
    config = shared.load_config(run, size, study_dir, overrides)
    summary = input_pipeline.dataset_summary(config)
    spe = int(summary['steps_per_epoch'])
    n = int(config.get('num_train_steps', -1))
    total = n if n > 0 else max(1, int(round(float(config.num_epochs) * spe)))
    out[run] = {'method': config.method, 'labeled': summary['labeled'],
                'unlabeled': summary['unlabeled'], 'test': summary['test'],
                'steps_per_epoch': spe, 'total_steps': total,
                'done': shared.latest_step(os.path.join(work, run))}
  for run, p in out.items():
    shared.log(f'{run:12s} {p["method"]:10s} {p["labeled"]:4d} labeled, '
               f'{p["unlabeled"]:4d} unlabeled, {p["test"]} test; {p["steps_per_epoch"]} '
               f'steps/epoch, {p["done"]}/{p["total_steps"]} steps done')
  if len({p['total_steps'] for p in out.values()}) > 1:
    shared.log('WARNING: the runs do not have the same number of steps: '
               f'{ {r: p["total_steps"] for r, p in out.items()} }')
  return out


def train_command(run: str, size: str, workdir: str, study_dir: str, target: int,
                  overrides: Sequence[tuple[str, str]] = ()) -> list[str]:
  """The main.py command line that trains `run` up to step `target` (run from the repo root)."""
  cmd = ['main.py', f'--config=configs/study.py:{shared.config_arg(run, size)}',
         f'--workdir={shared.shown_path(workdir)}',
         f'--config.study_dir={shared.shown_path(study_dir)}']
  cmd += [f'--config.{k}={v}' for k, v in overrides if k != 'num_train_steps']
  # Last, so that it wins over an override of the run's total (which `plan` has read).
  return cmd + [f'--config.num_train_steps={int(target)}']


def _train_call(run: str, args, target: int, timeout: float | None,
                overrides: Sequence[tuple[str, str]]) -> bool:
  """Trains `run` up to step `target`; True if it ended by itself (False: stopped at the
  deadline)."""
  workdir = os.path.join(os.path.abspath(args.work), run)
  if args.in_process:
    from crnet_jax import train  # pylint: disable=g-import-not-at-top
    config = shared.load_config(run, args.size, args.study_dir, overrides)
    config.num_train_steps = int(target)
    train.train_and_evaluate(config, workdir)
    return True
  cmd = [sys.executable] + train_command(run, args.size, workdir, args.study_dir, target,
                                         overrides)
  shared.log('$ ' + ' '.join(cmd))
  proc = subprocess.Popen(cmd, cwd=shared.REPO, start_new_session=True)
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    shared.log(f'{run}: the time budget is spent; stopping the training process {proc.pid}')
    os.killpg(proc.pid, signal.SIGTERM)
    try:
      proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
    return False
  if rc != 0:
    raise SystemExit(f'{run}: main.py exited with status {rc}')
  return True


def cmd_run(args) -> dict[str, dict[str, Any]]:
  """Trains the selected runs in order within the time budget (experiments/study/main.py)."""
  t_start = time.time()
  deadline = t_start + 60.0 * args.budget_minutes if args.budget_minutes else None
  runs = shared.run_list(args.runs)
  overrides = shared.parse_overrides(args.set)
  info = plan(runs, args.size, args.study_dir, args.work, overrides)
  device = _in_process_device() if args.in_process else device_description()
  shared.log(f'device: {device}')
  for run in runs:
    workdir = os.path.join(os.path.abspath(args.work), run)
    total, done = info[run]['total_steps'], shared.latest_step(workdir)
    if done >= total:
      shared.log(f'{run}: finished ({done}/{total} steps)')
      continue
    target, timeout = total, None
    if deadline is not None:
      remaining = deadline - time.time()
      if remaining < args.min_call_seconds:
        shared.log(f'{run}: {remaining:.0f} s left of the budget, under --min_call_seconds; '
                   'stopping')
        break
      timeout = remaining
      rate = shared.steps_per_second(workdir) or next(
          (shared.steps_per_second(os.path.join(os.path.abspath(args.work), r)) for r in runs
           if info[r]['method'] == info[run]['method'] and r != run
           and shared.steps_per_second(os.path.join(os.path.abspath(args.work), r))), None)
      if rate:
        # Start-up, compilation and evaluations: as the last call of this run measured, or more.
        calls = shared.read_jsonl(os.path.join(workdir, 'study_log.jsonl'))
        overhead = args.overhead_seconds
        if calls and calls[-1]['to_step'] > calls[-1]['from_step']:
          last = calls[-1]
          overhead = max(overhead, last['seconds'] - (last['to_step'] - last['from_step']) / rate)
        fit = int(0.85 * rate * (remaining - overhead))
        if fit < 1:
          shared.log(f'{run}: no step fits in the {remaining:.0f} s left; stopping')
          break
        target = min(total, done + fit)
    os.makedirs(workdir, exist_ok=True)
    shared.log(f'{run}: training steps {done + 1}..{target} of {total}'
               + (f' (deadline in {timeout:.0f} s)' if timeout else ''))
    t0 = time.time()
    finished = _train_call(run, args, target, timeout, overrides)
    record = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'seconds': round(time.time() - t0, 1), 'from_step': done,
              'to_step': shared.latest_step(workdir), 'target': target, 'total_steps': total,
              'stopped_at_deadline': not finished, 'device': device,
              'size': args.size, 'overrides': [f'{k}={v}' for k, v in overrides],
              'in_process': bool(args.in_process),
              'command': 'python ' + ' '.join(train_command(
                  run, args.size, workdir, args.study_dir, target, overrides)),
              'invocation': shared.invocation(args)}
    with open(os.path.join(workdir, 'study_log.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    shared.log(f'{run}: {record["from_step"]} -> {record["to_step"]} of {total} steps in '
               f'{record["seconds"]:.0f} s')
    info[run]['done'] = record['to_step']
    if not finished:
      break
  work = os.path.abspath(args.work)
  progress = {r: f"{shared.latest_step(os.path.join(work, r))}/{p['total_steps']}"
              for r, p in info.items()}
  shared.log(f'run: {time.time() - t_start:.0f} s; steps done {progress}')
  return info
