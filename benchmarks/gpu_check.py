r"""One GPU check: every speed goal of CRNet on one GPU in one unattended command (at most 8 min).

  bash benchmarks/gpu_check.sh --out=/tmp/gpu_check          # the GPU (installs from .whl/)
  python benchmarks/gpu_check.py --out=/tmp/gpu_check --tiny # the same stages, tiny, on a CPU

Stages, in this order, each in its own processes with a timeout from the time budget
(`--budget_s`, default 480 s); a stage that no longer fits is skipped and said so, and
`summary.json` is rewritten after every stage, so a run cut short still leaves its figures:

1. `core`: `bench.py` supervised (16 x 128^2) and MCMT (8 + 8 x 128^2) steps in bf16, then a
   jax.profiler trace of a few more steps of each -> `kernels-<case>.md` (kernel_table.py).
2. `infer`: inference 600x400 and 3840x2160 in bf16, each in a fresh process (`--isolate`: the
   device's peak memory is that case's).
3. `main_cold`, `main_warm`: `main.py` MCMT runs (16 + 16 patches, the default data) with a fresh
   and then the same `--jax_cache_dir`: "Init, data start and first step" from the log, the
   time from launch to that line, the wall time, and patches/s from the steps/s log lines.
4. `torch_eager`, `torch_compile`: the PyTorch twin's steps on the same device (`--nojax`).
5. `option:<name>`: each performance option of OPTIONS on (the `core` records are "off").

Output in `--out`: `summary.json` (figures with their goals, stages, skipped stages, options,
kernel tables), `records.jsonl` (every JSON line of bench.py), `kernels-*.md`, `main-*.log`, and
the same summary as a table and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import kernel_table  # noqa: E402
from crnet_jax import image_io  # noqa: E402

# The performance options timed against the defaults (name -> extra bench.py flags). XLA option
# names change between XLA versions: xla_gpu_enable_command_buffer (a list of command types; empty
# turns CUDA graphs off) and xla_gpu_graph_min_graph_size exist in jaxlib 0.10.2.
OPTIONS = {
    'layer_attention_impl=reduce': ['--config.model.layer_attention_impl=reduce'],
    'layer_attention_impl=concat': ['--config.model.layer_attention_impl=concat'],
    'mrb_impl=pallas': ['--config.model.mrb_impl=pallas'],
    'reduce+pallas': ['--config.model.layer_attention_impl=reduce',
                      '--config.model.mrb_impl=pallas'],
    'remat=lmrg': ['--config.model.remat=lmrg'],
    'command_buffer=off': ['xla:xla_gpu_enable_command_buffer='],
    # No autotuning of convolutions and GEMMs: a faster compile (cold start) for the heuristics'
    # kernels; compare its `on_compile_s` and speed-up with the defaults'.
    'autotune=off': ['xla:xla_gpu_autotune_level=0'],
}

# figure -> (goal comparison, goal value, unit, what)
GOALS = {
    'supervised_patches_per_s': ('>=', 750, 'patches/s', 'supervised step, 16 x 128^2, bf16'),
    'mcmt_patches_per_s': ('>=', 570, 'patches/s', 'MCMT step, 8 + 8 x 128^2, bf16'),
    'real_mcmt_patches_per_s': ('>=', 500, 'patches/s', 'real MCMT run (main.py, 16 + 16)'),
    'cold_start_s': ('<=', 15, 's', 'init, data start and first step, fresh compilation cache'),
    'warm_start_s': ('<=', 5, 's', 'init, data start and first step, reused compilation cache'),
    'infer_600x400_ms': ('<=', 6, 'ms', 'inference 600x400, bf16'),
    'infer_3840x2160_ms': ('<=', 200, 'ms', 'inference 3840x2160, bf16'),
    'infer_3840x2160_peak_gib': ('<=', 8, 'GiB', 'inference 3840x2160, device peak'),
    'mcmt_vs_torch_compile': ('>=', 4, 'x', 'MCMT step against torch.compile'),
}
# Figures without a goal, reported beside them.
EXTRA = ('supervised_vs_torch_compile', 'supervised_vs_torch_eager', 'mcmt_vs_torch_eager',
         'torch_eager_mcmt_patches_per_s', 'torch_compile_mcmt_patches_per_s',
         'cold_launch_to_first_step_s', 'warm_launch_to_first_step_s', 'cold_wall_s',
         'warm_wall_s', 'supervised_compile_s', 'mcmt_compile_s')


@dataclasses.dataclass
class Sizes:
  """The sizes of a run: the GPU's (the goals') or the tiny CPU one."""
  bench_config: str = 'configs/crnet.py'
  main_config: str = 'configs/mcmt.py'
  dtype: str = 'bfloat16'
  batch: int = 16
  labeled: int = 8
  unlabeled: int = 8
  patch: int = 128
  steps: int = 20
  warmup: int = 3
  profile_steps: int = 5
  infer_cases: tuple[str, str] = ('infer_600x400', 'infer_3840x2160')
  infer_steps: int = 10
  isolate: bool = True  # each inference case in a fresh process (its own device peak)
  main_steps: int = 200
  main_warm_steps: int = 20
  main_log_every: int = 50
  main_workers: int = 8
  bench_flags: tuple[str, ...] = ()
  main_flags: tuple[str, ...] = ()
  xla_options: tuple[str, ...] = ()
  # stage -> (seconds it needs at least to be worth starting, its timeout)
  times: dict[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: {
      'core': (60, 150), 'infer': (30, 90), 'main_cold': (45, 120), 'main_warm': (20, 60),
      'torch_eager': (20, 60), 'torch_compile': (60, 180), 'option': (30, 75)})


TINY = Sizes(
    bench_config='configs/crnet.py:test', main_config='configs/mcmt.py:test', dtype='float32',
    batch=4, labeled=2, unlabeled=2, patch=16, steps=2, warmup=1, profile_steps=1,
    infer_cases=('infer_40x24', 'infer_64x48'), infer_steps=2, isolate=False, main_steps=4,
    main_warm_steps=2,
    main_log_every=1, main_workers=0,
    bench_flags=('--config.model.num_groups=1', '--pipeline_steps=2'),
    main_flags=('--config.model.num_groups=1',),
    # XLA's CPU backend compiles several times faster without its LLVM optimisations.
    xla_options=('xla_backend_optimization_level=0',),
    times={'core': (5, 60), 'infer': (5, 40), 'main_cold': (5, 40), 'main_warm': (5, 30),
           'torch_eager': (5, 30), 'torch_compile': (30, 120), 'option': (5, 30)})


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


class Check:
  """The stages, their time budget and the summary they fill in."""

  def __init__(self, out: str, sizes: Sizes, budget_s: float, tiny: bool,
               stages: list[str] | None = None):
    self.out, self.sizes, self.budget_s, self.tiny = out, sizes, budget_s, tiny
    self.only = stages
    self.t0 = time.monotonic()
    self.records_path = os.path.join(out, 'records.jsonl')
    self.summary: dict[str, Any] = {
        'date': _now(), 'command': ' '.join(['python', 'benchmarks/gpu_check.py'] + sys.argv[1:]),
        'tiny': tiny, 'budget_s': budget_s, 'device': None, 'sizes': dataclasses.asdict(sizes),
        'figures': {k: None for k in GOALS}, 'extra': {k: None for k in EXTRA},
        'goals': {k: {'op': op, 'goal': v, 'unit': u, 'what': w}
                  for k, (op, v, u, w) in GOALS.items()},
        'options': {}, 'kernel_tables': {}, 'stages': {}, 'skipped': [], 'elapsed_s': 0.0}
    os.makedirs(out, exist_ok=True)
    # A rerun into the same folder starts afresh (no appended records, no resumed run, no warm
    # compilation cache for the cold start).
    for old in glob.glob(os.path.join(out, 'bench-*')) + [self.records_path]:
      if os.path.isfile(old):
        os.remove(old)
    for old in ('jax_cache', 'main-cold', 'main-warm', 'profile'):
      shutil.rmtree(os.path.join(out, old), ignore_errors=True)
    self.write()

  # -- bookkeeping ------------------------------------------------------------------------------

  def remaining(self) -> float:
    return self.budget_s - (time.monotonic() - self.t0)

  def write(self) -> None:
    self.summary['elapsed_s'] = round(time.monotonic() - self.t0, 1)

    def write_summary(tmp: str) -> None:
      with open(tmp, 'w') as f:
        json.dump(self.summary, f, indent=1, default=str)

    image_io.write_atomically(os.path.join(self.out, 'summary.json'), write_summary)

  def stage(self, name: str, kind: str, fn: Callable[[float], str | None],
            needs: str = '') -> None:
    """Runs `fn(timeout)` unless it does not fit in the budget (or `needs` says why not)."""
    if self.only is not None and name.split(':')[0] not in self.only:
      return
    least, most = self.sizes.times[kind]
    left = self.remaining() - 3.0  # the summary's own time
    reason = needs or (f'{max(left, 0):.0f} s left of the budget, it needs {least:.0f} s'
                       if left < least else '')
    if reason:
      self.summary['stages'][name] = {'status': 'skipped', 'reason': reason}
      self.summary['skipped'].append(name)
      print(f'# skipped {name}: {reason}', file=sys.stderr, flush=True)
      self.write()
      return
    timeout = min(most, left)
    print(f'# {name}: up to {timeout:.0f} s ({left:.0f} s left)', file=sys.stderr, flush=True)
    t = time.monotonic()
    try:
      status = fn(timeout) or 'ok'
    except subprocess.TimeoutExpired:
      status = 'timeout'
    except Exception as e:  # pylint: disable=broad-except
      status = f'failed: {type(e).__name__}: {e}'[:500]
    self.summary['stages'][name] = {'status': status,
                                    'seconds': round(time.monotonic() - t, 1)}
    self.write()

  # -- processes --------------------------------------------------------------------------------

  def _env(self) -> dict[str, str]:
    env = dict(os.environ)
    if self.tiny:
      env.setdefault('JAX_PLATFORMS', 'cpu')
    return env

  def run_logged(self, cmd: list[str], timeout: float, log: str,
                 marker: str = '') -> tuple[int, float, float | None]:
    """Runs `cmd` (its own process group), its output into `log` line by line as it comes.

    Returns (exit status, wall seconds, seconds from the launch to the first line containing
    `marker`, or None). On timeout the whole group is killed and TimeoutExpired raised.
    """
    t0 = time.monotonic()
    seen: list[float] = []
    with open(log, 'w') as f:
      proc = subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)

      def pump():
        for line in proc.stdout:
          if marker and not seen and marker in line:
            seen.append(time.monotonic() - t0)
          f.write(line)
          f.flush()

      reader = threading.Thread(target=pump, daemon=True)
      reader.start()
      try:
        rc = proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        proc.wait()
        reader.join(5)
        raise
      reader.join(10)
    return rc, time.monotonic() - t0, (seen[0] if seen else None)

  def bench(self, name: str, args: list[str], timeout: float) -> list[dict[str, Any]]:
    """bench.py with `args`; its records (also appended to records.jsonl as they come)."""
    s = self.sizes
    xla = list(s.xla_options) + [a[4:] for a in args if a.startswith('xla:')]
    args = [a for a in args if not a.startswith('xla:')]
    part = os.path.join(self.out, f'bench-{re.sub(r"[^A-Za-z0-9_.-]", "_", name)}.jsonl')
    cmd = [sys.executable, os.path.join(REPO, 'benchmarks', 'bench.py'),
           f'--config={s.bench_config}', f'--batch={s.batch}', f'--labeled={s.labeled}',
           f'--unlabeled={s.unlabeled}', f'--patch={s.patch}', f'--dtypes={s.dtype}',
           *s.bench_flags, *(['--xla_options=' + ','.join(xla)] if xla else []), *args,
           f'--out={part}']
    log = os.path.join(self.out, f'bench-{re.sub(r"[^A-Za-z0-9_.-]", "_", name)}.log')
    try:
      rc, _, _ = self.run_logged(cmd, timeout, log)
    finally:  # what a cut-off run wrote still counts
      records = []
      if os.path.exists(part):
        with open(part) as f:
          records = [json.loads(l) for l in f if l.strip().startswith('{')]
        with open(self.records_path, 'a') as f:
          for r in records:
            f.write(json.dumps({**r, 'check_stage': name}) + '\n')
      if records and not self.summary['device']:
        self.summary['device'] = f"{records[0].get('backend')}: {records[0].get('device')}"
    if rc:
      raise RuntimeError(f'exit status {rc} (see {os.path.basename(log)})')
    return records

  # -- stages -----------------------------------------------------------------------------------

  @staticmethod
  def _find(records, case, framework='jax', variant=None):
    for r in records:
      if (r.get('case') == case and r.get('framework') == framework and 'error' not in r
          and (variant is None or r.get('variant') == variant)):
        return r
    return None

  def core(self, timeout: float) -> str | None:
    s = self.sizes
    prof = os.path.join(self.out, 'profile')
    records = []
    try:
      records = self.bench('core', ['--cases=supervised,mcmt', f'--steps={s.steps}',
                                    f'--warmup={s.warmup}', '--torch=none',
                                    f'--profile_dir={prof}', f'--profile_steps={s.profile_steps}'],
                           timeout)
    finally:
      self.core_records = records
      fig, extra = self.summary['figures'], self.summary['extra']
      for case in ('supervised', 'mcmt'):
        r = self._find(records, case)
        if r:
          fig[f'{case}_patches_per_s'] = r['patches_per_s']
          extra[f'{case}_compile_s'] = r.get('compile_s')
          self.kernels(case, r)
    return None

  def kernels(self, case: str, record: dict[str, Any]) -> None:
    traces = sorted(glob.glob(os.path.join(record.get('profile_path', ''), '**',
                                           '*trace.json.gz'), recursive=True))
    if not traces:
      self.summary['kernel_tables'][case] = {'error': 'no JSON trace found'}
      return
    try:
      result = kernel_table.table(kernel_table.load(traces[-1]),
                                  steps=record.get('profile_steps'), module='', top=15)
    except Exception as e:  # pylint: disable=broad-except
      self.summary['kernel_tables'][case] = {'error': f'{type(e).__name__}: {e}'}
      return
    title = (f"{case} step, {record.get('batch')} x {record.get('patch')}^2, "
             f"{record.get('dtype')}, {record.get('device')} (median {record['median_ms']:.2f} "
             'ms untraced)')
    path = os.path.join(self.out, f'kernels-{case}.md')
    with open(path, 'w') as f:
      f.write(kernel_table.markdown(result, title))
    self.summary['kernel_tables'][case] = {'markdown': os.path.basename(path),
                                           'trace': os.path.relpath(traces[-1], self.out),
                                           **result}

  def infer(self, timeout: float) -> str | None:
    s = self.sizes
    records = []
    try:
      records = self.bench('infer', [f'--cases={",".join(s.infer_cases)}',
                                     '--isolate' if s.isolate else '--noisolate',
                                     f'--steps={s.infer_steps}', '--warmup=2', '--torch=none'],
                           timeout)
    finally:
      small, large = (self._find(records, c) for c in s.infer_cases)
      fig = self.summary['figures']
      if small:
        fig['infer_600x400_ms'] = small['median_ms']
      if large:
        fig['infer_3840x2160_ms'] = large['median_ms']
        peak = large.get('peak_bytes') or large.get('compiled_bytes')
        fig['infer_3840x2160_peak_gib'] = peak / 2**30 if peak else None
    return None

  def main_run(self, which: str, timeout: float) -> str | None:
    s = self.sizes
    steps = s.main_steps if which == 'cold' else s.main_warm_steps
    cache = os.path.join(self.out, 'jax_cache')
    workdir = os.path.join(self.out, f'main-{which}')
    cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={s.main_config}',
           f'--workdir={workdir}', f'--jax_cache_dir={cache}',
           f'--config.model.dtype={s.dtype}', f'--config.num_train_steps={steps}',
           f'--config.log_every_steps={s.main_log_every}',
           f'--config.checkpoint_every_steps={10 * steps}',
           f'--config.data.num_workers={s.main_workers}', '--config.eval_every_epochs=0',
           *(['--config.data.data_dir=' + os.path.join(self.out, 'tfds')] if self.tiny else []),
           *s.main_flags]
    log = os.path.join(self.out, f'main-{which}.log')
    rc, wall, launch = self.run_logged(cmd, timeout, log, marker='Init, data start and first')
    with open(log) as f:
      text = f.read()
    m = re.search(r'Init, data start and first step[^:]*: ([\d.]+) s', text)
    fig, extra = self.summary['figures'], self.summary['extra']
    fig[f'{which}_start_s'] = float(m.group(1)) if m else None
    extra[f'{which}_launch_to_first_step_s'] = launch
    extra[f'{which}_wall_s'] = wall
    if which == 'cold':
      rates = [float(x) for x in re.findall(r'steps/s, ([\d.]+) patches/s', text)]
      # The first log line's interval holds the compilation: leave it out when there are more.
      rates = rates[1:] if len(rates) > 1 else rates
      if not rates:
        rates = self._rates_from_metrics(workdir)
      fig['real_mcmt_patches_per_s'] = statistics.median(rates) if rates else None
    if rc:
      return f'exit status {rc} (see {os.path.basename(log)})'
    return None

  def _rates_from_metrics(self, workdir: str) -> list[float]:
    path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(path):
      return []
    with open(path) as f:
      train = [json.loads(l) for l in f if '"train"' in l]
    per_step = self.sizes.batch + self.sizes.batch  # main.py's MCMT: batch + unlabeled
    return [r['steps_per_second'] * per_step for r in train[1:] or train
            if 'steps_per_second' in r]

  def torch(self, variant: str, timeout: float) -> str | None:
    s = self.sizes
    cases = 'mcmt,supervised' if variant == 'eager' else 'mcmt'
    records = []
    try:
      records = self.bench(f'torch_{variant}', [f'--cases={cases}', '--nojax',
                                                f'--torch={variant}', f'--steps={s.steps}',
                                                f'--warmup={s.warmup}'], timeout)
    finally:
      extra = self.summary['extra']
      for case in ('mcmt', 'supervised'):
        t = self._find(records, case, 'torch', variant)
        j = self._find(getattr(self, 'core_records', []), case)
        if t and case == 'mcmt':
          extra[f'torch_{variant}_mcmt_patches_per_s'] = t['patches_per_s']
        if t and j:
          ratio = j['patches_per_s'] / t['patches_per_s']
          if case == 'mcmt' and variant == 'compile':
            self.summary['figures']['mcmt_vs_torch_compile'] = ratio
          else:
            extra[f'{case}_vs_torch_{variant}'] = ratio
    return None

  def option(self, name: str, flags: list[str], timeout: float) -> str | None:
    s = self.sizes
    records = []
    try:
      records = self.bench(f'option-{name}', ['--cases=mcmt,supervised', f'--steps={s.steps}',
                                              f'--warmup={s.warmup}', '--torch=none', *flags],
                           timeout)
    finally:
      entry = {}
      for case in ('mcmt', 'supervised'):
        on = self._find(records, case)
        off = self._find(getattr(self, 'core_records', []), case)
        entry[case] = {'on_patches_per_s': on and on['patches_per_s'],
                       'off_patches_per_s': off and off['patches_per_s'],
                       'speedup': (on['patches_per_s'] / off['patches_per_s']
                                   if on and off else None),
                       'on_compile_s': on and on.get('compile_s'),
                       'on_peak_bytes': on and on.get('peak_bytes')}
      self.summary['options'][name] = {'flags': flags, **entry}
    return None

  def run(self) -> dict[str, Any]:
    has_torch = importlib.util.find_spec('torch') is not None
    no_torch = '' if has_torch else ('torch is not installed '
                                     '(pip install -r benchmarks/requirements.txt)')
    self.stage('core', 'core', self.core)
    self.stage('infer', 'infer', self.infer)
    self.stage('main_cold', 'main_cold', lambda t: self.main_run('cold', t))
    cold_ok = self.summary['stages'].get('main_cold', {}).get('status') == 'ok'
    self.stage('main_warm', 'main_warm', lambda t: self.main_run('warm', t),
               needs='' if cold_ok else 'the cold run did not finish (no cache to reuse)')
    self.stage('torch_eager', 'torch_eager', lambda t: self.torch('eager', t), needs=no_torch)
    self.stage('torch_compile', 'torch_compile', lambda t: self.torch('compile', t),
               needs=no_torch)
    for name, flags in OPTIONS.items():
      self.stage(f'option:{name}', 'option',
                 lambda t, name=name, flags=flags: self.option(name, flags, t))
    for k in GOALS:
      self.summary['goals'][k]['ok'] = _meets(k, self.summary['figures'][k])
    self.write()
    return self.summary


def _meets(key: str, value: float | None) -> bool | None:
  if value is None:
    return None
  op, goal = GOALS[key][:2]
  return value >= goal if op == '>=' else value <= goal


def render(summary: dict[str, Any]) -> str:
  """The summary as a plain-text table."""
  lines = [f"# GPU check: {summary['device']} ({summary['date']}, {summary['elapsed_s']} s"
           f"{', tiny sizes' if summary['tiny'] else ''})", '',
           f"{'figure':<62} {'value':>10} {'goal':>12}  met"]
  for key, (op, goal, unit, what) in GOALS.items():
    v = summary['figures'][key]
    ok = _meets(key, v)
    shown = '-' if v is None else f'{v:.3g}'
    lines.append(f"{what:<62} {shown:>10} {op + str(goal) + ' ' + unit:>12}  "
                 f"{'-' if ok is None else ('yes' if ok else 'NO')}")
  lines += ['', 'other figures:']
  lines += [f'  {k}: {v:.3g}' for k, v in summary['extra'].items() if v is not None]
  if summary['options']:
    lines += ['', f"{'option (on vs off)':<40} {'MCMT':>8} {'supervised':>11} "
                  f"{'compile (on, MCMT)':>19}"]
    for name, o in summary['options'].items():
      fmt = lambda x: '-' if x is None else f'{x:.2f}x'
      compile_s = o['mcmt']['on_compile_s']
      lines.append(f"{name:<40} {fmt(o['mcmt']['speedup']):>8} "
                   f"{fmt(o['supervised']['speedup']):>11} "
                   f"{'-' if compile_s is None else f'{compile_s:.1f} s':>19}")
  lines += ['', 'stages:']
  for name, st in summary['stages'].items():
    lines.append(f"  {name}: {st['status']}" + (f", {st['seconds']} s" if 'seconds' in st else
                                                 f" ({st.get('reason')})"))
  for case, t in summary['kernel_tables'].items():
    if 'kinds' in t:
      lines += ['', f"{case}: device busy {t['busy_ms_per_step']:.2f} ms/step "
                f"({t['kernels_per_step']:.0f} kernels): " + ', '.join(
                    f"{k['kind']} {100 * k['share']:.0f}%" for k in t['kinds'][:5])]
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', default='gpu_check', help='output folder')
  parser.add_argument('--tiny', action='store_true',
                      default=os.environ.get('CRNET_GPU_CHECK_TINY', '') not in ('', '0'),
                      help='tiny sizes on the CPU (env CRNET_GPU_CHECK_TINY=1)')
  parser.add_argument('--budget_s', type=float, default=480.0,
                      help='the whole run\'s time budget in seconds')
  parser.add_argument('--stages', default='',
                      help='only these stages, comma-separated (core, infer, main_cold, '
                      'main_warm, torch_eager, torch_compile, option)')
  args = parser.parse_args(argv)
  sizes = TINY if args.tiny else Sizes()
  check = Check(os.path.abspath(args.out), sizes, args.budget_s, args.tiny,
                [s for s in args.stages.split(',') if s] or None)
  summary = check.run()
  sys.stdout.write(render(summary))
  print(json.dumps({'figures': summary['figures'], 'skipped': summary['skipped'],
                    'elapsed_s': summary['elapsed_s'], 'out': check.out}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
