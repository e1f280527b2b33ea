"""What several test files share."""

import flax
import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, seed=0, gamma=0.6):
  """Random params of `model` (no init to compile), every one non-zero.

  Kernels are LeCun normal, biases normal with std 0.1, and the layer-attention gammas `gamma`: a
  value, or a (low, high) range each is drawn from. A port must map them all.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  flat = flax.traverse_util.flatten_dict(shapes, sep='/')
  rng = np.random.default_rng(seed)
  for key, value in flat.items():
    if key.endswith('gamma'):
      flat[key] = rng.uniform(*gamma) if isinstance(gamma, tuple) else gamma
    elif key.endswith('bias'):
      flat[key] = rng.normal(0.0, 0.1, value.shape)
    else:
      flat[key] = rng.normal(0.0, 1.0, value.shape) / np.sqrt(np.prod(value.shape[:-1]))
  flat = {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}
  return flax.traverse_util.unflatten_dict(flat, sep='/')
