r"""Time CRNet's parameter initialisation (the default network) in a fresh process, one way.

  for v in host_cpu gpu_kernel_threefry device_default project; do
    python benchmarks/init_time.py $v; done

Ways: `device_default` (jit on the default device), `gpu_kernel_threefry` (the same under jax's
`jax_threefry_gpu_kernel_lowering`), `host_cpu` (jit on the host's CPU, then copied to the
device), `project` (what `train.compiled_functions` does). Prints one JSON line: seconds for the
first call (compilation included) and a checksum of the parameters (sum of |p|), which must agree
between ways up to the summation order.
"""

import datetime
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
t0 = time.time()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import crnet  # noqa: E402
from crnet_jax import models  # noqa: E402
from crnet_jax import train  # noqa: E402

VARIANTS = ('device_default', 'gpu_kernel_threefry', 'host_cpu', 'project')


def main(variant: str) -> dict:
  if variant not in VARIANTS:
    raise SystemExit(f'error: variant {variant!r}: choose one of {VARIANTS}')
  model = models.create_model(crnet.get_config().model)
  init = jax.jit(lambda k: models.init_params(model, k))
  key = jax.random.PRNGKey(0)
  t = time.time()
  if variant == 'device_default':
    params = init(key)
  elif variant == 'gpu_kernel_threefry':
    with train._fast_threefry():  # pylint: disable=protected-access
      params = init(key)
  elif variant == 'host_cpu':
    cpu = jax.local_devices(backend='cpu')[0]
    with jax.default_device(cpu):
      params = jax.device_put(jax.device_get(init(jax.device_put(key, cpu))), jax.devices()[0])
  else:
    params = train._compiled_init_params(  # pylint: disable=protected-access
        model, train.create_mesh())(key)
  jax.block_until_ready(params)
  seconds = time.time() - t
  record = {'variant': variant, 'init_s': round(seconds, 2), 'import_s': round(t - t0, 2),
            'checksum': float(sum(float(jnp.sum(jnp.abs(p))) for p in jax.tree.leaves(params))),
            'device': jax.devices()[0].device_kind, 'jax': jax.__version__,
            'date': datetime.date.today().isoformat(),
            'command': f'python benchmarks/init_time.py {variant}'}
  print(json.dumps(record), flush=True)
  return record


if __name__ == '__main__':
  main(sys.argv[1] if len(sys.argv) > 1 else 'project')
