"""MCMT: semi-supervised CRNet with the Multi-Consistency Mean Teacher, 10% of the labels.

Command (the embedded default data; add the LOL override for the paper's setting):

  python main.py --config=configs/mcmt.py --workdir=/tmp/mcmt \\
      --config.data.dataset=lol --config.data.lol_dir=/path/to/LOL

Recipe: as configs/crnet.py (Adam 5e-4 halved at epochs 20, 40, 60, 90 of 100), with
data.label_fraction 0.1 (a seeded 10% of the train pairs keep their labels; the low images of the
others are the unlabeled pool), 16 labeled + 16 unlabeled patches per step, and
L_SSL = L_PE(labeled) + lam * (L_C + gamma * L_mc) with beta = gamma = lam = 1; the teacher is the
EMA (decay 0.99) of the student and sees its input with Gaussian noise (std 0.02). Expected result
(paper, Table 2, LOL real, 10% labels): PSNR 23.05 dB, SSIM 0.9354 for the student (the best
checkpoint in `workdir/best` is chosen by the student's PSNR; the teacher's metrics are logged
too); supervised CRNet on the same 10% (configs/crnet.py:crnet10) reaches 21.94 / 0.9086.

Arguments (comma-separated, combinable: `--config=configs/mcmt.py:demo,ours-`):

- One Table 2 row:
  - `ours-`: without the mid-consistency L_mc (gamma 0; paper 22.50 / 0.9370).
  - `ours`: the full MCMT (the default; paper 23.05 / 0.9354).
- A size (the values: `SIZES` in configs/common.py):
  - `demo`: CPU-sized: the network and patches of configs/crnet.py:demo, 8 labeled + 8
    unlabeled patches per step, 800 steps, learning rate 2e-3 halved at steps 480 and 720, on the
    embedded default data (10% labels: 1 labeled and 5 unlabeled train images, 2 test pairs).
    `python main.py --config=configs/mcmt.py:demo --workdir=/tmp/demo_mcmt`
    Measured (2 CPU cores, no GPU, 2026-11-24): 2 min 38 s wall time in all (about 6 steps/s,
    95 patches/s); test PSNR 16.69 dB / SSIM 0.585 (student), 16.32 dB / 0.582 (teacher) at
    the last step, against 7.73 dB / 0.165 for the input itself (identity). With a single
    labeled image this demo shows the mechanics, not the paper's gain.
  - `test`: tiny, for the tests (a few seconds).
"""

import ml_collections

from configs import common
from configs import crnet

ROWS = {
    'ours-': ({}, {'gamma': 0.0}, {}),
    'ours': ({}, {}, {}),
}
# Size argument -> its entry in common.SIZES.
SIZE_ENTRIES = {'demo': 'mcmt_demo', 'test': 'test'}
SIZES = tuple(SIZE_ENTRIES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MCMT with 10% labels; `arg` selects a Table 2 row and/or a size (module docstring)."""
  row, size = common.parse_arg(arg, ROWS, SIZES)
  config = crnet.get_config()
  config.method = 'mcmt'
  config.data.label_fraction = 0.1
  common.apply_row(config, ROWS[row or 'ours'])
  common.apply_size(config, SIZE_ENTRIES.get(size))
  return config
