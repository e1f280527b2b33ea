"""The one-command GPU check (benchmarks/gpu_check.sh) at tiny sizes, and its trace parser."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check
from benchmarks import kernel_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------
# The kernel table of a trace.

# (name, hlo_op, microseconds per call, calls per step, expected kind)
KERNELS = [
    ('sm90_xmma_fprop_implicit_gemm_bf16_tile128', 'cudnn-conv-bias-activation.1', 100.0, 1,
     'conv forward (fprop)'),
    ('sm90_xmma_wgrad_indexed_implicit_gemm_bf16', 'cudnn-conv-bw-filter.2', 50.0, 2,
     'conv weight gradient (wgrad)'),
    ('sm90_xmma_dgrad_implicit_gemm_bf16', 'cudnn-conv-bw-input.3', 40.0, 1,
     'conv input gradient (dgrad)'),
    ('gemm_fusion_dot_general_7', 'gemm_fusion_dot_general.7', 30.0, 1, 'GEMM/dot'),
    ('loop_add_fusion_3', 'loop_add_fusion.3', 10.0, 3, 'elementwise/concat fusions'),
    ('input_reduce_fusion_2', 'input_reduce_fusion.2', 5.0, 2, 'reductions'),
    ('input_transpose_fusion', 'input_transpose_fusion', 4.0, 1, 'transposes'),
    ('MemcpyD2D', 'copy.4', 1.0, 4, 'copies/memsets'),
    ('nhwcAddPaddingKernel<bf16>', 'cudnn-conv.5', 2.0, 1, 'conv padding/workspace'),
    ('mystery_kernel', 'custom.9', 3.0, 1, 'other'),
]
STEPS = 4


def synthetic_trace(steps=STEPS, markers=True):
  """A trace as jax.profiler writes it: a GPU process with kernels of module jit_step (plus one of
  another module), a host process with its own events and one execution marker per step."""
  events = [
      {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
      {'ph': 'M', 'pid': 701, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
  ]
  ts = 0.0
  for _ in range(steps):
    if markers:
      events.append({'ph': 'X', 'pid': 701, 'tid': 2, 'ts': ts, 'dur': 900.0,
                     'name': 'jit_step:XLA GPU module'})
    events.append({'ph': 'X', 'pid': 701, 'tid': 2, 'ts': ts, 'dur': 5000.0,
                   'name': '$bench.py:259 step'})  # host time: never a kernel
    for name, op, dur, calls, _ in KERNELS:
      for _ in range(calls):
        events.append({'ph': 'X', 'pid': 1, 'tid': 14, 'ts': ts, 'dur': dur, 'name': name,
                       'args': {'hlo_module': 'jit_step', 'hlo_op': op}})
        ts += dur
  events.append({'ph': 'X', 'pid': 1, 'tid': 14, 'ts': ts, 'dur': 1000.0, 'name': 'fusion_1',
                 'args': {'hlo_module': 'jit_other', 'hlo_op': 'fusion.1'}})
  return {'displayTimeUnit': 'ns', 'traceEvents': events}


def expected_per_step():
  return {name: (dur * calls / 1e3, calls, kind) for name, _, dur, calls, kind in KERNELS}


def test_kernel_table_of_a_synthetic_trace(tmp_path):
  path = tmp_path / 'perfetto_trace.json.gz'
  with gzip.open(path, 'wt') as f:
    json.dump(synthetic_trace(), f)
  result = kernel_table.table(kernel_table.load(str(path)), module='jit_step', top=20)
  expected = expected_per_step()
  busy = sum(ms for ms, _, _ in expected.values())  # 0.364 ms per step
  assert result['steps'] == STEPS  # from the host's execution markers
  assert result['busy_ms_per_step'] == pytest.approx(busy)
  assert result['kernels_per_step'] == sum(c for _, c, _ in expected.values())
  top = {r['kernel']: r for r in result['top']}
  assert set(top) == set(expected)
  for name, (ms, calls, kind) in expected.items():
    assert top[name]['ms_per_step'] == pytest.approx(ms), name
    assert top[name]['calls_per_step'] == calls, name
    assert top[name]['kind'] == kind, name
    assert top[name]['share'] == pytest.approx(ms / busy), name
  # Sorted by time; the kinds add up to the busy time.
  assert [r['kernel'] for r in result['top']][:2] == [
      'sm90_xmma_fprop_implicit_gemm_bf16_tile128', 'sm90_xmma_wgrad_indexed_implicit_gemm_bf16']
  kinds = {r['kind']: r for r in result['kinds']}
  assert set(kinds) == {kind for _, _, _, _, kind in KERNELS}
  assert sum(r['ms_per_step'] for r in kinds.values()) == pytest.approx(busy)
  assert kinds['elementwise/concat fusions']['kernels_per_step'] == 3
  assert sum(r['share'] for r in kinds.values()) == pytest.approx(1.0)
  # Every module: the other module's kernel counts too.
  everything = kernel_table.table(kernel_table.load(str(path)), top=3)
  assert everything['busy_ms_per_step'] == pytest.approx(busy + 1.0 / STEPS)
  assert len(everything['top']) == 3
  text = kernel_table.markdown(result, 'step')
  assert '| conv forward (fprop) | 0.100 |' in text
  assert '`gemm_fusion_dot_general_7`' in text


def test_kernel_table_steps_given_or_inferred_without_markers():
  trace = synthetic_trace(steps=3, markers=False)
  # Without markers: most kernels run once per step.
  assert kernel_table.table(trace, module='jit_step')['steps'] == 3
  result = kernel_table.table(trace, steps=6, module='jit_step')
  assert result['steps'] == 6
  assert result['busy_ms_per_step'] == pytest.approx(
      sum(ms for ms, _, _ in expected_per_step().values()) / 2)


def test_kernel_table_command_line(tmp_path, capsys):
  path = tmp_path / 'trace.json'
  path.write_text(json.dumps(synthetic_trace()))
  kernel_table.main([str(path), '--json', '--module=jit_step'])
  result = json.loads(capsys.readouterr().out)
  assert result['steps'] == STEPS and len(result['top']) == len(KERNELS)


# ------------------------------------------------------------------------------------------------
# The whole check at tiny sizes.


def test_gpu_check_tiny_run(tmp_path):
  """The shell command in tiny mode with a budget too short for every stage: the stages that fit
  run, the others are skipped and said so, and the summary has every figure (null if skipped)."""
  out = tmp_path / 'check'
  env = {**os.environ, 'PYTHON': sys.executable, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)  # one CPU device, as on a machine of one GPU
  proc = subprocess.run(['bash', os.path.join(REPO, 'benchmarks', 'gpu_check.sh'), '--tiny',
                         f'--out={out}', '--budget_s=30'], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  assert summary['tiny'] is True
  assert set(summary['figures']) == set(gpu_check.GOALS)
  assert set(summary['extra']) == set(gpu_check.EXTRA)
  for key, value in summary['figures'].items():
    assert value is None or (isinstance(value, float) and value > 0), (key, value)
  # The first stage always fits; its figures and kernel tables are there.
  assert summary['stages']['core']['status'] == 'ok', summary['stages']
  assert summary['figures']['supervised_patches_per_s'] > 0
  assert summary['figures']['mcmt_patches_per_s'] > 0
  for case in ('supervised', 'mcmt'):
    table = summary['kernel_tables'][case]
    assert table['steps'] == gpu_check.TINY.profile_steps, table
    assert table['kinds'] and table['busy_ms_per_step'] > 0
    assert (out / f'kernels-{case}.md').read_text().startswith(f'## {case} step')
  records = [json.loads(l) for l in (out / 'records.jsonl').read_text().splitlines()]
  assert {(r['case'], r['check_stage']) for r in records} >= {('supervised', 'core'),
                                                               ('mcmt', 'core')}
  # 30 s cannot hold every stage: the later ones are skipped (or cut off), never run over.
  stages = summary['stages']
  expected = ['core', 'infer', 'main_cold', 'main_warm', 'torch_eager', 'torch_compile'] + [
      f'option:{name}' for name in gpu_check.OPTIONS]
  assert list(stages) == expected
  assert summary['skipped'] and all(stages[s]['status'] == 'skipped' for s in summary['skipped'])
  assert all(stages[s].get('reason') for s in summary['skipped'])
  assert summary['elapsed_s'] <= 30 + 10, summary['elapsed_s']
  for name in gpu_check.OPTIONS:
    if stages[f'option:{name}']['status'] == 'skipped':
      assert name not in summary['options']
  if stages['main_cold']['status'] != 'ok':
    assert stages['main_warm']['status'] == 'skipped'
    assert summary['figures']['warm_start_s'] is None
  if stages['torch_compile']['status'] == 'skipped':
    assert summary['figures']['mcmt_vs_torch_compile'] is None
  # stdout: the table, then the figures as one JSON line.
  lines = proc.stdout.strip().splitlines()
  assert json.loads(lines[-1])['figures'] == summary['figures']
  assert 'MCMT step, 8 + 8 x 128^2, bf16' in proc.stdout
  assert 'skipped' in proc.stderr


def test_budget_skips_and_marks_goals(tmp_path):
  """No time left: every stage is skipped with its reason; the goals say nothing was met."""
  check = gpu_check.Check(str(tmp_path), gpu_check.TINY, budget_s=0.0, tiny=True)
  summary = check.run()
  assert summary['skipped'] == list(summary['stages'])
  assert all(v is None for v in summary['figures'].values())
  assert all(g['ok'] is None for g in summary['goals'].values())
  on_disk = json.loads((tmp_path / 'summary.json').read_text())
  assert on_disk['skipped'] == summary['skipped']
  text = gpu_check.render(summary)
  assert 'left of the budget' in text
  assert gpu_check._meets('mcmt_patches_per_s', 600.0) is True  # pylint: disable=protected-access
  assert gpu_check._meets('infer_600x400_ms', 7.0) is False  # pylint: disable=protected-access
