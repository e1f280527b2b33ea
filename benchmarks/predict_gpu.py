r"""Predicted GPU step times of each performance option, from compiling alone and one profile.

A profile of a train step measured on a GPU (`kernel_table.py --json` of its trace) gives the
time of each kind of kernel; `hlo_counts.py --target` of the same step with the default options
gives the bytes each kind moves. Their ratio is the bandwidth each kind reached on that GPU (the
convolutions' and GEMMs' too: at C = 32 they are far from their arithmetic peak). For every other
option compiled the same way, the prediction is

    sum over kinds of (its bytes / that kind's measured bandwidth)
    + (the launch gaps, i.e. measured step time - GPU busy time, and the profile's kinds that
       have no counterpart in the compiled module, cuDNN's padding) per kernel x its kernels.

Cases without a profile of their own (the inference passes) are predicted from the first
profile's figures; where the GPU's benchmark measured the case (the default options), the table
puts the measurement beside the prediction: a check of the method on figures it was not fitted
to.

Pallas kernels have no measured counterpart: they are predicted twice, at the bandwidth of
cuDNN's forward convolutions (`pallas_slow`) and at that of XLA's elementwise fusions
(`pallas_fast`). A prediction, to be checked on a GPU (`gpu_check.sh` times every option).

  python benchmarks/predict_gpu.py --counts=benchmarks/results/aot-h100-hlo-counts.jsonl \
      --profile=supervised=benchmarks/results/h200-2026-12-04-kernels-supervised.json \
      --profile=mcmt=benchmarks/results/h200-2026-12-04-kernels-mcmt.json \
      --bench=benchmarks/results/h200-2026-12-04-bench.jsonl

Prints each profile's bandwidths by kind, a Markdown table, then one JSON line per case and
option (`predicted_ms`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

# hlo_counts.py's kernel kinds -> kernel_table.py's.
KIND_OF = {
    'conv_fprop': 'conv forward (fprop)',
    'conv_dgrad': 'conv input gradient (dgrad)',
    'conv_wgrad': 'conv weight gradient (wgrad)',
    'gemm': 'GEMM/dot',
    'elementwise': 'elementwise/concat fusions',
    'concatenate': 'elementwise/concat fusions',
    'triton_fusion': 'elementwise/concat fusions',
    'reduction': 'reductions',
    'transpose': 'transposes',
    'copy': 'copies/memsets',
}
PALLAS = 'pallas_or_triton'
PALLAS_AS = {'pallas_slow': 'conv forward (fprop)', 'pallas_fast': 'elementwise/concat fusions'}


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip().startswith('{')]


def bandwidths(default: dict[str, Any], profile: dict[str, Any]) -> dict[str, float]:
  """Bytes per ms each profile kind moved: the default's compiled bytes over its measured ms."""
  ms = {k['kind']: k['ms_per_step'] for k in profile['kinds']}
  moved: dict[str, float] = {}
  for kind, size in default['bytes_by_kind'].items():
    if kind in KIND_OF:
      moved[KIND_OF[kind]] = moved.get(KIND_OF[kind], 0.0) + size
  return {kind: moved[kind] / ms[kind] for kind in moved if ms.get(kind)}


@dataclasses.dataclass
class Calibration:
  """What one profiled step says: each kind's bandwidth, and the time per kernel launched that
  bytes do not explain (launch gaps, and kinds without a compiled counterpart)."""
  case: str
  bandwidth: dict[str, float]
  ms_per_kernel: float

  @classmethod
  def of(cls, case: str, default: dict[str, Any], profile: dict[str, Any],
         step_ms: float) -> 'Calibration':
    bw = bandwidths(default, profile)
    unmatched = sum(k['ms_per_step'] for k in profile['kinds'] if k['kind'] not in bw)
    gaps = step_ms - profile['busy_ms_per_step']
    return cls(case, bw, (unmatched + gaps) / default['kernels_run'])

  def predict(self, record: dict[str, Any]) -> dict[str, float]:
    """ms per call of `record` (`pallas_fast` / `pallas_slow` when it has Pallas kernels)."""
    base = self.ms_per_kernel * record['kernels_run']
    for kind, size in record['bytes_by_kind'].items():
      if kind in KIND_OF:
        base += size / self.bandwidth[KIND_OF[kind]]
    pallas = record['bytes_by_kind'].get(PALLAS, 0)
    if not pallas:
      return {'predicted': base}
    return {name: base + pallas / self.bandwidth[kind] for name, kind in PALLAS_AS.items()}


def _memory(record: dict[str, Any]) -> int:
  """The executable's bytes: arguments + outputs + temporaries - the outputs aliasing inputs."""
  return (record['argument_bytes'] + record['output_bytes'] + record['temp_bytes']
          - record['alias_bytes'])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--counts', required=True, help='hlo_counts.py --target JSON lines')
  parser.add_argument('--profile', action='append', default=[], required=True,
                      help='CASE=kernel_table.py --json of that step measured on a GPU; cases '
                           'without one are predicted from the first')
  parser.add_argument('--bench', required=True,
                      help="bench.py JSON lines of the same GPU: each case's measured time")
  args = parser.parse_args(argv)
  records = _read_jsonl(args.counts)
  measured = {r['case']: r for r in _read_jsonl(args.bench) if r.get('framework') == 'jax'}
  defaults = {r['case']: r for r in records if r['option'] == 'default'}
  calibrations = {}
  for item in args.profile:
    case, _, path = item.partition('=')
    if case not in defaults or case not in measured:
      sys.exit(f'error: --profile={item}: no default record of {case!r} in --counts, '
               f'or no {case!r} record in --bench')
    with open(path, encoding='utf-8') as f:
      calibrations[case] = Calibration.of(case, defaults[case], json.load(f),
                                          measured[case]['median_ms'])
  for c in calibrations.values():
    rates = ', '.join(f'{kind} {bw / 1e9:.2f}' for kind, bw in sorted(c.bandwidth.items()))
    print(f'{c.case}: TB/s by kind: {rates}; {c.ms_per_kernel * 1e3:.2f} us per kernel\n')
  first = calibrations[args.profile[0].partition('=')[0]]
  rows = []
  for r in records:
    calibration = calibrations.get(r['case'], first)
    bench = measured.get(r['case'])
    for variant, ms in calibration.predict(r).items():
      row = {'case': r['case'], 'option': r['option'], 'variant': variant,
             **({'path': r['path']} if 'path' in r else {}),
             'calibrated_on': calibration.case, 'kernels_run': r['kernels_run'],
             'bytes': r['bytes'], 'memory_gib': round(_memory(r) / 2**30, 2),
             'predicted_ms': round(ms, 2),
             'compiled_for': r['device']}
      if bench:
        row.update(measured_default_ms=round(bench['median_ms'], 2),
                   speedup_vs_measured_default=round(bench['median_ms'] / ms, 3),
                   measured_on=bench['device'])
      rows.append(row)
  print('| case | option | calibrated on | kernels | GB moved | memory GiB | predicted ms | '
        'measured ms (default) | vs measured default |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for r in rows:
    option = (r['option'] + (f", {r['path']}" if 'path' in r else '')
              + ('' if r['variant'] == 'predicted' else f" ({r['variant']})"))
    measured_ms = r.get('measured_default_ms')
    shown = ('- | -' if measured_ms is None else
             f"{measured_ms:.1f} | {r['speedup_vs_measured_default']:.2f}x")
    print(f"| {r['case']} | {option} | {r['calibrated_on']} | {r['kernels_run']} | "
          f"{r['bytes'] / 1e9:.1f} | {r['memory_gib']:.2f} | {r['predicted_ms']:.1f} | {shown} |")
  for r in rows:
    print(json.dumps(r))


if __name__ == '__main__':
  main()
