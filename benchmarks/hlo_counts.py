r"""What the compiler makes of a train step: kernels, GEMMs and convolutions per option, as JSON.

Compiles the gradient of the supervised loss (L_PE of CRNet's stages, the heart of every train
step) for each performance option on the current backend and counts, in the optimized HLO's entry
computation (and the loops it calls), the top-level operations: on a GPU each one is about one
kernel launch (fusions, library calls for convolutions and GEMMs, copies); on CPU the counts are a
proxy (XLA's CPU backend fuses differently, and Pallas kernels run in its interpreter there). It
compiles only, so it runs on any machine in seconds to minutes:

  python benchmarks/hlo_counts.py --config=configs/crnet.py:demo --batch=4 --patch=32
  python benchmarks/hlo_counts.py --batch=16 --patch=128 --dtype=bfloat16   # the GPU step

One JSON line per option: `ops` (top-level operations), `fusions`, `dots` (matrix products:
GEMMs on a GPU), `convolutions`, `custom_calls` (cuDNN, cuBLAS, Triton kernels on a GPU) and
`copies` (transposes and layout changes).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from crnet_jax import losses  # noqa: E402
from crnet_jax import models  # noqa: E402

OPTIONS = {
    'default': {},
    'layer_attention_impl=reduce': {'layer_attention_impl': 'reduce'},
    'layer_attention_impl=concat': {'layer_attention_impl': 'concat'},
    'mrb_impl=pallas': {'mrb_impl': 'pallas'},
}

_OPCODE = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*[^=]*?\s([a-z][\w\-]*)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'(?:body|condition|to_apply)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')


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


def count_ops(hlo: str) -> dict[str, int]:
  """Top-level operations of the entry computation and of the loops and conditionals it runs.

  Fused computations are not entered: a fusion counts once, however many ops it holds.
  """
  blocks, entry = _computations(hlo)
  counts: collections.Counter = collections.Counter()
  seen, todo = set(), [entry]
  while todo:
    name = todo.pop()
    if name in seen or name not in blocks:
      continue
    seen.add(name)
    for line in blocks[name]:
      m = _OPCODE.match(line)
      if not m:
        continue
      op = m.group(1)
      if op in ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast'):
        continue
      counts[op] += 1
      if op in ('while', 'conditional', 'call'):
        todo.extend(_CALLS.findall(line))
        for group in _BRANCHES.findall(line):
          todo.extend(c.strip().lstrip('%') for c in group.split(','))
  return {
      'ops': sum(n for op, n in counts.items() if op not in ('while', 'conditional', 'call')),
      'fusions': counts['fusion'],
      'dots': counts['dot'],
      'convolutions': counts['convolution'],
      'custom_calls': counts['custom-call'],
      'copies': counts['copy'] + counts['transpose'],
  }


def dots_anywhere(hlo: str) -> int:
  """Matrix products anywhere in the module, fused or not."""
  return sum(' dot(' in line for line in hlo.splitlines())


def compiled_gradient_hlo(model_config: Any, batch: int, patch: int) -> str:
  """The optimized HLO of the gradient of L_PE for a model built from `model_config`."""
  model = models.create_model(model_config)
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  x = jax.ShapeDtypeStruct((batch, patch, patch, 3), jnp.float32)

  def loss(p, low, high):
    final, intermediates = model.apply({'params': p}, low)
    return losses.progressive_enhancement_loss(final, intermediates, high, 1.0)[0]

  return jax.jit(jax.grad(loss)).lower(params, x, x).compile().as_text()


def measure(model_config: Any, options: Sequence[str], batch: int, patch: int
            ) -> list[dict[str, Any]]:
  records = []
  for name in options:
    config = model_config.copy_and_resolve_references()
    config.update(OPTIONS[name])
    hlo = compiled_gradient_hlo(config, batch, patch)
    records.append({'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
                    'jax_version': jax.__version__, 'option': name, 'batch': batch,
                    'patch': patch, 'dtype': config.dtype, **count_ops(hlo),
                    'dots_anywhere': dots_anywhere(hlo)})
  return records


def define_flags() -> None:
  """The command-line flags (defined only when run as a script: importing this module, as the
  tests do, adds no global absl flags)."""
  config_flags.DEFINE_config_file('config', os.path.join(REPO, 'configs', 'crnet.py'),
                                  'run config (its `model` fields are used)')
  flags.DEFINE_integer('batch', 16, 'patches per step')
  flags.DEFINE_integer('patch', 128, 'patch side')
  flags.DEFINE_string('dtype', '', "compute dtype ('' = the config's)")
  flags.DEFINE_list('options', list(OPTIONS), f'which of {list(OPTIONS)}')


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  model_config = f.config.model
  if f.dtype:
    model_config.dtype = f.dtype
  unknown = sorted(set(f.options) - set(OPTIONS))
  if unknown:
    raise SystemExit(f'error: --options: unknown {unknown}; choose from {list(OPTIONS)}')
  for record in measure(model_config, f.options, f.batch, f.patch):
    print(json.dumps(record), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
