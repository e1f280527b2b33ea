"""Test setup: 4 fake CPU devices (for sharding tests) and parsed absl flags (for grain workers)."""

import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# main.py's persistent compilation cache stays off in tests (no files in ~/.cache); instead every
# process of one test run (pytest's workers and the main.py runs they start) shares one fresh
# jax compilation cache, so the same small programs compile once per run, not once per process.
os.environ.setdefault('CRNET_JAX_CACHE_DIR', '')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(),
    f'crnet-tests-jax-cache-{os.environ.get("PYTEST_XDIST_TESTRUNUID") or os.getpid()}'))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
