"""The label-efficiency study on synthetic pairs: `python experiments/study/main.py --help`."""
