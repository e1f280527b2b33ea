"""`bundle` / `unbundle`: runs as `.tgz` parts of at most 15 MiB, to move them between machines."""

from __future__ import annotations

import glob
import io
import os
import tarfile

from experiments.study import shared

PART_BYTES = 15 * 2**20


def _safe(run: str) -> str:
  return run.replace('+', 'plus')


def cmd_bundle(args) -> list[str]:
  """Per run: config, logs, evaluation results and the last checkpoint as `.tgz` parts of at most
  15 MiB."""
  work, out = os.path.abspath(args.work), os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  written = []
  for run in shared.run_list(args.runs, work):
    workdir = os.path.join(work, run)
    step = shared.latest_step(workdir)
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
    shared.log(f'{run}: step {step}, {len(data) / 2**20:.1f} MiB')
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
      local = shared.latest_step(os.path.join(work, run))
      evaluated = f'{run}/study_eval.json' in tar.getnames() and not os.path.isfile(
          os.path.join(work, run, 'study_eval.json'))
      if step < local or (step == local and not evaluated):
        shared.log(f'{run}: the bundle (step {step}) is not newer than {work}/{run}; kept as is')
        continue
      tar.extractall(work, filter='data')
    restored.append(run)
    shared.log(f'{run}: restored step {step} into {work}/{run}')
  return restored
