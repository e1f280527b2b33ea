#!/usr/bin/env bash
# CRNet on 10% of LOL v1 (`configs/lol.py:few`: the paper's network and schedule, 100 epochs,
# bfloat16 compute) trained from a pack (`experiments/lol/lol.py pack`), evaluated on eval15 every
# 10 epochs and at the last step, and written as a release (float16 parameters + model.json).
#
#   bash experiments/lol/lol_gpu.sh PACK OUT [--config.field=value ...]
#
# OUT gets train.log, metrics.jsonl, config.json, summary.json and release/ (params.npz,
# model.json); the run's workdir is OUT/run (checkpoints: rerun the same command to resume).
# LOL_CONFIG_ARG (default `few`) picks another arm or size, e.g. `few,test` for a smoke run on a
# CPU. On one H200 the default is predicted at about 7.5 minutes (the one run measured so far,
# before two start-up fixes, needed more than 10: docs/lol_study.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
pack=$(realpath "$1"); out=$(realpath -m "$2"); shift 2
arg=${LOL_CONFIG_ARG:-few}
mkdir -p "$out"
device=$(python -c 'import jax; d = jax.devices()[0]; print(f"{d.platform}: {d.device_kind}")' \
  2>/dev/null)
command="bash experiments/lol/lol_gpu.sh PACK OUT $*"
start=$(date +%s)
python main.py --config="configs/lol.py:$arg" --workdir="$out/run" \
  --config.data.lol_dir="$pack" --config.data.label_fraction=1.0 \
  --config.data.data_dir="$out/tfds" "$@" 2>&1 | tee "$out/train.log"
trained=$(date +%s)
cp "$out/run/metrics.jsonl" "$out/run/config.json" "$out/"
rm -rf "$out/release"
python experiments/lol/lol.py release --workdir "$out/run" --out "$out/release" \
  --trained_on "LOL v1, the seeded 10% of our485 (49 pairs, data.seed 0) in $(basename "$pack")" \
  --command "$command" --device "$device" | tee "$out/release.json"
python - "$out" "$((trained - start))" "$device" "$arg" <<'PY'
import json, sys
out, seconds, device, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
records = [json.loads(l) for l in open(f'{out}/metrics.jsonl')]
test = [r for r in records if r['split'] == 'test']
train = [r for r in records if r['split'] == 'train']
last = test[-1] if test else {}
best = max(test, key=lambda r: r['student_psnr']) if test else {}
summary = {'config': f'configs/lol.py:{arg}', 'device': device, 'train_and_eval_s': seconds,
           'steps': train[-1]['step'] if train else 0,
           'steps_per_second': train[-1].get('steps_per_second') if train else None,
           'last': {k: last.get(k) for k in ('step', 'student_psnr', 'student_ssim',
                                              'input_psnr', 'input_ssim')},
           'best': {k: best.get(k) for k in ('step', 'student_psnr', 'student_ssim')},
           'paper': {'student_psnr': 21.94, 'student_ssim': 0.9086}}
json.dump(summary, open(f'{out}/summary.json', 'w'), indent=1)
print(json.dumps(summary))
PY
