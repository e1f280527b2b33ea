"""Test setup: 4 fake CPU devices (for sharding tests) and parsed absl flags (for grain workers)."""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# main.py's persistent compilation cache stays off in tests (no files in ~/.cache).
os.environ.setdefault('CRNET_JAX_CACHE_DIR', '')

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
