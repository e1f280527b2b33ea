"""The studies: the LOL v1 runs (`lol/`), the synthetic-pair study (`study/`), the darkening's
calibration (`brightness.py`). Their results are in `benchmarks/results/` and `docs/`."""
