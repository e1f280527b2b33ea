r"""LOL v1 tools: a compact copy of the labeled pairs, the identity baseline, a released model.

  # The seeded 10% of LOL's train pairs (what `configs/lol.py:few` trains on) and eval15, copied
  # into a small folder of the same layout (about 45 MiB instead of 330): a GPU machine without
  # the whole dataset (an offline or air-gapped one) trains `few` from it.
  python experiments/lol/lol.py pack --lol_dir /path/to/LOL --out lol_pack

  # All of LOL at half resolution (300x200; label_fraction 1 keeps every pair), for the CPU-scale
  # study, and real dark photos shrunk alike for its unlabeled pool:
  python experiments/lol/lol.py pack --lol_dir /path/to/LOL --out lol_half --label_fraction 1 \
      --scale 0.5
  python experiments/lol/lol.py shrink --src /path/to/DICM --out dark_half/DICM --max_side 300

  # The input's own PSNR / SSIM on eval15 (the identity baseline), as JSON.
  python experiments/lol/lol.py baseline --lol_dir /path/to/LOL

  # The last checkpoint of a run as a release (float16 parameters + model.json, crnet_jax/release.py).
  python experiments/lol/lol.py release --workdir runs/lol/few --out models/crnet_lol10

`experiments/lol/lol_gpu.sh` chains them on a GPU: train `few` from a pack, evaluate it on eval15
and write the release.

A pack keeps the file names, so the pairs are those that `data.label_fraction` and `data.seed`
select from the whole folder; trained from a pack, a run sets `data.label_fraction=1.0` (the pack
holds only the labeled pairs) and gets the same 49 * 30 // 16 = 91 steps per epoch. The order of
its patches differs from a run on the whole folder (the records are another set), not its data.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from experiments.study import shared as study_shared  # noqa: E402  (metrics.jsonl reader)
from configs import lol as lol_configs  # noqa: E402
from crnet_jax import datasets  # noqa: E402
from crnet_jax import image_io  # noqa: E402
from crnet_jax import input_pipeline  # noqa: E402
from crnet_jax import losses  # noqa: E402
from crnet_jax import release  # noqa: E402
from crnet_jax.datasets import lol as lol_dataset  # noqa: E402

PACK_FILE = 'PACK.json'


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def _copy(src: str, dst: str, scale: float) -> None:
  """Copies an image file, or writes it downscaled by `scale` (box filter, PNG) when < 1."""
  if scale >= 1.0:
    shutil.copyfile(src, dst)
    return
  image = Image.open(src).convert('RGB')
  size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
  image.resize(size, Image.Resampling.BOX).save(os.path.splitext(dst)[0] + '.png')


def cmd_shrink(args) -> list[str]:
  """Writes every image of `args.src` with its longer side at most `args.max_side` (PNG)."""
  out = os.path.abspath(args.out)
  if os.path.isdir(out) and os.listdir(out):
    raise SystemExit(f'error: {out}: exists and is not empty; shrink into a new folder')
  os.makedirs(out, exist_ok=True)
  written = []
  for name in sorted(os.listdir(args.src)):
    src = os.path.join(args.src, name)
    if not os.path.isfile(src) or not name.lower().endswith(image_io.IMAGE_EXTENSIONS):
      continue
    with Image.open(src) as image:
      scale = min(1.0, args.max_side / max(image.size))
    dst = os.path.join(out, os.path.splitext(name)[0] + '.png')
    if scale < 1.0:
      _copy(src, dst, scale)
    else:
      with Image.open(src) as image:
        image.convert('RGB').save(dst)
    written.append(dst)
  print(f'wrote {len(written)} image(s) to {out} (longer side <= {args.max_side})')
  return written


def cmd_pack(args) -> dict[str, Any]:
  """Copies the labeled train pairs (seeded split) and every test pair into `args.out`."""
  out = os.path.abspath(args.out)
  if os.path.isdir(out) and os.listdir(out):
    raise SystemExit(f'error: {out}: exists and is not empty; pack into a new folder')
  config = lol_configs.get_config('few')
  config.data.lol_dir = args.lol_dir
  config.data.label_fraction = args.label_fraction
  config.data.seed = args.seed
  if args.data_dir:
    config.data.data_dir = args.data_dir
  labeled, _, n = input_pipeline._train_data_counts(config)  # pylint: disable=protected-access
  builder = input_pipeline._paired_builder(config)  # pylint: disable=protected-access
  names = [datasets.split_metadata(builder, 'train')['names'][i] for i in labeled]
  items = lol_dataset.lol_items(lol_dataset.resolve_root(args.lol_dir, 'v1'), 'v1')
  train = {i.name: i for i in items['train']}
  files = []
  for split, dirname, chosen in (('train', 'our485', [train[k] for k in names]),
                                 ('test', 'eval15', items['test'])):
    for item in chosen:
      for kind, src in (('low', item.low), ('high', item.high)):
        dst = os.path.join(out, dirname, kind, os.path.basename(src))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _copy(src, dst, args.scale)
        dst = dst if args.scale >= 1.0 else os.path.splitext(dst)[0] + '.png'
        files.append({'file': os.path.relpath(dst, out), 'sha256': _sha256(dst), 'split': split})
  manifest = {'source_pairs': n, 'label_fraction': args.label_fraction, 'seed': args.seed,
              'scale': args.scale,
              'labeled': sorted(names, key=lambda s: (len(s), s)),
              'num_test': len(items['test']), 'files': files,
              'mib': round(sum(os.path.getsize(os.path.join(out, f['file'])) for f in files)
                           / 2**20, 2)}
  with open(os.path.join(out, PACK_FILE), 'w') as f:
    json.dump(manifest, f, indent=1)
  print(f'packed {len(names)} of {n} train pairs (label_fraction {args.label_fraction}, seed '
        f'{args.seed}) and {len(items["test"])} test pairs into {out}: {manifest["mib"]} MiB')
  return manifest


def cmd_baseline(args) -> dict[str, Any]:
  """PSNR / SSIM of the low image itself against its ground truth, per eval15 pair and mean."""
  items = lol_dataset.lol_items(lol_dataset.resolve_root(args.lol_dir, 'v1'), 'v1')['test']
  rows = []
  for item in items:
    low, high = image_io.load_image(item.low), image_io.load_image(item.high)
    rows.append({'name': item.name, 'psnr': float(losses.psnr(low, high)),
                 'ssim': float(losses.ssim(low, high))})
  result = {'what': 'identity (the low image) on LOL v1 eval15', 'num_images': len(rows),
            'psnr': float(np.mean([r['psnr'] for r in rows])),
            'ssim': float(np.mean([r['ssim'] for r in rows])), 'images': rows}
  print(json.dumps(result if args.per_image else {k: v for k, v in result.items()
                                                  if k != 'images'}))
  return result


def _test_metrics(workdir: str, step: int) -> dict[str, float]:
  """The `test` record of `step` in the run's metrics.jsonl ({} if none)."""
  found = next((r for r in study_shared.eval_curve(workdir) if int(r['step']) == step), {})
  return {k: v for k, v in found.items() if k.endswith(('_psnr', '_ssim')) or k == 'num_images'}


def cmd_release(args) -> str:
  """Writes the run's last (or best) checkpoint's parameters as a release folder."""
  from crnet_jax import checkpointing  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(args.workdir)
  with open(os.path.join(workdir, 'config.json')) as f:
    run_config = json.load(f)
  variables, step = checkpointing.restore_variables(workdir, args.checkpoint)
  params = variables['params' if args.params == 'student' else 'teacher_params']
  model_config = release.model_config_from_dict(run_config['model'])
  d = run_config['data']
  info = {
      'trained_on': args.trained_on or f"{d['dataset']} ({d.get('lol_variant', '')}), label "
                                        f"fraction {d['label_fraction']}",
      'method': run_config['method'], 'run': run_config.get('run_name', ''),
      'parameters': args.params, 'checkpoint': args.checkpoint, 'step': int(step),
      'compute_dtype': run_config['model']['dtype'],
      'eval': _test_metrics(workdir, int(step)),
      'command': args.command, 'device': args.device,
      'date': datetime.date.today().isoformat(),
  }
  folder = release.save_release(args.out, params, model_config, info)
  print(json.dumps({'release': folder, **info}))
  return folder


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='verb', required=True)
  p = sub.add_parser('pack', help='the labeled train pairs and eval15 into a compact folder')
  p.add_argument('--lol_dir', required=True, help='the LOL v1 folder (our485/, eval15/)')
  p.add_argument('--out', required=True, help='a new folder')
  p.add_argument('--label_fraction', type=float, default=0.1)
  p.add_argument('--seed', type=int, default=0, help='config.data.seed of the runs')
  p.add_argument('--data_dir', default='', help="TFDS cache (default: the config's)")
  p.add_argument('--scale', type=float, default=1.0,
                 help='< 1: write the images downscaled by this factor (box filter, PNG)')
  p.set_defaults(fn=cmd_pack)
  p = sub.add_parser('shrink', help='a folder of images with their longer side capped (PNG)')
  p.add_argument('--src', required=True)
  p.add_argument('--out', required=True, help='a new folder')
  p.add_argument('--max_side', type=int, default=300)
  p.set_defaults(fn=cmd_shrink)
  p = sub.add_parser('baseline', help="eval15's identity PSNR / SSIM")
  p.add_argument('--lol_dir', required=True)
  p.add_argument('--per_image', action='store_true')
  p.set_defaults(fn=cmd_baseline)
  p = sub.add_parser('release', help="a run's parameters as a float16 release folder")
  p.add_argument('--workdir', required=True)
  p.add_argument('--out', required=True, help='a new folder')
  p.add_argument('--checkpoint', choices=('latest', 'best'), default='latest')
  p.add_argument('--params', choices=('student', 'teacher'), default='student')
  p.add_argument('--trained_on', default='')
  p.add_argument('--command', default='')
  p.add_argument('--device', default='')
  p.set_defaults(fn=cmd_release)
  return parser


def main(argv: Sequence[str] | None = None) -> Any:
  args = build_parser().parse_args(argv)
  return args.fn(args)


if __name__ == '__main__':
  main()
