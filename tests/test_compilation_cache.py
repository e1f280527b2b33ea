"""main.py turns on JAX's persistent compilation cache: a second process reuses the compilation."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _compile_in_subprocess(cache_dir: str) -> str:
  """Compiles a small program in a fresh process; returns the cache folder jax used ('' none)."""
  code = (
      'import sys, jax, jax.numpy as jnp\n'
      f'sys.path.insert(0, {REPO!r})\n'
      'import main\n'
      f'main.enable_compilation_cache({cache_dir!r})\n'
      'f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T)\n'
      'f(jnp.ones((64, 64))).block_until_ready()\n'
      'print(jax.config.jax_compilation_cache_dir or "")\n')
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(JAX_PLATFORMS='cpu', JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  done = subprocess.run([sys.executable, '-c', code], check=True, env=env, cwd=REPO, timeout=120,
                        capture_output=True, text=True)
  return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''


def test_compilation_cache_is_written_and_can_be_turned_off(tmp_path):
  cache = tmp_path / 'cache'
  assert _compile_in_subprocess(str(cache)) == str(cache)
  entries = os.listdir(cache)
  assert entries, 'no compiled program was stored'
  _compile_in_subprocess(str(cache))  # the same program again: found, not stored twice
  assert sorted(os.listdir(cache)) == sorted(entries)
  assert _compile_in_subprocess('') == ''
