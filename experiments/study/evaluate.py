"""`evaluate`: the student's and the teacher's PSNR/SSIM on CBSD68 and LOL 778, and the grid."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from configs import default as default_config
from crnet_jax import image_io
from experiments.study import shared


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
  """Evaluates each run with a checkpoint (experiments/study/main.py); returns {run: results}."""
  from crnet_jax import export  # pylint: disable=g-import-not-at-top
  from crnet_jax import inference  # pylint: disable=g-import-not-at-top
  from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  study_dir, work = os.path.abspath(args.study_dir), os.path.abspath(args.work)
  sets = {'cbsd68': (os.path.join(study_dir, 'cbsd68', 'low'),
                     os.path.join(study_dir, 'cbsd68', 'high')),
          'lol778': (os.path.join(study_dir, 'lol778', 'low'),
                     os.path.join(study_dir, 'lol778', 'high'))}
  grid = shared.grid_inputs(study_dir, args.grid_lol, args.grid_dicm)
  results = {}
  for run in shared.run_list(args.runs, work):
    workdir = os.path.join(work, run)
    if not shared.latest_step(workdir):
      shared.log(f'{run}: no checkpoint; skipped')
      continue
    with open(os.path.join(workdir, 'config.json')) as f:
      method = json.load(f)['method']
    if args.checkpoint == 'best' and shared.checkpoint_steps(workdir, 'best'):
      manager = checkpointing.best_manager(workdir, read_only=True)
      step = manager.best_step()
      manager.close()
    else:
      step = shared.latest_step(workdir)
    t0 = time.time()
    out = {'run': run, 'method': method, 'checkpoint': args.checkpoint, 'step': step,
           'invocation': shared.invocation(args), 'models': {}}
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
                            enhancer(shared.grid_image(path, args.grid_side) / 255.0))
    out['seconds'] = round(time.time() - t0, 1)
    with open(os.path.join(workdir, 'study_eval.json'), 'w') as f:
      json.dump(out, f, indent=1)
    parts = [f'{w} {s} {m[s]["psnr"]:.2f} dB / {m[s]["ssim"]:.4f}'
             for w, m in out['models'].items() for s in m]
    shared.log(f'{run} (step {step}, {out["seconds"]:.0f} s): ' + '; '.join(parts))
    results[run] = out
  return results
