"""The LOL v1 runs: `lol.py` (pack, baseline, release), `lol_gpu.sh`, `lol_study.py` (seeds)."""
