r"""The label-efficiency study on LOL v1: every arm of `configs/lol.py` over several seeds.

  # plan: the runs, and the time they should take from a measured step time (a short probe per
  # method, unless a run already measured it); nothing is trained.
  python experiments/lol/lol_study.py plan --lol_dir lol_half --size cpu --arms few,full \
      --seeds 0,1,2
  # run: trains what is missing (resumable: a rerun continues every unfinished run from its last
  # checkpoint), --parallel runs side by side, new runs start only within --budget_minutes.
  python experiments/lol/lol_study.py run --lol_dir lol_half --size cpu --arms few,full \
      --seeds 0,1,2
  # report: the table (mean +- std over seeds, paired differences, the share of the few -> full
  # gap that MCMT closes), per run and per arm, at the last step; the PSNR-vs-step curves.
  python experiments/lol/lol_study.py report --work runs/lol_cpu --out docs/lol_cpu

A seed sets `config.seed` and `config.data.seed`: the initialisation, the label split and the data
order. Every arm of one seed has the same labeled pairs and the same number of steps. `mcmt_real`
needs `--real_dirs` (folders of real dark photos, e.g. DICM and LIME), passed to the run as
`data.unlabeled_dirs`. Each run's workdir is `<work>/<arm>-s<seed>`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from experiments.study import report as study_report  # noqa: E402  (the line chart)
from experiments.study import shared as study_shared  # noqa: E402  (metrics.jsonl readers)
from configs import lol as lol_configs  # noqa: E402

COLORS = {'few': (200, 60, 40), 'full': (40, 40, 40), 'mcmt': (30, 90, 200),
          'mcmt-': (110, 160, 230), 'mcmt_real': (40, 150, 70)}


def _log(msg: str) -> None:
  print(f'[{datetime.datetime.now():%H:%M:%S}] {msg}', flush=True)


def _csv(value: str) -> list[str]:
  return [v.strip() for v in value.split(',') if v.strip()]


def run_name(arm: str, seed: int) -> str:
  return f'{arm}-s{seed}'


def _config_arg(arm: str, size: str) -> str:
  return f'configs/lol.py:{arm},{size}' if size else f'configs/lol.py:{arm}'


def total_steps(arm: str, size: str) -> int:
  return int(lol_configs.get_config(f'{arm},{size}' if size else arm).num_train_steps)


def train_command(arm: str, seed: int, args, workdir: str, steps: int | None = None) -> list[str]:
  cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={_config_arg(arm, args.size)}',
         f'--workdir={workdir}', f'--config.seed={seed}', f'--config.data.seed={seed}',
         f'--config.data.lol_dir={os.path.abspath(args.lol_dir)}']
  if args.data_dir:
    cmd.append(f'--config.data.data_dir={os.path.abspath(args.data_dir)}')
  if arm == 'mcmt_real':
    if not args.real_dirs:
      raise SystemExit('error: --real_dirs: the arm mcmt_real needs folders of real dark photos')
    dirs = tuple(os.path.abspath(d) for d in _csv(args.real_dirs))
    cmd.append(f'--config.data.unlabeled_dirs={dirs!r}')
  if steps is not None:
    cmd += [f'--config.num_train_steps={steps}', '--config.eval_every_epochs=0']
  return cmd


def _records(workdir: str) -> list[dict[str, Any]]:
  return study_shared.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))


def finished(workdir: str, steps: int) -> bool:
  return _last_test(workdir, steps) is not None


def measured_rate(workdir: str) -> float | None:
  """Median steps/s of the run's logged training intervals (None before two are logged)."""
  rates = [r['steps_per_second'] for r in _records(workdir)
           if r.get('split') == 'train' and 'steps_per_second' in r][1:]
  return float(np.median(rates)) if rates else None


def _method(arm: str) -> str:
  return lol_configs.ARMS[arm][0]


def cmd_plan(args) -> dict[str, Any]:
  """Prints the runs and their predicted time (from measured step times); returns the plan."""
  arms, seeds = _csv(args.arms), [int(s) for s in _csv(args.seeds)]
  work = os.path.abspath(args.work)
  rates: dict[str, float] = {}
  for arm in arms:
    for seed in seeds:
      rate = measured_rate(os.path.join(work, run_name(arm, seed)))
      if rate and _method(arm) not in rates:
        rates[_method(arm)] = rate
  for method in sorted({_method(a) for a in arms} - set(rates)):
    arm = next(a for a in arms if _method(a) == method)
    probe = os.path.join(work, f'.probe-{arm}')
    if not measured_rate(probe) and args.probe_steps > 0:
      _log(f'measuring the step time of {method} ({args.probe_steps} steps of {arm}) ...')
      done = subprocess.run(train_command(arm, seeds[0], args, probe, args.probe_steps),
                            capture_output=True, text=True)
      if done.returncode:
        tail = (done.stderr.strip().splitlines() or ['(no output)'])[-1]
        raise SystemExit(f'error: the probe run of {arm} failed: {tail}')
    rates[method] = measured_rate(probe) or 0.0
  runs, core_seconds = [], 0.0
  for seed in seeds:  # seed-major: the first seed of every arm finishes first
    for arm in arms:
      workdir = os.path.join(work, run_name(arm, seed))
      steps = total_steps(arm, args.size)
      done = max([int(r['step']) for r in _records(workdir)] + [0])
      left = 0 if finished(workdir, steps) else steps - done
      seconds = left / rates[_method(arm)] if rates[_method(arm)] else 0.0
      core_seconds += seconds
      runs.append({'run': run_name(arm, seed), 'arm': arm, 'seed': seed, 'steps': steps,
                   'steps_left': left, 'predicted_s': round(seconds)})
  # Side by side, runs share the cores: `--parallel` runs do not finish `parallel` times sooner
  # on 2 cores. The rate was measured alone; the prediction assumes the same total throughput.
  plan = {'runs': runs, 'steps_per_second': rates, 'predicted_minutes': round(core_seconds / 60, 1),
          'size': args.size, 'work': work}
  for r in runs:
    _log(f"  {r['run']:>14}: {r['steps_left']:>5} of {r['steps']} steps left"
         + (f", ~{r['predicted_s'] / 60:.1f} min" if rates[_method(r['arm'])] else ''))
  unmeasured = sorted(m for m, r in rates.items() if not r)
  if unmeasured:
    _log(f'no step time measured for {unmeasured} (--probe_steps 0): no prediction')
  else:
    _log(f'measured steps/s {rates}; predicted {plan["predicted_minutes"]} min in all '
         f'(evaluations included in the measured rate)')
  return plan


def cmd_run(args) -> dict[str, Any]:
  """Trains every unfinished run; new runs start only while the budget lasts."""
  plan = cmd_plan(args)
  deadline = time.time() + 60 * args.budget_minutes if args.budget_minutes else None
  work = plan['work']
  todo = [r for r in plan['runs'] if r['steps_left'] > 0]
  procs: dict[str, subprocess.Popen] = {}

  def one(r: dict[str, Any]) -> tuple[str, int]:
    if deadline is not None and time.time() > deadline:
      return r['run'], -1
    workdir = os.path.join(work, r['run'])
    os.makedirs(workdir, exist_ok=True)
    _log(f"{r['run']}: training ({r['steps_left']} steps left)")
    with open(os.path.join(workdir, 'train.log'), 'a') as log:
      p = subprocess.Popen(train_command(r['arm'], r['seed'], args, workdir), stdout=log,
                           stderr=subprocess.STDOUT)
      procs[r['run']] = p
      while p.poll() is None:
        if deadline is not None and time.time() > deadline + 60 * args.grace_minutes:
          p.send_signal(signal.SIGTERM)  # the run saves a checkpoint and stops; rerun continues
          p.wait()
        time.sleep(2)
    _log(f"{r['run']}: exit {p.returncode}")
    return r['run'], p.returncode

  with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
    results = dict(pool.map(one, todo))
  failed = {k: v for k, v in results.items() if v not in (0, -1)}
  _log(f'done: {sum(v == 0 for v in results.values())} finished, {len(failed)} failed '
       f'{failed or ""}, {sum(v == -1 for v in results.values())} not started (budget)')
  return results


def _last_test(workdir: str, steps: int,
               curve: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
  """The evaluation of the run's last step (`steps`), or None before it; `curve`: the run's
  `study_shared.eval_curve`, when the caller has it."""
  if curve is None:
    curve = study_shared.eval_curve(workdir)
  return next((r for r in curve if int(r['step']) == steps), None)


def _mean_std(values: Sequence[float], digits: int = 2) -> str:
  if not values:
    return '-'
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f'{np.mean(values):.{digits}f} +- {std:.{digits}f}'


def collect(work: str) -> dict[str, dict[int, dict[str, Any]]]:
  """arm -> seed -> {'last': test record at the run's last step, 'curve': [test records]}."""
  out: dict[str, dict[int, dict[str, Any]]] = {}
  for name in sorted(os.listdir(work)):
    arm, _, seed = name.rpartition('-s')
    if arm not in lol_configs.ARMS or not seed.isdigit():
      continue
    workdir = os.path.join(work, name)
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.exists(config_path):
      continue
    with open(config_path) as f:
      steps = int(json.load(f)['num_train_steps'])
    records = _records(workdir)  # read once: the curve and the training loss
    curve = study_shared.eval_curve(workdir, records)
    out.setdefault(arm, {})[int(seed)] = {'last': _last_test(workdir, steps, curve),
                                          'curve': curve, 'steps': steps,
                                          'train_loss': _train_loss(records)}
  return out


def _train_loss(records: list[dict[str, Any]], logs: int = 5) -> float | None:
  """The enhancement loss (1 - SSIM on the labeled patches) over a run's last `logs` logs."""
  values = [r['enhancement'] for r in records
            if r.get('split') == 'train' and 'enhancement' in r][-logs:]
  return float(np.mean(values)) if values else None


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
  """Per arm: mean/std of the last-step metrics; paired differences against `few`."""
  arms: dict[str, Any] = {}
  for arm, seeds in runs.items():
    done = {s: v['last'] for s, v in seeds.items() if v['last']}
    entry = {'seeds': sorted(done), 'unfinished': sorted(set(seeds) - set(done))}
    fits = [seeds[s]['train_loss'] for s in done if seeds[s].get('train_loss') is not None]
    if fits:  # how well each arm fits its own labels: far below `full`'s when it memorises
      entry['train_enhancement'] = float(np.mean(fits))
    for who in ('student', 'teacher'):
      for m in ('psnr', 'ssim'):
        vals = [r[f'{who}_{m}'] for r in done.values() if f'{who}_{m}' in r]
        if vals:
          entry[f'{who}_{m}'] = {'mean': float(np.mean(vals)),
                                 'std': float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                 'per_seed': {s: done[s][f'{who}_{m}'] for s in sorted(done)}}
    arms[arm] = entry
  few = arms.get('few', {}).get('student_psnr', {}).get('per_seed', {})
  full = arms.get('full', {}).get('student_psnr', {}).get('per_seed', {})
  gaps = {s: full[s] - few[s] for s in few if s in full}
  for arm, entry in arms.items():
    for who in ('student', 'teacher'):
      mine = entry.get(f'{who}_psnr', {}).get('per_seed', {})
      diffs = {s: mine[s] - few[s] for s in mine if s in few}
      if diffs and arm != 'few':
        entry[f'{who}_minus_few'] = diffs
        shares = [diffs[s] / gaps[s] for s in diffs if s in gaps and abs(gaps[s]) > 1e-9]
        if shares and arm != 'full':
          entry[f'{who}_gap_share'] = float(np.mean(shares))
  return {'arms': arms, 'full_minus_few': gaps,
          'full_minus_few_mean': float(np.mean(list(gaps.values()))) if gaps else None}


def cmd_report(args) -> dict[str, Any]:
  """Writes `<out>.md`, `<out>.json` and `<out>_curves.png` from the runs in `args.work`."""
  work = os.path.abspath(args.work)
  runs = collect(work)
  summary = summarize(runs)
  lines = ['| arm | seeds | student PSNR | student SSIM | teacher PSNR | teacher SSIM | '
           'student - few (dB, per seed) | share of the few -> full gap | '
           'teacher - few (dB, per seed) | teacher share |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for arm in [a for a in lol_configs.ARMS if a in summary['arms']]:
    e = summary['arms'][arm]

    def ms(key, entry=e):
      v = entry.get(key)
      digits = 4 if key.endswith('ssim') else 2
      return _mean_std(list(v['per_seed'].values()), digits) if v else '-'

    diffs = e.get('student_minus_few')
    share = e.get('student_gap_share')
    t_diffs, t_share = e.get('teacher_minus_few'), e.get('teacher_gap_share')
    lines.append(
        f"| {arm} | {','.join(map(str, e['seeds']))}"
        f"{' (+' + ','.join(map(str, e['unfinished'])) + ' unfinished)' if e['unfinished'] else ''}"
        f" | {ms('student_psnr')} | {ms('student_ssim')} | {ms('teacher_psnr')} | "
        f"{ms('teacher_ssim')} | "
        f"{', '.join(f'{d:+.2f}' for d in diffs.values()) if diffs else '-'} | "
        f"{f'{100 * share:.0f}%' if share is not None else '-'} | "
        f"{', '.join(f'{d:+.2f}' for d in t_diffs.values()) if t_diffs else '-'} | "
        f"{f'{100 * t_share:.0f}%' if t_share is not None else '-'} |")
  fit_lines = ['| arm | training loss 1 - SSIM (labeled patches, last 5 logs) | '
               'eval15 1 - SSIM (student) |', '| --- | --- | --- |']
  for arm in [a for a in lol_configs.ARMS if a in summary['arms']]:
    e = summary['arms'][arm]
    if 'train_enhancement' in e and 'student_ssim' in e:
      fit_lines.append(f"| {arm} | {e['train_enhancement']:.4f} | "
                       f"{1 - e['student_ssim']['mean']:.4f} |")
  gap = summary['full_minus_few_mean']
  lines += [''] + fit_lines
  text = '\n'.join(lines) + '\n\n' + (
      f"full - few (student PSNR, paired by seed): "
      f"{', '.join(f's{s}: {g:+.2f}' for s, g in summary['full_minus_few'].items())}; mean "
      f"{gap:+.2f} dB\n" if gap is not None else '')
  series = []
  for arm in [a for a in lol_configs.ARMS if a in runs]:
    for seed, v in sorted(runs[arm].items()):
      for who, dashed in (('student', False), ('teacher', True)):
        pts = [(r['step'], r[f'{who}_psnr']) for r in v['curve'] if f'{who}_psnr' in r]
        if pts:
          series.append({'label': f'{arm} s{seed}{" teacher" if dashed else ""}',
                         'color': COLORS[arm], 'dashed': dashed, 'points': pts})
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  study_report.plot_curves(series, out + '_curves.png', args.title)
  with open(out + '.md', 'w') as f:
    f.write(text)
  with open(out + '.json', 'w') as f:
    json.dump({'summary': summary, 'work': os.path.relpath(work, REPO)}, f, indent=1)
  print(text)
  return summary


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='verb', required=True)
  for verb, fn in (('plan', cmd_plan), ('run', cmd_run)):
    p = sub.add_parser(verb)
    p.add_argument('--lol_dir', required=True, help='LOL v1 folder (or a pack of it)')
    p.add_argument('--size', default='cpu', help="configs/lol.py size ('' = the paper's)")
    p.add_argument('--arms', default='few,full,mcmt,mcmt-')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--work', default=os.path.join(REPO, 'runs', 'lol_cpu'))
    p.add_argument('--real_dirs', default='', help='comma-separated folders (mcmt_real)')
    p.add_argument('--data_dir', default='', help="TFDS cache (default: the config's)")
    p.add_argument('--probe_steps', type=int, default=200,
                   help='steps of the probe run that measures a step time (0: no prediction)')
    if verb == 'run':
      p.add_argument('--parallel', type=int, default=2)
      p.add_argument('--budget_minutes', type=float, default=150)
      p.add_argument('--grace_minutes', type=float, default=15,
                     help='after the budget, running runs get this long, then stop and save')
    p.set_defaults(fn=fn)
  p = sub.add_parser('report')
  p.add_argument('--work', default=os.path.join(REPO, 'runs', 'lol_cpu'))
  p.add_argument('--out', default=os.path.join(REPO, 'docs', 'lol_cpu'))
  p.add_argument('--title', default='LOL v1 (half resolution), CPU-scale CRNet: eval15 PSNR')
  p.set_defaults(fn=cmd_report)
  return parser


def main(argv: Sequence[str] | None = None) -> Any:
  args = build_parser().parse_args(argv)
  return args.fn(args)


if __name__ == '__main__':
  main()
