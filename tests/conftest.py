"""Test setup: 4 fake CPU devices (for sharding tests) and parsed absl flags (for grain workers)."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
