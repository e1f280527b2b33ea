r"""The label-efficiency study: prepare its data, train its runs, evaluate, report.

Does MCMT with 10% of the labels plus unlabeled photos beat CRNet on the same 10% alone, and how
close does it come to 100% of the labels? The runs are defined in `configs/study.py`; the whole
procedure, on a GPU machine with or without internet access, is in `docs/study.md`.

  python experiments/study/main.py prepare --sources /data/study_sources     # -> study_data/
  python experiments/study/main.py run --runs crnet10,mcmt10 --budget_minutes 9
  python experiments/study/main.py evaluate
  python experiments/study/main.py report

Subcommands:

- `pack`: copies what the study reads from the sources folder (`--sources`, the public data sets
  in the layout of docs/data.md) into a compact folder of the same layout (`study_pack/`, 77
  MiB), small enough to copy to a GPU machine without internet access in a few transfers: the
  BSDS500 JPEGs and SunHays80 as they are, Urban100_sub20 downscaled to `--max_side` (exactly what
  `prepare` would do to them) and LIME's BMPs as PNGs (same pixels). `prepare --sources
  study_pack` then writes the same study data as from the sources folder.
- `prepare`: reads `--sources` (required: the sources folder or a pack) and writes `--study_dir`
  (default `study_data/`):
  `train/{low,high}` (532 synthetic pairs: CBSD432 by id, SunHays80, Urban100_sub20, each photo
  downscaled to `--max_side` 600 and darkened by `crnet_jax.datasets.degrade` with the seed
  `--seed` and its name, as the `synthetic_pairs` dataset does), `cbsd68/{low,high}` (the 68
  CBSD68 photos, read from BSDS500/val, pixel-identical, darkened the same way),
  `lol778/{low,high}` (the one real LOL pair), `real_dark/{dicm,lime,lol_low}` (links to the real
  low-light photos; `lol_low` leaves out 778, the LOL test pair) and `manifest.json`. Rerunning
  skips what exists; other settings than the manifest's are an error (`--force` redoes all).
- `run`: trains the runs one after another with `python main.py --config=configs/study.py:RUN`
  into `--work/RUN` (default `runs/study/RUN`). It resumes from each run's last checkpoint, skips
  finished runs and, with `--budget_minutes`, stops in time: a call trains up to the step its
  measured speed allows (the run's own `--config.num_train_steps` for that call; the learning
  rate schedule does not depend on it) and is stopped at the deadline otherwise (at most
  `checkpoint_every_steps` steps are lost). Each call is logged to `RUN/study_log.jsonl` (seconds,
  steps, device).
- `evaluate`: for every run, the student's (and for MCMT the teacher's) PSNR/SSIM on the CBSD68
  synthetic pairs and on the LOL 778 pair, from the last checkpoint (`--checkpoint best` for the
  best by test PSNR), with `crnet_jax.inference.evaluate_pairs`, into `RUN/study_eval.json` and
  `RUN/study_eval/`; plus a few real low-light photos (LOL eval15 low, DICM) enhanced for the
  grid figure.
- `report`: the table (`docs/study_results.md`, `benchmarks/results/study.json`), the
  PSNR-vs-step curves (`docs/figures/study_curves.png`, from each run's `metrics.jsonl`) and the
  grid of enhanced real photos (`docs/figures/study_grid.png`), drawn with PIL.
- `bundle` / `unbundle`: each run's last checkpoint, logs and evaluation results (numbers and
  grid photos) as `.tgz` parts of at most 15 MiB, to move a run between machines (to continue it
  on another GPU machine, or to bring its results back from one whose transfers are limited in
  size).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import datetime
import glob
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import default as default_config  # pylint: disable=wrong-import-position
from configs import study as study_config  # pylint: disable=wrong-import-position
from crnet_jax import image_io  # pylint: disable=wrong-import-position
from crnet_jax.datasets import base as datasets_base  # pylint: disable=wrong-import-position
from crnet_jax.datasets import degrade  # pylint: disable=wrong-import-position
from crnet_jax.datasets import synthetic_pairs  # pylint: disable=wrong-import-position

DEFAULT_STUDY_DIR = os.path.join(REPO, 'study_data')
DEFAULT_WORK = os.path.join(REPO, 'runs', 'study')
LOL_TEST = '778'
PART_BYTES = 15 * 2**20
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def _log(msg: str) -> None:
  print(f'[study] {msg}', flush=True)


def _images(folder: str) -> list[str]:
  """The image files of `folder` (by extension, not hidden), in natural name order."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{folder}: folder not found')
  names = [n for n in os.listdir(folder) if not n.startswith('.')
           and os.path.splitext(n)[1].lower() in image_io.IMAGE_EXTENSIONS]
  return [os.path.join(folder, n) for n in sorted(names, key=datasets_base.natural_key)]


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def _read_ids(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 image as PNG atomically (a killed prepare leaves no half-written file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  Image.fromarray(image).save(tmp, format='PNG')
  os.replace(tmp, path)


def _folder_mib(folder: str) -> float:
  total = 0
  for root, _, files in os.walk(folder):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total / 2**20


# ------------------------------------------------------------------------------------------------
# Sources: which photo of the sources folder goes where.


def _bsds_file(sources: str, image_id: str) -> str:
  for split in ('train', 'test', 'val'):
    path = os.path.join(sources, 'BSDS500', split, image_id + '.jpg')
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'BSDS500 image {image_id} not found in {sources}/BSDS500/*/')


def study_sources(sources: str) -> dict[str, Any]:
  """The files the study reads from the folder `sources` (its layout: docs/data.md).

  Returns:
    {'train': [(name, file)] (532 with the full data), 'test': [(name, file)] (CBSD68),
    'lol778': (low, high), 'real_dark': {'dicm': [...], 'lime': [...], 'lol_low': [...]}}.
  """
  splits = os.path.join(sources, 'BSDS500', 'splits')
  train = [('bsds_' + i, _bsds_file(sources, i))
           for i in _read_ids(os.path.join(splits, 'CBSD432_ids.txt'))]
  train += [('sun_' + _stem(f), f) for f in _images(os.path.join(sources, 'SunHays80', 'train'))]
  train += [('urban_' + _stem(f), f)
            for f in _images(os.path.join(sources, 'Urban100_sub20', 'train'))]
  test = [(i, os.path.join(sources, 'BSDS500', 'val', i + '.jpg'))
          for i in _read_ids(os.path.join(splits, 'CBSD68_ids.txt'))]
  names = [n for n, _ in train + test]
  if len(set(names)) != len(names):
    raise ValueError('two study photos share a name')
  lol = os.path.join(sources, 'LOL', 'eval15')
  lol_low = _images(os.path.join(lol, 'low'))
  pair = [f for f in lol_low if _stem(f) == LOL_TEST]
  high = [f for f in _images(os.path.join(lol, 'high')) if _stem(f) == LOL_TEST]
  if not pair or not high:
    raise FileNotFoundError(f'{lol}: the LOL pair {LOL_TEST} (low/ and high/) is missing')
  return {'train': train, 'test': test, 'lol778': (pair[0], high[0]),
          'real_dark': {'dicm': _images(os.path.join(sources, 'DICM', 'test')),
                        'lime': _images(os.path.join(sources, 'LIME', 'test')),
                        'lol_low': [f for f in lol_low if _stem(f) != LOL_TEST]}}


# ------------------------------------------------------------------------------------------------
# pack


def cmd_pack(args) -> dict[str, float]:
  """Copies the study's sources into `args.pack` (same layout, smaller); returns MiB per folder."""
  sources, pack = os.path.abspath(args.sources), os.path.abspath(args.pack)
  src = study_sources(sources)
  os.makedirs(os.path.join(pack, 'BSDS500', 'splits'), exist_ok=True)
  for f in ('CBSD432_ids.txt', 'CBSD68_ids.txt'):
    shutil.copy2(os.path.join(sources, 'BSDS500', 'splits', f),
                 os.path.join(pack, 'BSDS500', 'splits', f))

  def put(path: str, rel_dir: str, shrink: bool = False) -> None:
    """Copies `path` into pack/rel_dir; BMPs and photos over max_side become (exact) PNGs."""
    out_dir = os.path.join(pack, rel_dir)
    os.makedirs(out_dir, exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    photo = None
    if shrink and ext == '.png':
      photo = image_io.load_image_uint8(path)
      if max(photo.shape[:2]) <= args.max_side:
        photo = None
      else:
        photo = synthetic_pairs.resize_max_side(photo, args.max_side)
    if photo is None and ext == '.bmp':
      photo = image_io.load_image_uint8(path)
    if photo is None:
      shutil.copy2(path, os.path.join(out_dir, os.path.basename(path)))
    else:
      _save_png(os.path.join(out_dir, _stem(path) + '.png'), photo)

  for name, path in src['train'] + src['test']:
    rel = os.path.relpath(os.path.dirname(path), sources)
    put(path, rel, shrink=name.startswith('urban_'))
  put(src['lol778'][0], 'LOL/eval15/low')
  put(src['lol778'][1], 'LOL/eval15/high')
  for path in src['real_dark']['lol_low']:
    put(path, 'LOL/eval15/low')
  for path in src['real_dark']['dicm']:
    put(path, 'DICM/test')
  for path in src['real_dark']['lime']:
    put(path, 'LIME/test')
  sizes = {d: round(_folder_mib(os.path.join(pack, d)), 2) for d in sorted(os.listdir(pack))}
  _log(f'packed {pack}: MiB per folder {sizes}, {sum(sizes.values()):.1f} MiB in all')
  return sizes


# ------------------------------------------------------------------------------------------------
# prepare


def _degradation() -> dict[str, float]:
  synthetic = default_config.get_config().data.synthetic
  params = degrade.DegradationParams.from_mapping(synthetic)
  return {k: float(v) for k, v in sorted(vars(params).items())}


def make_pair(name: str, photo_path: str, out_dir: str, seed: int, max_side: int,
              params: degrade.DegradationParams) -> bool:
  """Writes out_dir/{low,high}/name.png (as the synthetic_pairs dataset makes them); False if both
  exist already."""
  low_path = os.path.join(out_dir, 'low', name + '.png')
  high_path = os.path.join(out_dir, 'high', name + '.png')
  if os.path.isfile(low_path) and os.path.isfile(high_path):
    return False
  photo = synthetic_pairs.resize_max_side(image_io.load_image_uint8(photo_path), max_side)
  low = degrade.degrade(photo, degrade.image_seed(seed, name), params)
  _save_png(high_path, photo)
  _save_png(low_path, image_io.to_uint8(low))
  return True


def _link(src: str, dst: str, copy: bool) -> None:
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  if os.path.lexists(dst):
    os.remove(dst)
  if copy:
    shutil.copy2(src, dst)
  else:
    os.symlink(os.path.realpath(src), dst)


def cmd_prepare(args) -> dict[str, Any]:
  """Writes the study data folder (module docstring); returns its manifest."""
  sources, study_dir = os.path.abspath(args.sources), os.path.abspath(args.study_dir)
  src = study_sources(sources)
  settings = {'seed': int(args.seed), 'max_side': int(args.max_side),
              'degradation': _degradation()}
  manifest_path = os.path.join(study_dir, 'manifest.json')
  if os.path.isfile(manifest_path):
    with open(manifest_path) as f:
      old = json.load(f)
    if {k: old.get(k) for k in settings} != settings:
      if not args.force:
        raise SystemExit(f'{study_dir} was prepared with other settings '
                         f'({ {k: old.get(k) for k in settings} }); use --force to redo it')
    if args.force:
      for sub in ('train', 'cbsd68', 'tfds'):
        shutil.rmtree(os.path.join(study_dir, sub), ignore_errors=True)
  params = degrade.DegradationParams(**settings['degradation'])
  jobs = [(n, p, os.path.join(study_dir, 'train')) for n, p in src['train']]
  jobs += [(n, p, os.path.join(study_dir, 'cbsd68')) for n, p in src['test']]
  t0 = time.time()
  with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
    made = sum(pool.map(lambda j: make_pair(*j, args.seed, args.max_side, params), jobs))
  _log(f'{made} pair(s) written, {len(jobs) - made} already there ({time.time() - t0:.1f} s)')

  # CBSD68 is read from BSDS500/val: check it against the CBSD68 PNGs when they are at hand.
  cbsd68_check = 'CBSD68/test not at hand'
  cbsd68_dir = os.path.join(sources, 'CBSD68', 'test')
  if os.path.isdir(cbsd68_dir):
    diffs = []
    for name, path in src['test']:
      png = os.path.join(cbsd68_dir, name + '.png')
      if os.path.isfile(png):
        a = image_io.load_image_uint8(png).astype(np.int16)
        b = image_io.load_image_uint8(path).astype(np.int16)
        diffs.append(int(np.abs(a - b).max()) if a.shape == b.shape else 255)
    cbsd68_check = (f'{len(diffs)} CBSD68 PNGs vs BSDS500/val JPEGs: max abs diff '
                    f'{max(diffs) if diffs else "n/a"}')
    _log(cbsd68_check)

  low, high = src['lol778']
  _link(low, os.path.join(study_dir, 'lol778', 'low', os.path.basename(low)), args.copy)
  _link(high, os.path.join(study_dir, 'lol778', 'high', os.path.basename(high)), args.copy)
  for sub, files in src['real_dark'].items():
    folder = os.path.join(study_dir, 'real_dark', sub)
    shutil.rmtree(folder, ignore_errors=True)
    for f in files:
      _link(f, os.path.join(folder, os.path.basename(f)), args.copy)
  manifest = {**settings, 'sources': sources, 'cbsd68_check': cbsd68_check,
              'counts': {'train': len(src['train']), 'cbsd68': len(src['test']),
                         **{k: len(v) for k, v in src['real_dark'].items()}},
              'train': [n for n, _ in src['train']], 'cbsd68': [n for n, _ in src['test']]}
  with open(manifest_path, 'w') as f:
    json.dump(manifest, f, indent=1)
  _log(f'prepared {study_dir}: {manifest["counts"]}')
  return manifest


# ------------------------------------------------------------------------------------------------
# Configs and run state.


def _parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise SystemExit(f'--set {item!r}: expected KEY=VALUE (e.g. data.batch_size=8)')
    out.append((key.strip(), value.strip()))
  return out


def _config_arg(run: str, size: str) -> str:
  return f'{run},{size}' if size else run


def load_config(run: str, size: str, study_dir: str, overrides: Sequence[tuple[str, str]] = ()):
  """The run's config as main.py builds it from the same flags."""
  config = study_config.get_config(_config_arg(run, size))
  config.study_dir = os.path.abspath(study_dir)
  for key, raw in overrides:
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    if isinstance(node[leaf], float) and isinstance(value, int):
      value = float(value)
    node[leaf] = value
  return config


def _steps(workdir: str, sub: str = 'checkpoints') -> list[int]:
  folder = os.path.join(workdir, sub)
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def latest_step(workdir: str) -> int:
  steps = _steps(workdir)
  return steps[-1] if steps else 0


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  if not os.path.isfile(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          out.append(json.loads(line))
        except json.JSONDecodeError:
          pass  # a line cut by a killed run
  return out


def eval_curve(workdir: str) -> list[dict[str, Any]]:
  """The test evaluations of `metrics.jsonl`, one per step (the last, after a resumed run
  redid steps), by step."""
  by_step = {}
  for r in _read_jsonl(os.path.join(workdir, 'metrics.jsonl')):
    if r.get('split') == 'test':
      by_step[int(r['step'])] = r
  return [by_step[s] for s in sorted(by_step)]


def steps_per_second(workdir: str) -> float | None:
  """The median training speed logged by the run (None before its first log)."""
  rates = [r['steps_per_second'] for r in _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
           if r.get('split') == 'train' and r.get('steps_per_second')]
  return float(statistics.median(rates)) if rates else None


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


# ------------------------------------------------------------------------------------------------
# run


def plan(runs: Sequence[str], size: str, study_dir: str, work: str,
         overrides: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
  """Per run: counts, steps per epoch, total steps and steps done (builds the datasets once)."""
  from crnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  out = {}
  for run in runs:
    config = load_config(run, size, study_dir, overrides)
    summary = input_pipeline.dataset_summary(config)
    spe = int(summary['steps_per_epoch'])
    n = int(config.get('num_train_steps', -1))
    total = n if n > 0 else max(1, int(round(float(config.num_epochs) * spe)))
    out[run] = {'method': config.method, 'labeled': summary['labeled'],
                'unlabeled': summary['unlabeled'], 'test': summary['test'],
                'steps_per_epoch': spe, 'total_steps': total,
                'done': latest_step(os.path.join(work, run))}
  for run, p in out.items():
    _log(f'{run:12s} {p["method"]:10s} {p["labeled"]:4d} labeled, {p["unlabeled"]:4d} unlabeled, '
         f'{p["test"]} test; {p["steps_per_epoch"]} steps/epoch, {p["done"]}/{p["total_steps"]} '
         'steps done')
  if len({p['total_steps'] for p in out.values()}) > 1:
    _log('WARNING: the runs do not have the same number of steps: '
         f'{ {r: p["total_steps"] for r, p in out.items()} }')
  return out


def train_command(run: str, size: str, workdir: str, study_dir: str, target: int,
                  overrides: Sequence[tuple[str, str]] = ()) -> list[str]:
  """The main.py command line that trains `run` up to step `target` (run from the repo root)."""
  cmd = ['main.py', f'--config=configs/study.py:{_config_arg(run, size)}',
         f'--workdir={_shown_path(workdir)}', f'--config.study_dir={_shown_path(study_dir)}']
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
    config = load_config(run, args.size, args.study_dir, overrides)
    config.num_train_steps = int(target)
    train.train_and_evaluate(config, workdir)
    return True
  cmd = [sys.executable] + train_command(run, args.size, workdir, args.study_dir, target,
                                         overrides)
  _log('$ ' + ' '.join(cmd))
  proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)
  try:
    rc = proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    _log(f'{run}: the time budget is spent; stopping the training process {proc.pid}')
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


def _invocation(args) -> str:
  """This script's command line (as given to main(), or sys.argv)."""
  argv = sys.argv[1:] if args.argv is None else args.argv
  return 'python experiments/study/main.py ' + ' '.join(
      a if ' ' not in a else repr(a) for a in argv)


def cmd_run(args) -> dict[str, dict[str, Any]]:
  """Trains the selected runs in order within the time budget (module docstring)."""
  t_start = time.time()
  deadline = t_start + 60.0 * args.budget_minutes if args.budget_minutes else None
  runs = _run_list(args.runs)
  overrides = _parse_overrides(args.set)
  info = plan(runs, args.size, args.study_dir, args.work, overrides)
  device = _in_process_device() if args.in_process else device_description()
  _log(f'device: {device}')
  for run in runs:
    workdir = os.path.join(os.path.abspath(args.work), run)
    total, done = info[run]['total_steps'], latest_step(workdir)
    if done >= total:
      _log(f'{run}: finished ({done}/{total} steps)')
      continue
    target, timeout = total, None
    if deadline is not None:
      remaining = deadline - time.time()
      if remaining < args.min_call_seconds:
        _log(f'{run}: {remaining:.0f} s left of the budget, under --min_call_seconds; stopping')
        break
      timeout = remaining
      rate = steps_per_second(workdir) or next(
          (steps_per_second(os.path.join(os.path.abspath(args.work), r)) for r in runs
           if info[r]['method'] == info[run]['method'] and r != run
           and steps_per_second(os.path.join(os.path.abspath(args.work), r))), None)
      if rate:
        # Start-up, compilation and evaluations: as the last call of this run measured, or more.
        calls = _read_jsonl(os.path.join(workdir, 'study_log.jsonl'))
        overhead = args.overhead_seconds
        if calls and calls[-1]['to_step'] > calls[-1]['from_step']:
          last = calls[-1]
          overhead = max(overhead, last['seconds'] - (last['to_step'] - last['from_step']) / rate)
        fit = int(0.85 * rate * (remaining - overhead))
        if fit < 1:
          _log(f'{run}: no step fits in the {remaining:.0f} s left; stopping')
          break
        target = min(total, done + fit)
    os.makedirs(workdir, exist_ok=True)
    _log(f'{run}: training steps {done + 1}..{target} of {total}'
         + (f' (deadline in {timeout:.0f} s)' if timeout else ''))
    t0 = time.time()
    finished = _train_call(run, args, target, timeout, overrides)
    record = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'seconds': round(time.time() - t0, 1), 'from_step': done,
              'to_step': latest_step(workdir), 'target': target, 'total_steps': total,
              'stopped_at_deadline': not finished, 'device': device,
              'size': args.size, 'overrides': [f'{k}={v}' for k, v in overrides],
              'in_process': bool(args.in_process),
              'command': 'python ' + ' '.join(train_command(
                  run, args.size, workdir, args.study_dir, target, overrides)),
              'invocation': _invocation(args)}
    with open(os.path.join(workdir, 'study_log.jsonl'), 'a') as f:
      f.write(json.dumps(record) + '\n')
    _log(f'{run}: {record["from_step"]} -> {record["to_step"]} of {total} steps in '
         f'{record["seconds"]:.0f} s')
    info[run]['done'] = record['to_step']
    if not finished:
      break
  progress = {r: f"{latest_step(os.path.join(os.path.abspath(args.work), r))}/{p['total_steps']}"
              for r, p in info.items()}
  _log(f'run: {time.time() - t_start:.0f} s; steps done {progress}')
  return info


# ------------------------------------------------------------------------------------------------
# evaluate


def grid_inputs(study_dir: str, num_lol: int, num_dicm: int) -> list[tuple[str, str]]:
  """(name, file) of the real low-light photos of the grid: LOL 778, other LOL eval15 lows, DICM."""
  lol = [os.path.join(study_dir, 'lol778', 'low', f)
         for f in sorted(os.listdir(os.path.join(study_dir, 'lol778', 'low')))]
  lol += _images(os.path.join(study_dir, 'real_dark', 'lol_low'))
  dicm = _images(os.path.join(study_dir, 'real_dark', 'dicm'))
  return ([('lol_' + _stem(f), f) for f in lol[:num_lol]]
          + [('dicm_' + _stem(f), f) for f in dicm[:num_dicm]])


def _grid_image(path: str, side: int) -> np.ndarray:
  """A grid photo as float (H, W, 3), downscaled to `side` pixels on its longer side."""
  return image_io.load_image_uint8(path) if not side else synthetic_pairs.resize_max_side(
      image_io.load_image_uint8(path), side)


_ENHANCERS: dict[str, Any] = {}


def _enhancer(model, params, model_config):
  """One Enhancer (one compilation) per architecture; its parameters swapped per model."""
  import jax  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  key = json.dumps(model_config.to_dict(), sort_keys=True, default=str)
  if key not in _ENHANCERS:
    tiling = inference.TilingConfig.from_config(default_config.get_config().inference)
    _ENHANCERS[key] = inference.Enhancer(model, params, tiling)
  else:
    _ENHANCERS[key].params = jax.device_put(params)
  return _ENHANCERS[key]


def cmd_evaluate(args) -> dict[str, Any]:
  """Evaluates every run that has a checkpoint (module docstring); returns {run: results}."""
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  study_dir, work = os.path.abspath(args.study_dir), os.path.abspath(args.work)
  sets = {'cbsd68': (os.path.join(study_dir, 'cbsd68', 'low'),
                     os.path.join(study_dir, 'cbsd68', 'high')),
          'lol778': (os.path.join(study_dir, 'lol778', 'low'),
                     os.path.join(study_dir, 'lol778', 'high'))}
  grid = grid_inputs(study_dir, args.grid_lol, args.grid_dicm)
  results = {}
  for run in _run_list(args.runs, work):
    workdir = os.path.join(work, run)
    if not latest_step(workdir):
      _log(f'{run}: no checkpoint; skipped')
      continue
    with open(os.path.join(workdir, 'config.json')) as f:
      method = json.load(f)['method']
    if args.checkpoint == 'best' and _steps(workdir, 'best'):
      manager = checkpointing.best_manager(workdir, read_only=True)
      step = manager.best_step()
      manager.close()
    else:
      step = latest_step(workdir)
    t0 = time.time()
    out = {'run': run, 'method': method, 'checkpoint': args.checkpoint, 'step': step,
           'invocation': _invocation(args), 'models': {}}
    for which in ['student'] + (['teacher'] if method == 'mcmt' else []):
      model, params, model_config = export.load_model(workdir, which, args.checkpoint)
      enhancer = _enhancer(model, params, model_config)
      out['models'][which] = {}
      for name, (low, high) in sets.items():
        r = inference.evaluate_pairs(enhancer, low, high,
                                     os.path.join(workdir, 'study_eval', which, name),
                                     progress=False)
        out['models'][which][name] = {**r['mean'], 'num_images': r['num_images']}
      for name, path in grid:
        image_io.save_image(os.path.join(workdir, 'study_eval', 'grid', which, name + '.png'),
                            enhancer(_grid_image(path, args.grid_side) / 255.0))
    out['seconds'] = round(time.time() - t0, 1)
    with open(os.path.join(workdir, 'study_eval.json'), 'w') as f:
      json.dump(out, f, indent=1)
    parts = [f'{w} {s} {m[s]["psnr"]:.2f} dB / {m[s]["ssim"]:.4f}'
             for w, m in out['models'].items() for s in m]
    _log(f'{run} (step {step}, {out["seconds"]:.0f} s): ' + '; '.join(parts))
    results[run] = out
  return results


# ------------------------------------------------------------------------------------------------
# report: figures drawn with PIL.


def _nice_step(span: float, ticks: int = 6) -> float:
  raw = max(span, 1e-9) / ticks
  mag = 10 ** np.floor(np.log10(raw))
  for m in (1, 2, 2.5, 5, 10):
    if m * mag >= raw:
      return float(m * mag)
  return float(10 * mag)


def _polyline(draw: ImageDraw.ImageDraw, points: Sequence[tuple[float, float]], color,
              dashed: bool, width: int = 2) -> None:
  if not dashed:
    if len(points) > 1:
      draw.line(points, fill=color, width=width)
    return
  dash, gap = 8.0, 5.0
  for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
    length = float(np.hypot(x1 - x0, y1 - y0))
    t = 0.0
    while t < length:
      t1 = min(t + dash, length)
      a, b = t / max(length, 1e-9), t1 / max(length, 1e-9)
      draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                 (x0 + b * (x1 - x0), y0 + b * (y1 - y0))], fill=color, width=width)
      t = t1 + gap


def plot_curves(series: Sequence[dict[str, Any]], path: str, title: str,
                y_label: str = 'PSNR (dB)') -> None:
  """A line chart: series of {'label', 'color', 'dashed', 'points': [(x, y)]}, legend right."""
  w, h, left, right, top, bottom = 1100, 620, 80, 260, 50, 70
  img = Image.new('RGB', (w, h), 'white')
  draw = ImageDraw.Draw(img)
  pts = [p for s in series for p in s['points']]
  xmax = max([p[0] for p in pts] + [1])
  ys = [p[1] for p in pts] or [0.0, 1.0]
  ylo, yhi = min(ys), max(ys)
  pad = max(0.05 * (yhi - ylo), 0.25)
  ylo, yhi = ylo - pad, yhi + pad
  x0, x1, y0, y1 = left, w - right, h - bottom, top

  def to_px(x, y):
    return (x0 + (x1 - x0) * x / xmax, y0 - (y0 - y1) * (y - ylo) / (yhi - ylo))

  ystep = _nice_step(yhi - ylo)
  v = np.ceil(ylo / ystep) * ystep
  while v <= yhi:
    _, py = to_px(0, v)
    draw.line([(x0, py), (x1, py)], fill=(225, 225, 225))
    draw.text((x0 - 8, py), f'{v:g}', fill='black', anchor='rm')
    v += ystep
  xstep = _nice_step(xmax)
  v = 0.0
  while v <= xmax + 1e-9:
    px, _ = to_px(v, ylo)
    draw.line([(px, y0), (px, y1)], fill=(235, 235, 235))
    draw.text((px, y0 + 8), f'{v:g}', fill='black', anchor='mt')
    v += xstep
  draw.rectangle([x0, y1, x1, y0], outline='black')
  draw.text(((x0 + x1) / 2, h - 25), 'training step', fill='black', anchor='mm')
  draw.text((10, (y0 + y1) / 2), y_label, fill='black', anchor='lm')
  draw.text((w / 2, 20), title, fill='black', anchor='mm')
  for i, s in enumerate(series):
    px = [to_px(x, y) for x, y in s['points']]
    _polyline(draw, px, s['color'], s['dashed'])
    for cx, cy in px:
      draw.ellipse([cx - 2.5, cy - 2.5, cx + 2.5, cy + 2.5], fill=s['color'])
    ly = top + 10 + 20 * i
    _polyline(draw, [(x1 + 15, ly), (x1 + 50, ly)], s['color'], s['dashed'])
    draw.text((x1 + 58, ly), s['label'], fill='black', anchor='lm')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)


def _labelled(image: np.ndarray, text: str, width: int) -> Image.Image:
  """`image` (uint8) scaled to `width` with `text` in a bar above it."""
  im = Image.fromarray(image)
  im = im.resize((width, max(1, round(im.height * width / im.width))), Image.BILINEAR)
  out = Image.new('RGB', (width, im.height + 16), 'black')
  ImageDraw.Draw(out).text((3, 2), text[:width // 6], fill='white')
  out.paste(im, (0, 16))
  return out


def draw_grid(rows: Sequence[tuple[str, list[tuple[str, np.ndarray]]]], path: str,
              cell: int = 170, gap: int = 3) -> None:
  """A grid: one row per photo, one column per (label, uint8 image)."""
  tiles = [[_labelled(img, f'{name}: {label}' if j == 0 else label, cell)
            for j, (label, img) in enumerate(cols)] for name, cols in rows]
  ncols = max(len(t) for t in tiles)
  heights = [max(t.height for t in row) for row in tiles]
  grid = Image.new('RGB', (ncols * (cell + gap) - gap, sum(heights) + gap * (len(rows) - 1)),
                   'white')
  y = 0
  for row, height in zip(tiles, heights):
    for j, tile in enumerate(row):
      grid.paste(tile, (j * (cell + gap), y))
    y += height + gap
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  grid.save(path)


def _fmt(m: dict[str, Any] | None) -> str:
  if not m:
    return '-'
  return f'{m["psnr"]:.2f} / {m["ssim"]:.4f}'


def _shown_path(path: str) -> str:
  """`path` relative to the repo when inside it, else absolute."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return os.path.abspath(path) if rel.startswith('..') else rel


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  return f'{h}h{rem // 60:02d}m' if h else f'{rem // 60}m{rem % 60:02d}s'


def collect(work: str, runs: Sequence[str]) -> dict[str, dict[str, Any]]:
  """What the report shows of each run, read from its workdir."""
  out = {}
  for run in runs:
    workdir = os.path.join(work, run)
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.isfile(config_path):
      continue
    with open(config_path) as f:
      config = json.load(f)
    evaluation = None
    if os.path.isfile(os.path.join(workdir, 'study_eval.json')):
      with open(os.path.join(workdir, 'study_eval.json')) as f:
        evaluation = json.load(f)
    calls = _read_jsonl(os.path.join(workdir, 'study_log.jsonl'))
    curve = eval_curve(workdir)
    best = max(curve, key=lambda r: r.get('student_psnr', -1)) if curve else None
    d = config['data']
    out[run] = {
        'method': config['method'], 'label_fraction': d['label_fraction'],
        'unlabeled_dirs': d.get('unlabeled_dirs') or '',
        'model': {k: config['model'][k] for k in ('features', 'num_groups', 'recurrences',
                                                  'num_blocks', 'masked_conv',
                                                  'layer_attention', 'dtype')},
        'loss': config['loss'], 'patch_size': d['patch_size'], 'batch_size': d['batch_size'],
        'unlabeled_batch_size': d['unlabeled_batch_size'] if config['method'] == 'mcmt' else 0,
        'seed': config['seed'], 'steps': latest_step(workdir),
        'total_steps': calls[-1]['total_steps'] if calls else None,
        'train_seconds': round(sum(c['seconds'] for c in calls), 1),
        'calls': len(calls), 'devices': sorted({c['device'] for c in calls}),
        'steps_per_second': steps_per_second(workdir), 'evaluation': evaluation,
        'commands': [c['command'] for c in calls if c.get('command')],
        'invocations': list(dict.fromkeys(c['invocation'] for c in calls
                                          if c.get('invocation'))),
        'best_eval': ({'step': best['step'], 'student_psnr': best['student_psnr'],
                       'teacher_psnr': best.get('teacher_psnr')} if best else None),
        'curve': [{k: r[k] for k in ('step', 'student_psnr', 'student_ssim', 'teacher_psnr',
                                     'teacher_ssim', 'input_psnr', 'input_ssim') if k in r}
                  for r in curve]}
  return out


def crossing_step(curve_a: Sequence[dict[str, Any]], curve_b: Sequence[dict[str, Any]],
                  key_a: str = 'student_psnr', key_b: str = 'student_psnr',
                  margin: float = 0.01) -> int | None:
  """The first evaluated step from which curve a stays above curve b by more than `margin` at
  every common step (None if it is not above at the last common step)."""
  b = {r['step']: r[key_b] for r in curve_b if key_b in r}
  common = [(r['step'], r[key_a] - b[r['step']]) for r in curve_a
            if key_a in r and r['step'] in b]
  if not common or common[-1][1] <= margin:
    return None
  step = common[-1][0]
  for s, diff in reversed(common):
    if diff <= margin:
      break
    step = s
  return step


def reading_aids(runs: dict[str, dict[str, Any]]) -> list[str]:
  """Lines under the table: the share of the 10% -> 100% gap each MCMT run closes, and where
  its curves cross crnet10's."""
  def psnr(run, which='student'):
    ev = (runs.get(run, {}).get('evaluation') or {}).get('models', {})
    return ev.get(which, {}).get('cbsd68', {}).get('psnr')

  lines = []
  low, high = psnr('crnet10'), psnr('crnet100')
  for run in ('mcmt10-', 'mcmt10', 'mcmt10_real'):
    if run not in runs or 'crnet10' not in runs:
      continue
    parts = []
    for which in ('student', 'teacher'):
      p = psnr(run, which)
      if p is None or low is None:
        continue
      part = f'{which} {p - low:+.2f} dB vs crnet10'
      if high is not None and high > low:
        part += f', {100 * (p - low) / (high - low):.0f}% of the crnet10 -> crnet100 gap'
      cross = crossing_step(runs[run]['curve'], runs['crnet10']['curve'], f'{which}_psnr')
      part += (f', above crnet10 at every evaluation from step {cross} on' if cross is not None
               else ', not more than 0.01 dB above crnet10 at the last evaluation')
      parts.append(part)
    if parts:
      lines.append(f'- `{run}` (CBSD68 PSNR): ' + '; '.join(parts) + '.')
  if lines and low is not None and high is not None and high <= low:
    lines.append(f'- `crnet100` ({high:.2f} dB) is not above `crnet10` ({low:.2f} dB) here: '
                 'there is no 10% -> 100% gap to close.')
  return lines


def cmd_report(args) -> dict[str, Any]:
  """Writes the table, the JSON, the curves and the grid (module docstring)."""
  work, study_dir = os.path.abspath(args.work), os.path.abspath(args.study_dir)
  runs = collect(work, _run_list(args.runs, work))
  if not runs:
    raise SystemExit(f'{work}: no run to report')
  # Curves: student solid, teacher dashed, one colour per run.
  series = []
  for i, (run, r) in enumerate(runs.items()):
    color = PALETTE[i % len(PALETTE)]
    for which, dashed in (('student', False), ('teacher', True)):
      pts = [(c['step'], c[f'{which}_psnr']) for c in r['curve'] if f'{which}_psnr' in c]
      if pts:
        series.append({'label': f'{run} {which}', 'color': color, 'dashed': dashed,
                       'points': pts})
  plot_curves(series, args.curves, f'PSNR on CBSD68-synthetic during training ({args.title})')
  # Grid: the input photo, then each run's student (and teacher).
  grid_rows = []
  for name, path in grid_inputs(study_dir, args.grid_lol, args.grid_dicm):
    cols = [('input', _grid_image(path, args.grid_side))]
    for run in runs:
      for which in ('student', 'teacher'):
        f = os.path.join(work, run, 'study_eval', 'grid', which, name + '.png')
        if os.path.isfile(f):
          cols.append((run if which == 'student' else f'{run} teacher',
                       image_io.load_image_uint8(f)))
    grid_rows.append((name, cols))
  draw_grid(grid_rows, args.grid)

  md_dir = os.path.dirname(os.path.abspath(args.table))

  def rel(path: str) -> str:
    return os.path.relpath(os.path.abspath(path), md_dir)

  first_eval = next((r['evaluation'] for r in runs.values() if r['evaluation']), None)
  lines = [f'# Study results: {args.title}', '',
           f'Generated by `python experiments/study/main.py report` on '
           f'{datetime.date.today().isoformat()} from `{_shown_path(work)}` (see '
           '`docs/study.md` for the setup and the commands). PSNR (dB) / SSIM of the last '
           'checkpoint of each run, student (S) and mean teacher (T), on the 68 CBSD68 photos '
           'darkened synthetically and on the real LOL pair 778. "Best eval" is the highest '
           'student PSNR of the evaluations on CBSD68 during training (chosen on the test set, '
           'so optimistic).', '',
           '| run | labels | unlabeled pool | steps | CBSD68 S | CBSD68 T | LOL 778 S | '
           'LOL 778 T | best eval (step) | train wall | steps/s | device |',
           '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
  for run, r in runs.items():
    ev = (r['evaluation'] or {}).get('models', {})
    pool = '-' if r['method'] != 'mcmt' else (
        '90% of the train lows' + (' + DICM, LIME, LOL lows' if r['unlabeled_dirs'] else ''))
    best = r['best_eval']
    steps = str(r['steps'])
    if r['total_steps'] and r['total_steps'] != r['steps']:
      steps += f' of {r["total_steps"]}'
    cells = [run, f'{r["label_fraction"]:.0%}', pool, steps]
    cells += [_fmt(ev.get(w, {}).get(s)) for s in ('cbsd68', 'lol778')
              for w in ('student', 'teacher')]
    cells.append(f'{best["student_psnr"]:.2f} ({best["step"]})' if best else '-')
    cells.append(f'{_duration(r["train_seconds"])} ({r["calls"]} '
                 f'call{"s" if r["calls"] != 1 else ""})')
    cells.append(f'{r["steps_per_second"]:.2f}' if r['steps_per_second'] else '-')
    cells.append(', '.join(r['devices']) or '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += [''] + reading_aids(runs)
  if first_eval:
    m = first_eval['models']['student']
    lines += ['', 'The inputs themselves (no enhancement): CBSD68 '
              f'{m["cbsd68"]["input_psnr"]:.2f} dB / {m["cbsd68"]["input_ssim"]:.4f}, LOL 778 '
              f'{m["lol778"]["input_psnr"]:.2f} dB / {m["lol778"]["input_ssim"]:.4f}.']
  lines += ['', f'![PSNR against steps]({rel(args.curves)})', '',
            'Solid: student; dashed: teacher (the mean teacher of the MCMT runs).', '',
            f'![Real low-light photos enhanced by each run]({rel(args.grid)})', '',
            'Rows: real low-light photos (LOL eval15 low, DICM), shown at most '
            f'{args.grid_side} pixels wide as enhanced; columns: the input, then each run.', '',
            '## Commands', '']
  commands = [c for r in runs.values() for c in r['commands']]
  if commands:
    lines += ['The training commands (one per `experiments/study/main.py run` call; '
              '`--config.num_train_steps` is where that call stopped):', '', '```', *commands,
              '```', '']
  lines += ['The study script calls that trained, evaluated and reported:', '', '```']
  invocations = []
  for r in runs.values():
    invocations += [c for c in r['invocations'] if c not in invocations]
  evaluated = [r['evaluation']['invocation'] for r in runs.values()
               if r['evaluation'] and r['evaluation'].get('invocation')]
  lines += invocations + sorted(set(evaluated)) + [_invocation(args), '```', '']
  os.makedirs(md_dir, exist_ok=True)
  with open(args.table, 'w') as f:
    f.write('\n'.join(lines))
  payload = {'title': args.title, 'date': datetime.date.today().isoformat(),
             'work': os.path.relpath(work, REPO), 'size': args.size, 'runs': runs}
  manifest = os.path.join(study_dir, 'manifest.json')
  if os.path.isfile(manifest):
    with open(manifest) as f:
      m = json.load(f)
    payload['data'] = {k: m[k] for k in ('seed', 'max_side', 'degradation', 'counts',
                                         'cbsd68_check') if k in m}
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(payload, f, indent=1)
  _log(f'wrote {args.table}, {args.json}, {args.curves}, {args.grid}')
  header = next(i for i, line in enumerate(lines) if line.startswith('| run |'))
  print('\n'.join(lines[header:header + len(runs) + 2]))
  return payload


# ------------------------------------------------------------------------------------------------
# bundle / unbundle


def _safe(run: str) -> str:
  return run.replace('+', 'plus')


def cmd_bundle(args) -> list[str]:
  """Per run: config, logs, evaluation results and the last checkpoint as `.tgz` parts of at most
  15 MiB."""
  work, out = os.path.abspath(args.work), os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  written = []
  for run in _run_list(args.runs, work):
    workdir = os.path.join(work, run)
    step = latest_step(workdir)
    if not step:
      continue
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as tar:
      names = ['config.json', 'metrics.jsonl', 'study_log.jsonl', 'study_eval.json']
      # The evaluation's numbers and the grid photos (not its 68 figures per model and set).
      names += [os.path.relpath(p, workdir) for p in sorted(
          glob.glob(os.path.join(workdir, 'study_eval', '*', '*', 'metrics.json'))
          + glob.glob(os.path.join(workdir, 'study_eval', 'grid', '*', '*.png')))]
      for name in names:
        if os.path.isfile(os.path.join(workdir, name)):
          tar.add(os.path.join(workdir, name), arcname=f'{run}/{name}')
      tar.add(os.path.join(workdir, 'checkpoints', str(step)),
              arcname=f'{run}/checkpoints/{step}')
    data = buf.getvalue()
    for k in range(0, len(data), PART_BYTES):
      path = os.path.join(out, f'{_safe(run)}.tgz.part{k // PART_BYTES:02d}')
      with open(path, 'wb') as f:
        f.write(data[k:k + PART_BYTES])
      written.append(path)
    _log(f'{run}: step {step}, {len(data) / 2**20:.1f} MiB')
  return written


def cmd_unbundle(args) -> list[str]:
  """Restores bundled runs into --work (a run is replaced only by a later step)."""
  work, src = os.path.abspath(args.work), os.path.abspath(args.src)
  restored = []
  for safe in sorted({os.path.basename(p).split('.tgz.part')[0]
                      for p in glob.glob(os.path.join(src, '*.tgz.part*'))}):
    parts = sorted(glob.glob(os.path.join(src, glob.escape(safe) + '.tgz.part*')))
    data = b''.join(open(p, 'rb').read() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(data), mode='r:gz') as tar:
      run = tar.getnames()[0].split('/')[0]
      ckpt = [n for n in tar.getnames() if n.count('/') == 2 and '/checkpoints/' in n]
      step = int(ckpt[0].split('/')[2]) if ckpt else 0
      local = latest_step(os.path.join(work, run))
      evaluated = f'{run}/study_eval.json' in tar.getnames() and not os.path.isfile(
          os.path.join(work, run, 'study_eval.json'))
      if step < local or (step == local and not evaluated):
        _log(f'{run}: the bundle (step {step}) is not newer than {work}/{run}; kept as is')
        continue
      tar.extractall(work, filter='data')
    restored.append(run)
    _log(f'{run}: restored step {step} into {work}/{run}')
  return restored


# ------------------------------------------------------------------------------------------------
# Command line.


def _run_list(value: str, work: str | None = None) -> list[str]:
  """'all', 'core', 'ablations', or a comma list of run names; None/'' = the runs in `work`."""
  if not value:
    present = [r for r in study_config.RUNS if work and os.path.isdir(os.path.join(work, r))]
    return present
  if value == 'all':
    return list(study_config.CORE_RUNS + study_config.ABLATION_RUNS)
  if value == 'core':
    return list(study_config.CORE_RUNS)
  if value == 'ablations':
    return list(study_config.ABLATION_RUNS)
  runs = [r.strip() for r in value.split(',') if r.strip()]
  unknown = [r for r in runs if r not in study_config.RUNS]
  if unknown:
    raise SystemExit(f'unknown run(s) {unknown}; known: {list(study_config.RUNS)}')
  return runs


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)

  def common(p, runs_default=''):
    p.add_argument('--study_dir', default=DEFAULT_STUDY_DIR, help='the prepared study data')
    p.add_argument('--work', default=DEFAULT_WORK, help='the runs go to WORK/RUN')
    p.add_argument('--runs', default=runs_default,
                   help="comma list of runs, 'core', 'ablations' or 'all' (default: "
                        f"{runs_default or 'the runs found in --work'})")
    p.add_argument('--size', default='', choices=('',) + study_config.SIZES,
                   help="configs/study.py size: '' (GPU, the paper's schedule), 'half', "
                   "'small' (CPU scale), 'cpu'")

  p = sub.add_parser('pack', help='copy the sources into a compact folder of the same layout')
  p.add_argument('--sources', '--shared', dest='sources', required=True,
                 help='the folder holding the sources, in the layout of docs/data.md')
  p.add_argument('--pack', default=os.path.join(REPO, 'study_pack'))
  p.add_argument('--max_side', type=int, default=600)
  p.set_defaults(fn=cmd_pack)

  p = sub.add_parser('prepare', help='write the study data folder')
  p.add_argument('--sources', '--shared', dest='sources', required=True,
                 help='the folder holding the sources, in the layout of docs/data.md, or a '
                 'folder written by pack')
  p.add_argument('--study_dir', default=DEFAULT_STUDY_DIR)
  p.add_argument('--seed', type=int, default=study_config.SEED,
                 help='the degradation seed (configs/study.py data.seed)')
  p.add_argument('--max_side', type=int, default=600,
                 help='photos are downscaled to this longer side (data.synthetic.max_side)')
  p.add_argument('--copy', action='store_true', help='copy the real photos instead of linking')
  p.add_argument('--force', action='store_true', help='redo everything')
  p.set_defaults(fn=cmd_prepare)

  p = sub.add_parser('run', help='train the runs (resumable, within a time budget)')
  common(p, 'core')
  p.add_argument('--budget_minutes', type=float, default=0.0, help='0 = no limit')
  p.add_argument('--min_call_seconds', type=float, default=90.0,
                 help='do not start a training call with less time than this left')
  p.add_argument('--overhead_seconds', type=float, default=120.0,
                 help='start-up, compilation and evaluation time of a call, for the step target')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override for every run, e.g. --set model.remat=lmrg')
  p.add_argument('--in_process', action='store_true',
                 help='train in this process (tests; no deadline stop)')
  p.set_defaults(fn=cmd_run)

  p = sub.add_parser('evaluate', help='student/teacher PSNR/SSIM on CBSD68 and LOL 778')
  common(p)
  p.add_argument('--checkpoint', default='latest', choices=('latest', 'best'))
  p.add_argument('--grid_lol', type=int, default=3, help='LOL eval15 low photos in the grid')
  p.add_argument('--grid_dicm', type=int, default=3, help='DICM photos in the grid')
  p.add_argument('--grid_side', type=int, default=400, help='grid photos are enhanced at this size')
  p.set_defaults(fn=cmd_evaluate)

  p = sub.add_parser('report', help='table, JSON, curves and grid')
  common(p)
  p.add_argument('--title', default='GPU runs')
  p.add_argument('--table', default=os.path.join(REPO, 'docs', 'study_results.md'))
  p.add_argument('--json', default=os.path.join(REPO, 'benchmarks', 'results', 'study.json'))
  p.add_argument('--curves', default=os.path.join(REPO, 'docs', 'figures', 'study_curves.png'))
  p.add_argument('--grid', default=os.path.join(REPO, 'docs', 'figures', 'study_grid.png'))
  p.add_argument('--grid_lol', type=int, default=3)
  p.add_argument('--grid_dicm', type=int, default=3)
  p.add_argument('--grid_side', type=int, default=400)
  p.set_defaults(fn=cmd_report)

  p = sub.add_parser('bundle', help="each run's last checkpoint and logs as <= 15 MiB parts")
  common(p)
  p.add_argument('--out', required=True)
  p.set_defaults(fn=cmd_bundle)

  p = sub.add_parser('unbundle', help='restore bundled runs into --work')
  common(p)
  p.add_argument('--src', required=True)
  p.set_defaults(fn=cmd_unbundle)
  return parser


def main(argv: Sequence[str] | None = None) -> Any:
  args = build_parser().parse_args(argv)
  args.argv = None if argv is None else [str(a) for a in argv]
  return args.fn(args)


if __name__ == '__main__':
  main()
