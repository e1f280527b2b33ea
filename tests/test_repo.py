"""The repository's promises: CI runs the README's test command; no TensorFlow anywhere."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
  ci = (ROOT / '.ci' / 'run').read_text()
  command = ci.split('# README test command:\n', 1)[1].strip().splitlines()[0]
  assert command in (ROOT / 'README.md').read_text()
  assert 'requirements.txt' in ci


def test_no_tensorflow_in_requirements_or_code():
  requirements = (ROOT / 'requirements.txt').read_text().lower()
  assert not re.search(r'^tensorflow(-cpu|-gpu)?==', requirements, re.M)
  for path in list((ROOT / 'crnet_jax').rglob('*.py')) + [ROOT / 'main.py']:
    if path.exists():
      assert not re.search(r'^\s*(import|from) tensorflow\b', path.read_text(), re.M), path
