"""Speed of CRNet in JAX: train steps, inference and the input pipeline, against PyTorch.

One JSON line per measured case on stdout (and appended to `--out`):

- `supervised`: the jitted, state-donating supervised train step of `crnet_jax.train`
  (`compiled_functions(...).train_step`), `--batch` patches of `--patch` x `--patch` pixels.
- `mcmt`: the Multi-Consistency Mean Teacher step, `--labeled` + `--unlabeled` patches (the
  student's forward and backward pass over both, the teacher's forward pass, Adam, the EMA).
- `infer_WxH` (e.g. `infer_600x400`, `infer_3840x2160`; W is the width): the jitted forward pass
  of `crnet_jax.inference.Enhancer` on one W x H image, padded to the bucket, whole or through
  exact tiles as the Enhancer chooses from `config.inference` (`--infer_path` forces one); the
  record says which path ran. `median_ms` is the device time of the jitted function on
  device-resident arrays, `end_to_end_ms` the time of `Enhancer.__call__` on a numpy image
  (padding, transfers, cropping included).
- `input_pipeline`: patches/s that `input_pipeline.create_train_iterator` delivers for an MCMT
  config with `--labeled` + `--unlabeled` patches per batch and `config.data.num_workers`
  worker processes, and the ratio to the MCMT step's patches/s measured in the same run.

For each case and each of `--dtypes` (the compute dtype, `config.model.dtype`; parameters stay
float32), the JAX record gives: the median of `--steps` timed steps after `--warmup` untimed ones
(each step synchronised with `jax.block_until_ready`), patches/s or images/s, the compile time
(`jit(...).lower(...).compile()`, timed apart), the compiled executable's memory
(`memory_analysis()`: arguments + outputs + temporaries - aliased), the device's peak memory
(`memory_stats()['peak_bytes_in_use']`, for the whole process so far; None on CPU; run with
`--isolate` to measure each case in a fresh process), the analytic FLOPs of the step
(`models.flops_per_pixel`; a train step counts 3 forward passes, the MCMT step one more for the
teacher) and the TFLOP/s achieved. With `--torch`, the same steps of the PyTorch twin
(`benchmarks/pytorch_crnet.py`, the same parameters through `load_flax_params`) are timed in the
same run, eager and/or `torch.compile`d, each in a record of its own, and the JAX record gets the
ratios `vs_torch_eager` and `vs_torch_compile` (JAX throughput / PyTorch throughput).

Commands (benchmarks/README.md has the measured figures):

  # CPU smoke test, the tiny network (well under a minute on 2 cores):
  python benchmarks/bench.py --config=configs/crnet.py:test --steps=2 --warmup=1 \\
      --cases=supervised,mcmt,infer_64x48,input_pipeline --dtypes=float32 --torch=eager
  # One GPU, the default network, the settings of the GPU goals (benchmarks/README.md):
  python benchmarks/bench.py --config=configs/crnet.py --batch=16 --labeled=8 --unlabeled=8 \\
      --patch=128 --torch=both --config.data.num_workers=8 --out=benchmarks/results/h100.jsonl

Every model field can be overridden like any config flag, e.g.
`--config.model.layer_attention_impl=concat --config.model.remat=lmrg`, or
`--config.model.mrb_impl=pallas` to time the masked residual blocks as Pallas kernels
(`crnet_jax/pallas_mrb.py`) against the default `xla`; each record's `model` names the options.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # Grow JAX's device memory on demand instead of taking 75% of it up front: PyTorch runs in the
  # same process, and the peak then counts what JAX really uses.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from crnet_jax import image_io  # noqa: E402
from crnet_jax import inference  # noqa: E402
from crnet_jax import input_pipeline  # noqa: E402
from crnet_jax import models  # noqa: E402
from crnet_jax import train  # noqa: E402

DEFAULT_CASES = ('supervised', 'mcmt', 'infer_600x400', 'infer_3840x2160', 'input_pipeline')
TORCH_MODES = {'none': (), 'eager': ('eager',), 'compile': ('compile',),
               'both': ('eager', 'compile')}
# A train step costs about 3 forward passes (forward + input and kernel gradients); the MCMT step
# adds the teacher's forward pass.
TRAIN_FORWARDS = {'supervised': 3, 'mcmt': 4}


@dataclasses.dataclass
class Options:
  """What to measure (the command-line flags, `main`)."""
  cases: Sequence[str] = DEFAULT_CASES
  dtypes: Sequence[str] = ('float32', 'bfloat16')
  steps: int = 20
  warmup: int = 3
  torch: str = 'none'
  batch: int | None = None  # supervised patches per step (None: config.data.batch_size)
  labeled: int | None = None  # MCMT labeled patches (None: config.data.batch_size)
  unlabeled: int | None = None  # MCMT unlabeled patches (None: config.data.unlabeled_batch_size)
  patch: int | None = None  # patch side (None: config.data.patch_size)
  num_devices: int = 1
  infer_path: str = 'auto'  # 'auto' (as the Enhancer chooses), 'whole' or 'tiled'
  end_to_end: bool = True
  pipeline_steps: int = 0  # batches timed for input_pipeline (0: 5 * steps)
  profile_dir: str = ''
  # Train steps traced after the timed ones (0: trace the warm-up and timed steps themselves).
  profile_steps: int = 0
  jax: bool = True  # False: time only the PyTorch twin (the JAX params are initialised, not timed)
  out: str = ''
  # XLA options for the timed executables (`.compile(compiler_options=...)`), e.g.
  # {'xla_gpu_autotune_level': 4}; recorded in each record.
  compiler_options: dict[str, Any] = dataclasses.field(default_factory=dict)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # added to every record


# ------------------------------------------------------------------------------------------------
# Utilities.


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _device_info(devices: Sequence[jax.Device]) -> dict[str, Any]:
  d = devices[0]
  return {'device': d.device_kind, 'backend': d.platform, 'num_devices': len(devices),
          'host_cpus': os.cpu_count(), 'jax_version': jax.__version__}


def _peak_bytes(devices: Sequence[jax.Device]) -> int | None:
  """The largest `peak_bytes_in_use` of `devices` (process-wide), or None where not reported."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def _compiled_bytes(compiled: Any) -> int | None:
  """`inference.executable_bytes`, or None where the backend has no memory analysis."""
  try:
    return inference.executable_bytes(compiled)
  except Exception:  # pylint: disable=broad-except
    return None


def _time_steps(fn: Callable[[], Any], steps: int, warmup: int,
                sync: Callable[[Any], Any]) -> list[float]:
  """Seconds of each of `steps` calls of `fn` after `warmup` calls, each synchronised."""
  for _ in range(warmup):
    sync(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return times


def _summary(times: Sequence[float]) -> dict[str, float]:
  ms = sorted(1e3 * t for t in times)
  return {'median_ms': statistics.median(ms), 'min_ms': ms[0], 'max_ms': ms[-1]}


def _model_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The model's options for a record (the compute dtype is each record's `dtype`)."""
  fields = models.CRNetConfig.from_config(config.model).to_dict()
  del fields['dtype']
  return fields


def _with(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields set, e.g. `_with(c, **{'model.dtype': 'bfloat16'})`."""
  config = copy.deepcopy(config)
  for key, value in fields.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return config


def _parse_infer_case(case: str) -> tuple[int, int]:
  """'infer_600x400' -> (height 400, width 600)."""
  m = re.fullmatch(r'infer_(\d+)x(\d+)', case)
  if not m:
    raise ValueError(f'unknown case {case!r}: expected supervised, mcmt, input_pipeline or '
                     'infer_<width>x<height>')
  return int(m.group(2)), int(m.group(1))


class _Profile:
  """`jax.profiler.trace` into `profile_dir/name` when `profile_dir` is set."""

  def __init__(self, profile_dir: str, name: str):
    self.path = os.path.join(profile_dir, name) if profile_dir else ''

  def __enter__(self):
    if self.path:
      try:  # also a perfetto_trace.json.gz (benchmarks/kernel_table.py reads it)
        jax.profiler.start_trace(self.path, create_perfetto_trace=True)
      except TypeError:  # a jax without the argument
        jax.profiler.start_trace(self.path)
    return self

  def __exit__(self, *exc):
    if self.path:
      jax.profiler.stop_trace()


# ------------------------------------------------------------------------------------------------
# JAX cases.


def _train_sizes(config: ml_collections.ConfigDict, method: str, opts: Options) -> dict[str, int]:
  d = config.data
  patch = opts.patch or int(d.patch_size)
  if method == 'supervised':
    return {'labeled': opts.batch or int(d.batch_size), 'unlabeled': 0, 'patch': patch}
  return {'labeled': opts.labeled or int(d.batch_size),
          'unlabeled': opts.unlabeled or int(d.unlabeled_batch_size), 'patch': patch}


def _train_batch(sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  p = sizes['patch']
  shape = lambda n: (n, p, p, 3)
  batch = {'low': rng.uniform(0.0, 0.3, shape(sizes['labeled'])).astype(np.float32),
           'high': rng.uniform(0.0, 1.0, shape(sizes['labeled'])).astype(np.float32)}
  if sizes['unlabeled']:
    batch['unlabeled'] = rng.uniform(0.0, 0.3, shape(sizes['unlabeled'])).astype(np.float32)
  return batch


def bench_train(config: ml_collections.ConfigDict, method: str, dtype: str, opts: Options,
                devices: Sequence[jax.Device]) -> tuple[dict[str, Any], Any]:
  """The JAX record of one train step case, and the initial params (for the PyTorch twin)."""
  config = _with(config, method=method, **{'model.dtype': dtype})
  sizes = _train_sizes(config, method, opts)
  model = models.create_model(config.model)
  hp = train.StepConfig.from_config(config, steps_per_epoch=1000)
  mesh = train.create_mesh(devices)
  fns = train.compiled_functions(model, hp, mesh)
  state = fns.init(jax.random.PRNGKey(int(config.seed)))
  params = jax.device_get(state.params)
  batch = train.global_batch(_train_batch(sizes), fns.data_sharding)
  t0 = time.perf_counter()
  compiled = fns.train_step.lower(state, batch).compile(
      compiler_options=opts.compiler_options or None)
  compile_s = time.perf_counter() - t0

  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], batch)
    return holder['state'], metrics

  profile = _Profile(opts.profile_dir, f'{method}_{dtype}')
  if profile.path and opts.profile_steps:  # time untraced, then trace a few more steps
    times = _time_steps(step, opts.steps, opts.warmup, jax.block_until_ready)
    with profile:
      _time_steps(step, opts.profile_steps, 0, jax.block_until_ready)
  else:
    with profile:
      times = _time_steps(step, opts.steps, opts.warmup, jax.block_until_ready)
  loss = float(jax.device_get(step()[1]['loss']))
  patches = sizes['labeled'] + sizes['unlabeled']
  summary = _summary(times)
  flops = (TRAIN_FORWARDS[method] * models.flops_per_pixel(config.model)
           * patches * sizes['patch'] ** 2)
  record = {
      'case': method, 'framework': 'jax', 'variant': 'jit', 'dtype': dtype,
      'batch': patches, **({'labeled': sizes['labeled'], 'unlabeled': sizes['unlabeled']}
                           if method == 'mcmt' else {}),
      'patch': sizes['patch'], **summary,
      'patches_per_s': patches / (summary['median_ms'] / 1e3),
      'compile_s': compile_s, 'compiled_bytes': _compiled_bytes(compiled),
      'peak_bytes': _peak_bytes(devices), 'flops_per_step': flops,
      'tflops': flops / (summary['median_ms'] / 1e3) / 1e12,
      'loss_finite': bool(np.isfinite(loss)),
  }
  if profile.path:  # the steps in the trace (kernel_table.py divides by them)
    record.update(profile_path=profile.path,
                  profile_steps=opts.profile_steps or opts.warmup + opts.steps)
  return record, params


def init_params(config: ml_collections.ConfigDict, dtype: str) -> Any:
  """The network's initial params on the host, without timing anything (for `--nojax`)."""
  model = models.create_model(_with(config, **{'model.dtype': dtype}).model)
  return jax.device_get(jax.jit(functools.partial(models.init_params, model))(
      jax.random.PRNGKey(int(config.seed))))


def bench_infer(config: ml_collections.ConfigDict, case: str, dtype: str, opts: Options,
                devices: Sequence[jax.Device]) -> tuple[dict[str, Any], Any]:
  """The JAX record of one inference case, and the params (for the PyTorch twin)."""
  height, width = _parse_infer_case(case)
  config = _with(config, **{'model.dtype': dtype})
  model = models.create_model(config.model)
  params = jax.jit(functools.partial(models.init_params, model))(
      jax.random.PRNGKey(int(config.seed)))
  params = jax.device_put(params, devices[0])
  tiling = inference.TilingConfig.from_config(config.inference)
  enhancer = inference.Enhancer(model, params, tiling)
  ph, pw = image_io.round_up(height, tiling.bucket), image_io.round_up(width, tiling.bucket)
  path = opts.infer_path
  if path == 'auto':
    path = 'whole' if enhancer.uses_whole(ph, pw) else 'tiled'
  image = np.random.default_rng(0).uniform(0.0, 0.3, (height, width, 3)).astype(np.float32)
  padded = np.pad(image, ((0, ph - height), (0, pw - width), (0, 0)))
  mask = np.pad(np.ones((height, width, 1), np.float32), ((0, ph - height), (0, pw - width),
                                                          (0, 0)))
  # The Enhancer's own jitted functions (whole image, or pass by pass over tiles: uint8 in and
  # out, the real size as an argument).
  if path == 'whole':
    args = (enhancer.params, jax.device_put(padded[None], devices[0]),
            jax.device_put(mask[None], devices[0]))
  else:
    args = (enhancer.params, jax.device_put(image_io.to_uint8(padded), devices[0]),
            jax.device_put(np.array([height, width, 255], np.int32), devices[0]))
  t0 = time.perf_counter()
  lowered = (enhancer._forward.lower(*args) if path == 'whole'  # pylint: disable=protected-access
             else enhancer._tiled.lower(*args, out_uint8=True))  # pylint: disable=protected-access
  compiled = lowered.compile(compiler_options=opts.compiler_options or None)
  compile_s = time.perf_counter() - t0
  with _Profile(opts.profile_dir, f'{case}_{dtype}'):
    times = _time_steps(lambda: compiled(*args), opts.steps, opts.warmup,
                        jax.block_until_ready)
  summary = _summary(times)
  flops = models.flops_per_pixel(config.model) * ph * pw
  record = {'case': case, 'framework': 'jax', 'variant': 'jit', 'dtype': dtype, 'batch': 1,
            'height': height, 'width': width, 'padded': [ph, pw], 'path': path}
  if path == 'tiled':
    halo = tiling.tile_overlap or models.receptive_radius(model)
    th, tw = min(tiling.tile_size, ph), min(tiling.tile_size, pw)
    record.update(tile=[th, tw], halo=halo, cache_blocks=tiling.cache_blocks,
                  tiles=len(inference.tile_windows(ph, th, halo))
                  * len(inference.tile_windows(pw, tw, halo)))
  record.update(summary, images_per_s=1e3 / summary['median_ms'], compile_s=compile_s,
                compiled_bytes=_compiled_bytes(compiled), peak_bytes=_peak_bytes(devices),
                flops_per_step=flops, tflops=flops / (summary['median_ms'] / 1e3) / 1e12)
  if opts.end_to_end and (path == 'auto' or opts.infer_path == 'auto'):
    enhancer(image)  # compiles the Enhancer's own jit cache entry
    e2e = _time_steps(lambda: enhancer(image), max(1, min(opts.steps, 5)), 0, lambda v: v)
    record['end_to_end_ms'] = statistics.median(1e3 * t for t in e2e)
  return record, jax.device_get(params)


def bench_pipeline(config: ml_collections.ConfigDict, opts: Options) -> dict[str, Any]:
  """Patches/s of the MCMT training iterator for `config.data` (no device involved)."""
  sizes = _train_sizes(config, 'mcmt', opts)
  config = _with(config, method='mcmt', **{'data.batch_size': sizes['labeled'],
                                           'data.unlabeled_batch_size': sizes['unlabeled'],
                                           'data.patch_size': sizes['patch']})
  it = input_pipeline.create_train_iterator(config)
  try:
    t0 = time.perf_counter()
    next(it)
    first_s = time.perf_counter() - t0
    for _ in range(max(opts.warmup, 1)):
      next(it)
    n = opts.pipeline_steps or 5 * opts.steps
    t0 = time.perf_counter()
    for _ in range(n):
      next(it)
    elapsed = time.perf_counter() - t0
  finally:
    it.close()
  patches = sizes['labeled'] + sizes['unlabeled']
  return {'case': 'input_pipeline', 'framework': 'grain', 'variant': 'mcmt', 'dtype': 'float32',
          'dataset': config.data.dataset, 'batch': patches, 'labeled': sizes['labeled'],
          'unlabeled': sizes['unlabeled'], 'patch': sizes['patch'],
          'num_workers': int(config.data.num_workers),
          'read_threads': int(config.data.get('read_threads', 2)), 'batches': n,
          'median_ms': 1e3 * elapsed / n, 'patches_per_s': n * patches / elapsed,
          'first_batch_s': first_s}


# ------------------------------------------------------------------------------------------------
# PyTorch cases (benchmarks/pytorch_crnet.py), same parameters.


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import pytorch_crnet  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, None, str(e)
  return torch, pytorch_crnet, None


def bench_torch(config: ml_collections.ConfigDict, case: str, dtype: str, variant: str,
                opts: Options, params: Any) -> dict[str, Any]:
  """The PyTorch twin's record for `case` ('supervised', 'mcmt' or 'infer_WxH')."""
  torch, pt, _ = _torch()
  cuda = torch.cuda.is_available()
  device = torch.device('cuda' if cuda else 'cpu')
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  bf16 = dtype == 'bfloat16'
  use_compile = variant == 'compile'
  model = pt.load_flax_params(pt.create_model(config.model), params).to(device)
  if cuda:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  gen = torch.Generator().manual_seed(0)
  rand = lambda *shape: (torch.rand(*shape, generator=gen) * 0.3).to(device)
  record: dict[str, Any] = {'case': case, 'framework': 'torch', 'variant': variant,
                            'dtype': dtype, 'torch_version': torch.__version__,
                            'torch_device': str(device)}
  if case in TRAIN_FORWARDS:
    sizes = _train_sizes(config, case, opts)
    p = sizes['patch']
    low, high = rand(sizes['labeled'], 3, p, p), rand(sizes['labeled'], 3, p, p) / 0.3
    opt = pt.make_optimizer(model)
    if case == 'supervised':
      step_fn = pt.make_supervised_step(model, opt, beta=float(config.loss.beta), bf16=bf16,
                                        use_compile=use_compile)
      run = lambda: step_fn(low, high)
    else:
      unlabeled = rand(sizes['unlabeled'], 3, p, p)
      teacher = pt.make_teacher(model)
      step_fn = pt.make_mcmt_step(model, teacher, opt, beta=float(config.loss.beta),
                                  gamma=float(config.loss.gamma), lam=float(config.loss.lam),
                                  noise_std=float(config.mcmt.noise_std),
                                  ema_decay=float(config.mcmt.ema_decay), bf16=bf16,
                                  use_compile=use_compile)
      run = lambda: step_fn(low, high, unlabeled)
    patches = sizes['labeled'] + sizes['unlabeled']
    record.update(batch=patches, patch=p)
  else:
    height, width = _parse_infer_case(case)
    model.eval()
    x = rand(1, 3, height, width)

    def forward(x):
      with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                           enabled=bf16):
        return torch.clamp(model(x)[0], 0.0, 1.0)

    forward = torch.compile(forward) if use_compile else forward
    run = lambda: forward(x)
    patches = 1
    record.update(batch=1, height=height, width=width, path='whole')
  t0 = time.perf_counter()
  run()
  sync()
  first_s = time.perf_counter() - t0
  times = _time_steps(run, opts.steps, max(opts.warmup - 1, 0), lambda _: sync())
  summary = _summary(times)
  rate = patches / (summary['median_ms'] / 1e3)
  record.update(summary, **({'patches_per_s': rate} if case in TRAIN_FORWARDS
                            else {'images_per_s': rate}),
                compile_s=max(first_s - summary['median_ms'] / 1e3, 0.0),
                peak_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)
  return record


# ------------------------------------------------------------------------------------------------
# Driver.


def _emit(record: dict[str, Any], opts: Options, records: list[dict[str, Any]]) -> None:
  if hasattr(os, 'getloadavg'):  # other processes on the host skew CPU timings
    record = {**record, 'load_avg_1m': round(os.getloadavg()[0], 2)}
  line = json.dumps(record, sort_keys=False, default=str)
  print(line, flush=True)
  records.append(record)
  if opts.out:
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, 'a') as f:
      f.write(line + '\n')


def run(config: ml_collections.ConfigDict, opts: Options) -> list[dict[str, Any]]:
  """Measures every case of `opts` for every dtype; prints (and writes) and returns the records.

  A case that fails (e.g. out of memory) gives a record with its `error` instead of stopping the
  others.
  """
  for case in opts.cases:
    if case not in ('supervised', 'mcmt', 'input_pipeline'):
      _parse_infer_case(case)
  if opts.torch not in TORCH_MODES:
    raise ValueError(f'--torch must be one of {sorted(TORCH_MODES)}, got {opts.torch!r}')
  if opts.infer_path not in ('auto', 'whole', 'tiled'):
    raise ValueError(f'--infer_path must be auto, whole or tiled, got {opts.infer_path!r}')
  devices = jax.devices()[:opts.num_devices]
  common = {**_device_info(devices), 'model': _model_fields(config),
            'steps': opts.steps, 'warmup': opts.warmup, 'date': _now(),
            'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'compiler_options': dict(opts.compiler_options), **opts.extra}
  torch_variants = TORCH_MODES[opts.torch]
  if torch_variants and _torch()[0] is None:
    print(f'# torch is not installed ({_torch()[2]}): skipping the PyTorch cases '
          '(pip install -r benchmarks/requirements.txt)', file=sys.stderr)
    torch_variants = ()
  records: list[dict[str, Any]] = []
  mcmt_rate: dict[str, float] = {}
  for case in opts.cases:
    dtypes = ('float32',) if case == 'input_pipeline' else opts.dtypes
    for dtype in dtypes:
      try:
        if case == 'input_pipeline':
          record = bench_pipeline(config, opts)
          step_rate = mcmt_rate.get('bfloat16', mcmt_rate.get('float32'))
          if step_rate:
            record['vs_mcmt_step'] = record['patches_per_s'] / step_rate
          _emit({**common, **record}, opts, records)
          continue
        if not opts.jax:
          record, params = None, init_params(config, dtype)
        elif case in TRAIN_FORWARDS:
          record, params = bench_train(config, case, dtype, opts, devices)
          if case == 'mcmt':
            mcmt_rate[dtype] = record['patches_per_s']
        else:
          record, params = bench_infer(config, case, dtype, opts, devices)
      except Exception as e:  # pylint: disable=broad-except
        _emit({**common, 'case': case, 'framework': 'jax', 'dtype': dtype,
               'error': f'{type(e).__name__}: {e}'[:2000]}, opts, records)
        continue
      rate_key = 'patches_per_s' if case in TRAIN_FORWARDS else 'images_per_s'
      for variant in torch_variants:
        try:
          t = bench_torch(config, case, dtype, variant, opts, params)
          if record is not None:
            record[f'vs_torch_{variant}'] = record[rate_key] / t[rate_key]
            t[f'jax_vs_torch_{variant}'] = record[f'vs_torch_{variant}']
        except Exception as e:  # pylint: disable=broad-except
          t = {'case': case, 'framework': 'torch', 'variant': variant, 'dtype': dtype,
               'error': f'{type(e).__name__}: {e}'[:2000]}
        _emit({**common, **t}, opts, records)
      if record is not None:
        _emit({**common, **record}, opts, records)
  return records


def run_isolated(argv: Sequence[str], opts: Options) -> list[dict[str, Any]]:
  """Runs each (case, dtype) in a fresh process of this script (a per-case device peak)."""
  keep = [a for a in argv[1:] if not re.match(r'--(no)?(isolate|cases|dtypes)\b', a)]
  records = []
  for case in opts.cases:
    for dtype in (('float32',) if case == 'input_pipeline' else opts.dtypes):
      cmd = [sys.executable, os.path.abspath(__file__), *keep, f'--cases={case}',
             f'--dtypes={dtype}', '--noisolate']
      proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
      for line in proc.stdout.splitlines():
        if line.startswith('{'):
          print(line, flush=True)
          records.append(json.loads(line))
      if proc.returncode:
        print(f'# {case} {dtype}: exit status {proc.returncode}', file=sys.stderr)
  return records


def define_flags() -> None:
  """The command-line flags (defined only when run as a script, so importing this module, as the
  tests do, adds no global absl flags)."""
  config_flags.DEFINE_config_file(
      'config', 'configs/crnet.py', 'Run config (`path:arg`); override fields with --config.x.y.')
  flags.DEFINE_list('cases', list(DEFAULT_CASES),
                    'supervised, mcmt, input_pipeline, infer_<width>x<height>.')
  flags.DEFINE_list('dtypes', ['float32', 'bfloat16'], 'Compute dtypes (config.model.dtype).')
  flags.DEFINE_integer('steps', 20, 'Timed steps per case (the median is reported).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps before the timed ones.')
  flags.DEFINE_enum('torch', 'none', list(TORCH_MODES),
                    'Also time the PyTorch twin: eager, torch.compile or both.')
  flags.DEFINE_integer('batch', None, 'Supervised patches per step (default data.batch_size).')
  flags.DEFINE_integer('labeled', None, 'MCMT labeled patches per step (default data.batch_size).')
  flags.DEFINE_integer('unlabeled', None,
                       'MCMT unlabeled patches per step (default data.unlabeled_batch_size).')
  flags.DEFINE_integer('patch', None, 'Patch side in pixels (default data.patch_size).')
  flags.DEFINE_integer('num_devices', 1, 'Devices of the mesh for the train steps.')
  flags.DEFINE_enum('infer_path', 'auto', ['auto', 'whole', 'tiled'],
                    'Inference path: as the Enhancer chooses (auto), or forced.')
  flags.DEFINE_bool('end_to_end', True, 'Also time Enhancer.__call__ on a numpy image.')
  flags.DEFINE_integer('pipeline_steps', 0, 'Batches timed for input_pipeline (0: 5 * steps).')
  flags.DEFINE_string('profile_dir', '', 'Write a jax.profiler trace of the timed steps here.')
  flags.DEFINE_integer('profile_steps', 0,
                       'With --profile_dir: trace this many train steps after the timed ones '
                       '(0: trace the warm-up and timed steps).')
  flags.DEFINE_bool('jax', True, 'Time the JAX cases (--nojax: only the PyTorch twin\'s).')
  flags.DEFINE_bool('isolate', False, 'Run each case and dtype in a fresh process.')
  flags.DEFINE_string('out', '', 'Append the JSON lines to this file too.')
  flags.DEFINE_list('xla_options', [],
                    'XLA options key=value for the timed executables, e.g. '
                    'xla_gpu_autotune_level=4 (XLA_FLAGS applies to every compilation instead).')


def _parse_option(text: str) -> tuple[str, Any]:
  key, _, value = text.partition('=')
  if value.lower() in ('true', 'false'):
    return key, value.lower() == 'true'
  try:
    return key, int(value)
  except ValueError:
    pass
  try:
    return key, float(value)
  except ValueError:
    return key, value


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  opts = Options(cases=f.cases, dtypes=f.dtypes, steps=f.steps, warmup=f.warmup, torch=f.torch,
                 batch=f.batch, labeled=f.labeled, unlabeled=f.unlabeled, patch=f.patch,
                 num_devices=f.num_devices, infer_path=f.infer_path, end_to_end=f.end_to_end,
                 pipeline_steps=f.pipeline_steps, profile_dir=f.profile_dir,
                 profile_steps=f.profile_steps, jax=f.jax, out=f.out,
                 compiler_options=dict(_parse_option(o) for o in f.xla_options),
                 extra={'command': ' '.join(['python', 'benchmarks/bench.py'] + sys.argv[1:])})
  if f.isolate:
    run_isolated(sys.argv, opts)
  else:
    run(f.config, opts)


if __name__ == '__main__':
  define_flags()
  app.run(main)
