"""`report`: the table, the JSON, the PSNR-vs-step curves and the grid, drawn with PIL."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from crnet_jax import image_io
from experiments.study import shared

PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


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
    calls = shared.read_jsonl(os.path.join(workdir, 'study_log.jsonl'))
    curve = shared.eval_curve(workdir)
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
        'seed': config['seed'], 'steps': shared.latest_step(workdir),
        'total_steps': calls[-1]['total_steps'] if calls else None,
        'train_seconds': round(sum(c['seconds'] for c in calls), 1),
        'calls': len(calls), 'devices': sorted({c['device'] for c in calls}),
        'steps_per_second': shared.steps_per_second(workdir), 'evaluation': evaluation,
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
  """Writes the table, the JSON, the curves and the grid (experiments/study/main.py)."""
  work, study_dir = os.path.abspath(args.work), os.path.abspath(args.study_dir)
  runs = collect(work, shared.run_list(args.runs, work))
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
  for name, path in shared.grid_inputs(study_dir, args.grid_lol, args.grid_dicm):
    cols = [('input', shared.grid_image(path, args.grid_side))]
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
           f'{datetime.date.today().isoformat()} from `{shared.shown_path(work)}` (see '
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
  lines += invocations + sorted(set(evaluated)) + [shared.invocation(args), '```', '']
  os.makedirs(md_dir, exist_ok=True)
  with open(args.table, 'w') as f:
    f.write('\n'.join(lines))
  payload = {'title': args.title, 'date': datetime.date.today().isoformat(),
             'work': os.path.relpath(work, shared.REPO), 'size': args.size, 'runs': runs}
  manifest = os.path.join(study_dir, 'manifest.json')
  if os.path.isfile(manifest):
    with open(manifest) as f:
      m = json.load(f)
    payload['data'] = {k: m[k] for k in ('seed', 'max_side', 'degradation', 'counts',
                                         'cbsd68_check') if k in m}
  os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
  with open(args.json, 'w') as f:
    json.dump(payload, f, indent=1)
  shared.log(f'wrote {args.table}, {args.json}, {args.curves}, {args.grid}')
  header = next(i for i, line in enumerate(lines) if line.startswith('| run |'))
  print('\n'.join(lines[header:header + len(runs) + 2]))
  return payload
