"""What the verbs of the study share: paths, file listing, run state, the metrics readers.

`prepare.py`, `run.py`, `evaluate.py`, `report.py` and `bundle.py` (one per subcommand of
`experiments/study/main.py`) read a run's workdir through these; the LOL study
(`experiments/lol/`) reads its `metrics.jsonl` through them too.
"""

from __future__ import annotations

import ast
import json
import os
import statistics
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image

from configs import study as study_config
from crnet_jax import image_io
from crnet_jax.datasets import base as datasets_base
from crnet_jax.datasets import synthetic_pairs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_STUDY_DIR = os.path.join(REPO, 'study_data')
DEFAULT_WORK = os.path.join(REPO, 'runs', 'study')
LOL_TEST = '778'


def log(msg: str) -> None:
  print(f'[study] {msg}', flush=True)


def list_images(folder: str) -> list[str]:
  """The image files of `folder` (by extension, not hidden), in natural name order."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'{folder}: folder not found')
  names = [n for n in os.listdir(folder) if not n.startswith('.')
           and os.path.splitext(n)[1].lower() in image_io.IMAGE_EXTENSIONS]
  return [os.path.join(folder, n) for n in sorted(names, key=datasets_base.natural_key)]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def read_ids(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 image as PNG atomically (a killed prepare leaves no half-written file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image_io.write_atomically(path, lambda tmp: Image.fromarray(image).save(tmp, format='PNG'))


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for item in items or ():
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise SystemExit(f'--set {item!r}: expected KEY=VALUE (e.g. data.batch_size=8)')
    out.append((key.strip(), value.strip()))
  return out


def config_arg(run: str, size: str) -> str:
  return f'{run},{size}' if size else run


def load_config(run: str, size: str, study_dir: str, overrides: Sequence[tuple[str, str]] = ()):
  """The run's config as main.py builds it from the same flags."""
  config = study_config.get_config(config_arg(run, size))
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


def checkpoint_steps(workdir: str, sub: str = 'checkpoints') -> list[int]:
  folder = os.path.join(workdir, sub)
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def latest_step(workdir: str) -> int:
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else 0


def read_jsonl(path: str) -> list[dict[str, Any]]:
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


def eval_curve(workdir: str, records: list[dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
  """The test evaluations of `metrics.jsonl`, one per step (the last, after a resumed run
  redid steps), by step; `records`: that file's records, when the caller has read them."""
  by_step = {}
  if records is None:
    records = read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  for r in records:
    if r.get('split') == 'test':
      by_step[int(r['step'])] = r
  return [by_step[s] for s in sorted(by_step)]


def steps_per_second(workdir: str) -> float | None:
  """The median training speed logged by the run (None before its first log)."""
  rates = [r['steps_per_second'] for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
           if r.get('split') == 'train' and r.get('steps_per_second')]
  return float(statistics.median(rates)) if rates else None


def shown_path(path: str) -> str:
  """`path` relative to the repo when inside it, else absolute."""
  rel = os.path.relpath(os.path.abspath(path), REPO)
  return os.path.abspath(path) if rel.startswith('..') else rel


def invocation(args) -> str:
  """This script's command line (as given to main(), or sys.argv)."""
  argv = sys.argv[1:] if args.argv is None else args.argv
  return 'python experiments/study/main.py ' + ' '.join(
      a if ' ' not in a else repr(a) for a in argv)


def run_list(value: str, work: str | None = None) -> list[str]:
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


def grid_inputs(study_dir: str, num_lol: int, num_dicm: int) -> list[tuple[str, str]]:
  """(name, file) of the real low-light photos of the grid: LOL 778, other LOL eval15 lows, DICM."""
  lol = [os.path.join(study_dir, 'lol778', 'low', f)
         for f in sorted(os.listdir(os.path.join(study_dir, 'lol778', 'low')))]
  lol += list_images(os.path.join(study_dir, 'real_dark', 'lol_low'))
  dicm = list_images(os.path.join(study_dir, 'real_dark', 'dicm'))
  return ([('lol_' + stem(f), f) for f in lol[:num_lol]]
          + [('dicm_' + stem(f), f) for f in dicm[:num_dicm]])


def grid_image(path: str, side: int) -> np.ndarray:
  """A grid photo as float (H, W, 3), downscaled to `side` pixels on its longer side."""
  return image_io.load_image_uint8(path) if not side else synthetic_pairs.resize_max_side(
      image_io.load_image_uint8(path), side)
