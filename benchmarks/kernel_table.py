r"""Where a train step's time goes: the kernel table of a jax.profiler trace.

Reads a trace in the Chrome/Perfetto JSON format that `jax.profiler` writes
(`perfetto_trace.json.gz` under `--profile_dir`/<case>/plugins/profile/<run>/, with
`bench.py --profile_dir=DIR`), keeps the kernels of the device (the events of the processes named
`/device:...`, e.g. `/device:GPU:0`), optionally those of one XLA module (`--module`, e.g.
`jit_supervised_step`), divides by the number of steps in the trace and prints:

- the kinds: conv forward (cuDNN fprop), conv input gradient (dgrad), conv weight gradient
  (wgrad), conv padding/workspace (cuDNN's helper kernels), GEMM/dot, elementwise/concat fusions,
  reductions, transposes, copies/memsets, other; each with ms per step, share of the device's
  busy time and kernels per step;
- the top kernels: name, ms per step, share, calls per step, mean microseconds per call.

  python benchmarks/kernel_table.py TRACE.json.gz --steps=8 [--module=jit_mcmt_step] \
      [--top=15] [--markdown] [--json]

Without `--steps` the number of steps is the number of runs of the module (or of the module run
most often) that the host's events mark (`<module>:XLA GPU module`); a trace without those
markers falls back to the most common call count among the kernel names. A trace of a CPU run has no
device process: the XLA operations on the host threads (events with an `hlo_op`) are used then.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
from typing import Any, Iterable, Sequence

KINDS = ('conv forward (fprop)', 'conv input gradient (dgrad)',
         'conv weight gradient (wgrad)', 'conv padding/workspace', 'GEMM/dot',
         'elementwise/concat fusions', 'reductions', 'transposes', 'copies/memsets', 'other')


def load(path: str) -> dict[str, Any]:
  """The trace (a dict with `traceEvents`, or a bare list of events) from JSON, gzipped or not."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rt') as f:
    data = json.load(f)
  return {'traceEvents': data} if isinstance(data, list) else data


def kind(name: str, hlo_op: str = '') -> str:
  """The kind of one kernel, from its name and its XLA operation (`args.hlo_op`)."""
  n, op = name.lower(), hlo_op.lower()
  if n.startswith(('memcpy', 'memset')) or n.startswith('copy') or op.startswith('copy'):
    return 'copies/memsets'
  if 'wgrad' in n or op.startswith('cudnn-conv-bw-filter'):
    return 'conv weight gradient (wgrad)'
  if 'dgrad' in n or op.startswith('cudnn-conv-bw-input'):
    return 'conv input gradient (dgrad)'
  if 'fprop' in n or re.search(r'implicit_?gemm|convolve|conv2d', n):
    return 'conv forward (fprop)'
  if op.startswith('cudnn-conv') or 'cudnn' in n or 'padding' in n:
    return 'conv padding/workspace'
  if re.search(r'gemm|gemv|cublas|cutlass|matmul|dot', n) or op.startswith(('dot', 'custom-call')):
    return 'GEMM/dot'
  if 'reduc' in n or op.startswith('reduce'):
    return 'reductions'
  if 'transpose' in n or op.startswith('transpose'):
    return 'transposes'
  if re.search(r'fusion|concat|loop_|elementwise|broadcast', n) or op.startswith(
      ('fusion', 'concatenate', 'add', 'multiply', 'select')):
    return 'elementwise/concat fusions'
  if n.startswith('convolution') or op.startswith('convolution'):  # XLA:CPU
    return 'conv forward (fprop)'
  return 'other'


def device_kernels(trace: dict[str, Any], module: str = '') -> list[dict[str, Any]]:
  """The complete events ('X') of the device processes (of XLA module `module` if given).

  Without a device process (a CPU run), the host events with an `hlo_op` stand in for kernels.
  """
  events = trace.get('traceEvents', [])
  devices = {e.get('pid') for e in events
             if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and str(e.get('args', {}).get('name', '')).startswith('/device:')}
  if devices:
    kernels = [e for e in events if e.get('ph') == 'X' and e.get('pid') in devices]
  else:
    kernels = [e for e in events if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {})]
  if module:
    kernels = [e for e in kernels if e.get('args', {}).get('hlo_module', module) == module]
  return kernels


_EXECUTION = re.compile(r'^(?:(?P<a>[\w.-]+):XLA [A-Z]+ module|'
                        r'CommonPjRtLoadedExecutable::Execute \((?P<b>[\w.-]+)\))$')


def executions(trace: dict[str, Any]) -> dict[str, int]:
  """How often each XLA module ran in the trace, from the host's execution markers.

  jax's traces mark each run of an executable on the host with `<module>:XLA GPU module` and
  `CommonPjRtLoadedExecutable::Execute (<module>)`; the larger count of the two is taken.
  """
  counts: dict[str, collections.Counter] = {'a': collections.Counter(),
                                            'b': collections.Counter()}
  for e in trace.get('traceEvents', []):
    m = _EXECUTION.match(str(e.get('name', ''))) if e.get('ph') == 'X' else None
    if m:
      which = 'a' if m.group('a') else 'b'
      counts[which][m.group(which)] += 1
  return dict(counts['a'] | counts['b'])


def infer_steps(kernels: Iterable[dict[str, Any]], trace: dict[str, Any] | None = None,
                module: str = '') -> int:
  """The steps in the trace: the runs of `module` (or of the module run most often) from the
  host's execution markers; without them, the most common call count among the kernel names
  (ties: the smallest); at least 1."""
  runs = executions(trace) if trace is not None else {}
  if module and runs.get(module):
    return runs[module]
  if runs and not module:
    return max(runs.values())
  counts = collections.Counter(e['name'] for e in kernels)
  if not counts:
    return 1
  freq = collections.Counter(counts.values())
  best = max(freq.values())
  return min(c for c, f in freq.items() if f == best)


def table(trace: dict[str, Any], steps: int | None = None, module: str = '',
          top: int = 15) -> dict[str, Any]:
  """The kernel table of `trace` per step (durations in the trace are microseconds)."""
  kernels = device_kernels(trace, module)
  steps = steps or infer_steps(kernels, trace, module)
  total_us = sum(float(e.get('dur', 0.0)) for e in kernels)
  by_kind: dict[str, list[float]] = {k: [0.0, 0] for k in KINDS}
  by_name: dict[str, list[Any]] = {}
  for e in kernels:
    dur = float(e.get('dur', 0.0))
    k = kind(e['name'], str(e.get('args', {}).get('hlo_op', '')))
    by_kind[k][0] += dur
    by_kind[k][1] += 1
    entry = by_name.setdefault(e['name'], [0.0, 0, k])
    entry[0] += dur
    entry[1] += 1
  share = lambda us: us / total_us if total_us else 0.0
  kinds = [{'kind': k, 'ms_per_step': us / 1e3 / steps, 'share': share(us),
            'kernels_per_step': n / steps}
           for k, (us, n) in sorted(by_kind.items(), key=lambda kv: -kv[1][0]) if n]
  top_kernels = [{'kernel': name, 'kind': k, 'ms_per_step': us / 1e3 / steps,
                  'share': share(us), 'calls_per_step': n / steps, 'mean_us': us / n}
                 for name, (us, n, k) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]]
  return {'module': module or None, 'steps': steps, 'busy_ms_per_step': total_us / 1e3 / steps,
          'kernels_per_step': len(kernels) / steps, 'kinds': kinds, 'top': top_kernels}


def _short(name: str, width: int = 90) -> str:
  return name if len(name) <= width else name[:width - 3] + '...'


def markdown(result: dict[str, Any], title: str = '') -> str:
  """The table as markdown (as benchmarks/README.md shows it)."""
  lines = [f'## {title}', ''] if title else []
  lines += [f"Device busy {result['busy_ms_per_step']:.2f} ms per step in "
            f"{result['kernels_per_step']:.0f} kernels ({result['steps']} steps in the trace"
            + (f", module `{result['module']}`" if result['module'] else '') + ').', '',
            '| kind | ms per step | share | kernels per step |', '| --- | --- | --- | --- |']
  for r in result['kinds']:
    lines.append(f"| {r['kind']} | {r['ms_per_step']:.3f} | {100 * r['share']:.1f}% | "
                 f"{r['kernels_per_step']:.1f} |")
  lines += ['', '| kernel | kind | ms per step | share | calls per step | mean us |',
            '| --- | --- | --- | --- | --- | --- |']
  for r in result['top']:
    name = _short(r['kernel']).replace('|', '\\|')
    lines.append(f"| `{name}` | {r['kind']} | {r['ms_per_step']:.3f} | "
                 f"{100 * r['share']:.1f}% | {r['calls_per_step']:.1f} | {r['mean_us']:.1f} |")
  return '\n'.join(lines) + '\n'


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('trace')
  parser.add_argument('--steps', type=int, default=None, help='steps in the trace')
  parser.add_argument('--module', default='', help='only this XLA module, e.g. jit_mcmt_step')
  parser.add_argument('--top', type=int, default=15)
  parser.add_argument('--json', action='store_true', help='print JSON instead of markdown')
  args = parser.parse_args(argv)
  result = table(load(args.trace), args.steps, args.module, args.top)
  if args.json:
    print(json.dumps(result))
  else:
    sys.stdout.write(markdown(result, args.trace))


if __name__ == '__main__':
  main()
