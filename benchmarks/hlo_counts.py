r"""What the compiler makes of a train step or an inference pass: kernels by kind, GEMMs, memory.

Compiles (without running) each case for each performance option and counts, in the optimized
HLO's entry computation (and the loops it calls), the top-level operations: on a GPU each one is
about one kernel launch (fusions, library calls for convolutions and GEMMs, copies), sorted into
kinds (`kinds`: cuDNN forward / input-gradient / weight-gradient convolutions, GEMMs, Triton and
Pallas kernels, reductions, transposes, concatenations, elementwise fusions, copies). It also
reports the executable's memory (`memory_analysis()`) and the compile time. Cases: `gradient`
(the gradient of L_PE, the heart of every train step), `supervised` and `mcmt` (the real jitted
train steps of `crnet_jax.train`, Adam and the EMA included) and `infer_WxH` (the Enhancer's
whole-image or tiled pass; `--infer_path`).

`--target=h100` (or `h200`) compiles for that GPU on a machine without one: XLA's GPU compiler
runs on the host for the device described in `benchmarks/gpu_specs/<target>.txtpb` (jax's
deviceless ahead-of-time compilation), so the counts, the kernel kinds and the memory are the GPU
compiler's, not a CPU proxy. What it cannot do without the GPU: autotuning (convolution
algorithms, GEMM tiles are left to heuristics, so compile times are without it) and any timing.
It needs the CUDA plugin of the installed jax and the CUDA libraries, about 5 GB, in a folder
of their own (no GPU or driver needed):

  pip install --target .gpu_aot "jax-cuda12-plugin[with-cuda]==$(python -c 'import jax; print(jax.__version__)')"
  PYTHONPATH=.gpu_aot python benchmarks/hlo_counts.py --target=h100 --cases=supervised,mcmt \
      --batch=16 --patch=128 --dtype=bfloat16

Without `--target` it compiles for this machine's backend (on CPU a proxy only: XLA's CPU backend
fuses differently, and Pallas kernels run in its interpreter there):

  python benchmarks/hlo_counts.py --config=configs/crnet.py:demo --batch=4 --patch=32

One JSON line per case and option: `ops` (top-level operations, a loop body's once),
`fusions`, `dots` (matrix products), `convolutions`, `custom_calls` (cuDNN, cuBLAS, Triton
kernels on a GPU), `copies` (copies and transposes), `loops`, `kinds` (the operations by kernel
kind), `kernels_run` (per call: loop bodies times their trip counts), `bytes` and
`bytes_by_kind` (what the kernels run read and write, estimated from their operands' and
results' shapes: `top_level_ops`), `dots_anywhere`, `temp_bytes` / `argument_bytes` /
`output_bytes` / `alias_bytes` (`memory_analysis()`) and `compile_s`.
`benchmarks/predict_gpu.py` turns the bytes into predicted step times.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
import os
import re
import sys
import time
from typing import Any, Iterator, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

SPECS = os.path.join(REPO, 'benchmarks', 'gpu_specs')
TARGETS = ('h100', 'h200')

if __name__ == '__main__' and any(a.split('=', 1)[-1] in TARGETS for a in sys.argv
                                  if a.startswith('--target')):
  # A GPU target is compiled for on this host: jax must not try to open a GPU here, and the CUDA
  # plugin's check of the (absent) driver is skipped. Both must be set before jax is imported.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import bench  # noqa: E402
from crnet_jax import image_io  # noqa: E402
from crnet_jax import inference  # noqa: E402
from crnet_jax import losses  # noqa: E402
from crnet_jax import models  # noqa: E402
from crnet_jax import pallas_mrb  # noqa: E402
from crnet_jax import train  # noqa: E402

OPTIONS = {
    'default': {},
    'layer_attention_impl=reduce': {'layer_attention_impl': 'reduce'},
    'layer_attention_impl=concat': {'layer_attention_impl': 'concat'},
    'mrb_impl=pallas': {'mrb_impl': 'pallas'},
    'reduce+pallas': {'layer_attention_impl': 'reduce', 'mrb_impl': 'pallas'},
}

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$')
_FUSED = re.compile(r'calls=%?([\w.\-]+)')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_OPERAND = re.compile(r'%([\w.\-]+)')
_ARRAY = re.compile(r'\b(pred|bf16|[suf]\d+|f8\w*)\[([\d,]*)\]')
_DTYPE_BYTES = {'pred': 1, 'bf16': 2}
_NAME = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'(?:body|condition|to_apply)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_FUSION_KIND = re.compile(r'kind=(k\w+)')
_BACKEND_KIND = re.compile(r'"fusion_backend_config":\{"kind":"([^"]*)"')
_COMMENT = re.compile(r'/\*.*?\*/')
_SKIPPED = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast')
_CONTROL = ('while', 'conditional', 'call')


def _computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines} and the entry computation's name."""
  blocks: dict[str, list[str]] = {}
  entry, name = '', None
  for line in hlo.splitlines():
    if name is None:
      m = _COMPUTATION.match(line)
      if m:
        name = m.group(1)
        blocks[name] = []
        if line.startswith('ENTRY'):
          entry = name
    elif line.strip() == '}':
      name = None
    else:
      blocks[name].append(line)
  return blocks, entry


def _arrays(shape: str) -> list[tuple[int, int]]:
  """(elements, bytes per element) of each array an HLO shape (an array or a tuple) spells."""
  return [(math.prod(int(d) for d in dims.split(',') if d),
           _DTYPE_BYTES.get(dtype, int(re.sub(r'\D', '', dtype) or 32) // 8))
          for dtype, dims in _ARRAY.findall(shape)]


def top_level_ops(hlo: str) -> list[tuple[str, str, int, int]]:
  """(opcode, line, bytes, runs) of every operation of the entry computation and of the loops
  and conditionals it runs: listed once, `runs` times per call of the module (the product of the
  trip counts of the loops around it that XLA knows, else 1).

  Fused computations are not entered: a fusion counts once, however many ops it holds.
  `bytes`: its results' and operands' sizes, what a kernel reading each operand once and
  writing its results moves; an elementwise (loop) fusion reads at most one element of an
  operand per element of its result (so an operand it slices counts for the slice), a fusion
  whose root concatenates reads one element per element of its result, and one whose root
  updates a slice of its first operand in place reads and writes that slice. An
  estimate: kernels may read less (broadcasts) or more (re-reads through the caches).
  """
  blocks, entry = _computations(hlo)
  ops, seen, todo = [], set(), [(entry, 1)]
  while todo:
    name, runs = todo.pop()
    if name in seen or name not in blocks:
      continue
    seen.add(name)
    arrays = {}
    for line in blocks[name]:
      m = _INSTRUCTION.match(_COMMENT.sub('', line))  # tuple shapes hold `/*index=5*/` comments
      if not m:
        continue
      result, shape, opcode, rest = m.groups()
      arrays[result] = _arrays(shape)
      if opcode in _SKIPPED:
        continue
      operands = _OPERAND.findall(rest.split('), ')[0])
      update = _in_place_update(blocks, rest) if opcode == 'fusion' else None
      if update is not None:  # writes a part of its (aliased) first operand in place
        moved = 2 * update + sum(n * b for o in operands[1:] for n, b in arrays.get(o, ()))
      elif opcode == 'fusion' and _fused_root(blocks, rest)[0] == 'concatenate':
        moved = 2 * sum(n * b for n, b in arrays[result])  # each result element read once
      else:
        elements = max((n for n, _ in arrays[result]), default=0)
        loop = opcode == 'fusion' and 'kind=kLoop' in rest
        moved = sum(n * b for n, b in arrays[result])
        for operand in operands:
          moved += sum(min(n, elements) * b if loop else n * b
                       for n, b in arrays.get(operand, ()))
      ops.append((opcode, line, moved, runs))
      if opcode in _CONTROL:
        trips = _TRIPS.search(line)
        inner = runs * (int(trips.group(1)) if trips and opcode == 'while' else 1)
        todo.extend((c, inner) for c in _CALLS.findall(line))
        for group in _BRANCHES.findall(line):
          todo.extend((c.strip().lstrip('%'), runs) for c in group.split(','))
  return ops


def _fused_root(blocks: dict[str, list[str]], rest: str) -> tuple[str, str, list[str]]:
  """A fusion's root: its opcode and operands ('' if not found), and the fused computation."""
  called = _FUSED.search(rest)
  lines = blocks.get(called.group(1), []) if called else []
  root = next((l for l in lines if l.lstrip().startswith('ROOT')), '')
  m = _INSTRUCTION.match(_COMMENT.sub('', root))
  return (m.group(3), m.group(4), lines) if m else ('', '', lines)


def _in_place_update(blocks: dict[str, list[str]], rest: str) -> int | None:
  """Bytes of the update when a fusion's root is a `dynamic-update-slice` (in place), else None."""
  opcode, operands, lines = _fused_root(blocks, rest)
  names = _OPERAND.findall(operands)
  if opcode != 'dynamic-update-slice' or len(names) < 2:
    return None
  shapes = {i.group(1): i.group(2) for i in map(_INSTRUCTION.match, map(
      lambda l: _COMMENT.sub('', l), lines)) if i}
  return sum(n * b for n, b in _arrays(shapes.get(names[1], '')))


def kernel_kind(opcode: str, line: str) -> str:
  """The kind of kernel one top-level operation of an optimized HLO module launches.

  Library calls by their target (cuDNN convolutions: forward, input gradient, weight gradient;
  cuBLAS GEMMs; Triton and Pallas kernels), fusions by what XLA fused (a GEMM, a Triton
  fusion, a reduction, a transpose, a concatenation, else elementwise), then copies. The names
  are those of XLA's GPU backend; on CPU most fusions come out `elementwise`.
  """
  if opcode == 'custom-call':
    target = (_TARGET.search(line) or [None, ''])[1]
    if 'convBackwardFilter' in target:
      return 'conv_wgrad'
    if 'convBackwardInput' in target:
      return 'conv_dgrad'
    if 'conv' in target.lower():
      return 'conv_fprop'
    if 'gemm' in target.lower() or 'cublas' in target.lower():
      return 'gemm'
    if 'triton' in target.lower() or 'mosaic' in target.lower():
      return 'pallas_or_triton'
    return 'other_library'
  if opcode == 'fusion':
    backend = (_BACKEND_KIND.search(line) or [None, ''])[1]
    name = (_NAME.match(line) or [None, ''])[1]
    if 'gemm' in backend or 'gemm' in name or 'cublas' in backend:
      return 'gemm'
    if 'triton' in backend:
      return 'triton_fusion'
    if 'conv' in backend:  # a cuDNN fusion of a convolution and its epilogue
      return 'conv_fusion'
    if 'transpose' in name:
      return 'transpose'
    if 'concatenate' in name:
      return 'concatenate'
    if 'reduce' in name or (_FUSION_KIND.search(line) or [None, ''])[1] == 'kInput':
      return 'reduction'
    return 'elementwise'
  if opcode in ('dot', 'convolution'):
    return {'dot': 'gemm', 'convolution': 'conv_fprop'}[opcode]
  if opcode in ('copy', 'transpose', 'copy-start', 'copy-done'):
    return 'copy'
  return 'other'


def count_ops(hlo: str) -> dict[str, Any]:
  """The top-level operations (`top_level_ops`) by opcode and by kernel kind, the kernels run
  per call (loop bodies times their trip counts) and the bytes they move, by kind."""
  ops = top_level_ops(hlo)
  counts = collections.Counter(op for op, _, _, _ in ops)
  kinds, moved, launched = collections.Counter(), collections.Counter(), 0
  for op, line, size, runs in ops:
    if op not in _CONTROL:
      kind = kernel_kind(op, line)
      kinds[kind] += 1
      moved[kind] += size * runs
      launched += runs
  return {
      'ops': sum(n for op, n in counts.items() if op not in _CONTROL),
      'fusions': counts['fusion'],
      'dots': counts['dot'],
      'convolutions': counts['convolution'],
      'custom_calls': counts['custom-call'],
      'copies': counts['copy'] + counts['transpose'],
      'loops': counts['while'],
      'kinds': dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
      'kernels_run': launched,
      'bytes': sum(moved.values()),
      'bytes_by_kind': dict(sorted(moved.items(), key=lambda kv: -kv[1])),
  }


def dots_anywhere(hlo: str) -> int:
  """Matrix products anywhere in the module, fused or not."""
  return sum(' dot(' in line for line in hlo.splitlines())


def target_devices(target: str) -> list[Any]:
  """The devices to compile for: this machine's (`''`), or one GPU of `target` without a GPU."""
  if not target:
    return jax.devices()
  if target not in TARGETS:
    raise SystemExit(f'error: --target: unknown {target!r}; choose from {list(TARGETS)}')
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  with open(os.path.join(SPECS, f'{target}.txtpb'), encoding='utf-8') as f:
    spec = f.read()
  try:
    topology = topologies.get_topology_desc(target, 'cuda', target_config=spec,
                                            topology='1x1x1')
  except (NotImplementedError, RuntimeError) as e:  # no CUDA plugin, or one that cannot load
    raise SystemExit(
        f'error: --target={target}: no CUDA compiler for jax {jax.__version__} here '
        f'({str(e).splitlines()[0]}); install it into a folder of its own and put that on '
        'PYTHONPATH (see the docstring of benchmarks/hlo_counts.py)') from None
  pallas_mrb.default_interpret = lambda: False  # lower Pallas kernels for the GPU, not interpret
  return list(topology.devices)


def _abstract(tree: Any, sharding: NamedSharding) -> Any:
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def lower_case(config: ml_collections.ConfigDict, case: str, devices: Sequence[Any],
               batch: int, patch: int, infer_path: str = 'auto') -> tuple[Any, dict[str, Any]]:
  """`case` lowered for `devices` (no array is made on them), and what the record should say.

  `gradient`: the gradient of L_PE on `batch` patches; `supervised` / `mcmt`: the train step
  (`batch` labeled patches, and as many unlabeled ones for MCMT); `infer_WxH`: the Enhancer's
  pass over one padded W x H image, whole or tiled (`infer_path`, `auto` as the Enhancer picks).
  """
  model = models.create_model(config.model)
  mesh = train.create_mesh(devices)
  rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(train.DATA_AXIS))
  patches = jax.ShapeDtypeStruct((batch, patch, patch, 3), jnp.float32, sharding=data)
  if case == 'gradient':
    params = _abstract(models.abstract_params(model), rep)

    def loss(p, low, high):
      final, intermediates = model.apply({'params': p}, low)
      return losses.progressive_enhancement_loss(final, intermediates, high, 1.0)[0]

    return jax.jit(jax.grad(loss)).lower(params, patches, patches), {'batch': batch,
                                                                      'patch': patch}
  if case in ('supervised', 'mcmt'):
    config = bench._with(config, method=case)  # pylint: disable=protected-access
    hp = train.StepConfig.from_config(config, steps_per_epoch=1000)
    fns = train.compiled_functions(model, hp, mesh)
    state = _abstract(jax.eval_shape(fns.init, jax.ShapeDtypeStruct((2,), jnp.uint32)), rep)
    batch_in = {'low': patches, 'high': patches}
    if case == 'mcmt':
      batch_in['unlabeled'] = patches
    return fns.train_step.lower(state, batch_in), {
        'batch': batch, **({'unlabeled': batch} if case == 'mcmt' else {}), 'patch': patch}
  height, width = bench._parse_infer_case(case)  # pylint: disable=protected-access
  tiling = inference.TilingConfig.from_config(config.inference)
  ph, pw = image_io.round_up(height, tiling.bucket), image_io.round_up(width, tiling.bucket)
  # The Enhancer's own jitted functions; its parameters here are host arrays, never used.
  params = models.abstract_params(model)
  host = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params)
  enhancer = inference.Enhancer(model, host, tiling)
  if infer_path == 'auto':
    if not tiling.max_whole_pixels:  # the Enhancer would decide by this machine's memory
      raise SystemExit('error: --infer_path=auto needs inference.max_whole_pixels > 0 here; '
                       'pass --infer_path=whole or tiled')
    infer_path = 'whole' if enhancer.uses_whole(ph, pw) else 'tiled'
  params = _abstract(params, rep)
  record = {'batch': 1, 'height': height, 'width': width, 'padded': [ph, pw], 'path': infer_path}
  if infer_path == 'whole':
    image = jax.ShapeDtypeStruct((1, ph, pw, 3), jnp.float32, sharding=rep)
    mask = jax.ShapeDtypeStruct((1, ph, pw, 1), jnp.float32, sharding=rep)
    return enhancer._forward.lower(params, image, mask), record  # pylint: disable=protected-access
  image = jax.ShapeDtypeStruct((ph, pw, 3), jnp.uint8, sharding=rep)
  size = jax.ShapeDtypeStruct((3,), jnp.int32, sharding=rep)
  return enhancer._tiled.lower(params, image, size, out_uint8=True), record  # pylint: disable=protected-access


def measure(config: ml_collections.ConfigDict, options: Sequence[str], cases: Sequence[str],
            batch: int, patch: int, target: str = '', infer_path: str = 'auto',
            compiler_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
  """One record per case and option, each as soon as it is compiled."""
  devices = target_devices(target)
  for case in cases:
    for name in options:
      c = bench._with(config, **{f'model.{k}': v for k, v in OPTIONS[name].items()})  # pylint: disable=protected-access
      t0 = time.perf_counter()
      lowered, record = lower_case(c, case, devices, batch, patch, infer_path)
      compiled = lowered.compile(compiler_options=compiler_options or None)
      compile_s = time.perf_counter() - t0
      hlo = compiled.as_text()
      stats = compiled.memory_analysis()  # the parts of `inference.executable_bytes`
      yield {
          'target': target or jax.default_backend(), 'device': devices[0].device_kind,
          'jax_version': jax.__version__, 'case': case, 'option': name, **record,
          'dtype': c.model.dtype, **count_ops(hlo), 'dots_anywhere': dots_anywhere(hlo),
          'temp_bytes': int(stats.temp_size_in_bytes),
          'argument_bytes': int(stats.argument_size_in_bytes),
          'output_bytes': int(stats.output_size_in_bytes),
          'alias_bytes': int(stats.alias_size_in_bytes),
          'compile_s': round(compile_s, 2), 'compiler_options': compiler_options or {},
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def define_flags() -> None:
  """The command-line flags (defined only when run as a script: importing this module, as the
  tests do, adds no global absl flags)."""
  config_flags.DEFINE_config_file('config', os.path.join(REPO, 'configs', 'crnet.py'),
                                  'run config (its `model`, `inference`, optimiser fields)')
  flags.DEFINE_integer('batch', 16, 'patches per step (MCMT: labeled, and as many unlabeled)')
  flags.DEFINE_integer('patch', 128, 'patch side')
  flags.DEFINE_string('dtype', '', "compute dtype ('' = the config's)")
  flags.DEFINE_list('options', list(OPTIONS), f'which of {list(OPTIONS)}')
  flags.DEFINE_list('cases', ['gradient'], 'gradient, supervised, mcmt, infer_<width>x<height>')
  flags.DEFINE_enum('infer_path', 'auto', ['auto', 'whole', 'tiled'], 'for infer_ cases')
  flags.DEFINE_string('target', '', f"'' (this machine's backend) or a GPU: {list(TARGETS)}")
  flags.DEFINE_list('xla_options', [], 'key=value compiler options, e.g. '
                    'xla_gpu_enable_command_buffer=')


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  config = f.config
  if f.dtype:
    config.model.dtype = f.dtype
  unknown = sorted(set(f.options) - set(OPTIONS))
  if unknown:
    raise SystemExit(f'error: --options: unknown {unknown}; choose from {list(OPTIONS)}')
  for case in f.cases:
    if case not in ('gradient', 'supervised', 'mcmt') and not re.fullmatch(r'infer_\d+x\d+',
                                                                          case):
      raise SystemExit(f'error: --cases: unknown {case!r}; choose from gradient, supervised, '
                       'mcmt, infer_<width>x<height>')
  compiler_options = dict(bench._parse_option(o) for o in f.xla_options)  # pylint: disable=protected-access
  try:
    for record in measure(config, f.options, f.cases, f.batch, f.patch, f.target, f.infer_path,
                          compiler_options):
      print(json.dumps(record), flush=True)
  except ValueError as e:  # a model field the options or the target cannot take
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
