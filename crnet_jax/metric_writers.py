"""What a training run writes for people to read, and the summary it ends with.

In the workdir (process 0 only): TensorBoard events (`tensorboard/`: scalars and low | enhanced |
high images), `metrics.jsonl` (one JSON object per log or evaluation event), `samples/step_<N>.png`
(low | student | teacher | high of the first test images at each evaluation), both through
`MetricWriter`; `config.json` and `parameters.txt` (`parameter_table`), through `write_text`.
`run_summary` reads `metrics.jsonl` back for the lines that end a run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from absl import logging
from clu import parameter_overview
import jax
import numpy as np

from crnet_jax import image_io

PyTree = Any
METRICS_FILE = 'metrics.jsonl'
PARAMETERS_FILE = 'parameters.txt'
SAMPLES_DIR = 'samples'  # samples/step_<N>.png at each evaluation
TENSORBOARD_DIR = 'tensorboard'


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` whole or not at all (`image_io.write_atomically`), synced to disk."""

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())

  image_io.write_atomically(path, write)


def num_scalars(tree: PyTree) -> int:
  """The number of scalars in the arrays of `tree`."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def num_bytes(tree: PyTree) -> int:
  """Bytes of the (global) arrays of `tree`: the size of one checkpoint of it."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def parameter_table(params: PyTree) -> str:
  """One row per parameter array (name, shape, dtype, size, mean, std), then the integer totals."""
  table = parameter_overview.get_parameter_overview(jax.device_get(params))
  rows = [line for line in table.splitlines() if not line.startswith('Total:')]
  return '\n'.join(rows) + (f'\nTotal: {num_scalars(params):,} parameters, '
                            f'{num_bytes(params):,} bytes\n')


def _import_tensorboardx():
  """`import tensorboardX`, without letting it import torch (2+ s per run when installed).

  tensorboardX imports torch, if it can, only to accept torch tensors; we log numpy values.
  """
  if 'torch' in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get('torch', 0) is None:
      del sys.modules['torch']
  return tensorboardX


class MetricWriter:
  """TensorBoard (tensorboardX), `metrics.jsonl` and the sample images, on process 0 only.

  Lines of `metrics.jsonl` with a step after `resume_step` (the step the run starts from: its
  checkpoint's, or 0), or cut short (a kill during a write), are dropped first (the file is
  rewritten atomically), and TensorBoard hides its events after it (`purge_step`): steps that
  run again after a kill are logged once. A context manager (closes TensorBoard's writer).
  """

  def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
    self.enabled = enabled
    self._tb = None
    self._workdir = workdir
    self._jsonl = os.path.join(workdir, METRICS_FILE)
    if enabled:
      self.drop(resume_step + 1)
      tensorboardx = _import_tensorboardx()
      self._tb = tensorboardx.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                            purge_step=resume_step + 1)

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def drop(self, from_step: int, split: str | None = None) -> None:
    """Removes the records with step >= `from_step` (of `split`, or all) and broken lines."""
    if not self.enabled or not os.path.exists(self._jsonl):
      return
    with open(self._jsonl) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        record = json.loads(line)
        step = int(record['step'])
      except (ValueError, KeyError, TypeError):
        continue  # a line cut short by a kill
      if not line.endswith('\n'):
        continue
      if step >= from_step and (split is None or record.get('split') == split):
        continue
      kept.append(line)
    if len(kept) != len(lines):
      logging.info('metrics.jsonl: dropped %d line(s) from step %d on (they are logged again).',
                   len(lines) - len(kept), from_step)
      write_text(self._jsonl, ''.join(kept))

  def scalars(self, step: int, prefix: str, values: Mapping[str, float], **extra) -> None:
    if not self.enabled:
      return
    for key, value in values.items():
      self._tb.add_scalar(f'{prefix}/{key}', float(value), step)
    record = {'step': int(step), 'split': prefix, **extra,
              **{k: float(v) for k, v in values.items()}}
    with open(self._jsonl, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def images(self, step: int, examples: list[dict[str, np.ndarray]]) -> None:
    """One image per example and model: low | enhanced | high side by side."""
    if not self.enabled:
      return
    for i, ex in enumerate(examples):
      for model_name in ('student', 'teacher'):
        if model_name in ex:
          triplet = np.concatenate([ex['low'], ex[model_name], ex['high']], axis=1)
          self._tb.add_image(f'test_{model_name}/{i}_{ex["name"]}',
                             np.clip(triplet, 0.0, 1.0), step, dataformats='HWC')

  def samples(self, step: int, examples: list[dict[str, np.ndarray]]) -> str | None:
    """`samples/step_<step>.png`: a row per example, low | student | teacher | high."""
    if not self.enabled or not examples:
      return None
    from crnet_jax import inference  # pylint: disable=g-import-not-at-top
    path = os.path.join(self._workdir, SAMPLES_DIR, f'step_{step}.png')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image_io.save_image(path, inference.sample_grid(examples))  # atomic
    return path

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _scores(record: Mapping[str, Any]) -> str:
  """'student PSNR 21.52 dB, SSIM 0.6580; teacher ...' of an evaluation record."""
  return '; '.join(f'{who} PSNR {record[f"{who}_psnr"]:.2f} dB, SSIM {record[f"{who}_ssim"]:.4f}'
                   for who in ('student', 'teacher') if f'{who}_psnr' in record)


def run_summary(workdir: str, total_steps: int,
                checkpoints: Mapping[str, str]) -> list[str]:
  """The lines that end a run: last and best scores, checkpoints, samples, the next command.

  The scores are the 'test' records of `workdir/metrics.jsonl` (every evaluation of the run,
  resumed parts included); the best is the student's highest PSNR, as for `workdir/best`.
  `checkpoints` maps 'best' and 'latest' to their folders (those the run has).
  """
  evals = []
  try:
    with open(os.path.join(workdir, METRICS_FILE)) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get('split') == 'test' and 'student_psnr' in record:
          evals.append(record)
  except OSError:
    pass
  lines = [f'Done: {total_steps} steps in {workdir}.']
  if evals:
    last = max(evals, key=lambda r: r['step'])
    top = max(evals, key=lambda r: (r['student_psnr'], -r['step']))
    lines.append(f'Last evaluation (step {last["step"]}): {_scores(last)}.')
    lines.append(f'Best evaluation (step {top["step"]}, by the student\'s PSNR): {_scores(top)}.')
  if checkpoints:
    lines.append(f'Checkpoints: {", ".join(f"{k} {v}" for k, v in checkpoints.items())}.')
  samples = os.path.join(workdir, SAMPLES_DIR)
  if evals and os.path.isdir(samples):
    columns = 'low | student | teacher | high' if 'teacher_psnr' in evals[-1] else (
        'low | student | high')
    lines.append(f'Samples ({columns}): {samples}/step_<N>.png; curves: '
                 f'tensorboard --logdir={os.path.join(workdir, TENSORBOARD_DIR)} '
                 '(pip install tensorboard).')
  lines.append(f'Enhance with it: python main.py --mode=enhance --workdir={workdir} '
               '--input=photos/ --output=enhanced/' +
               (' (--params=teacher for the teacher)' if evals and 'teacher_psnr' in evals[-1]
                else ''))
  return lines
