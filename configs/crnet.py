"""Supervised CRNet (100% labels) with the paper's recipe, and the rows of the paper's Table 2.

Command (the embedded default data; add the LOL override for the paper's setting):

  python main.py --config=configs/crnet.py --workdir=/tmp/crnet \\
      --config.data.dataset=lol --config.data.lol_dir=/path/to/LOL

Recipe: Adam, learning rate 5e-4 halved at epochs 20, 40, 60 and 90 of 100, loss
L_PE = (1 - SSIM) + beta * L_ms with beta 1, patches of 128, batch 16, 30 patches per image and
epoch. Expected result (paper, Table 1/2, LOL real, 485 train / 15 test): PSNR 24.01 dB, SSIM
0.9281 (best checkpoint in `workdir/best`, metrics in `workdir/metrics.jsonl`).

Arguments (comma-separated, combinable: `--config=configs/crnet.py:demo,mrn`):

- One Table 2 row (LOL real, paper's PSNR / SSIM):
  - `rn`: plain convolutions, no layer attention, beta 0 (RN; 20.83 / 0.8904).
  - `mrn`: masked convolutions, no layer attention, beta 0 (MRN; 22.17 / 0.9287).
  - `mrn+`: as `mrn` with the mid-step loss, beta 1 (MRN+; 22.38 / 0.9321).
  - `crnet-`: the full network without the mid-step loss, beta 0 (CRNet-; 23.67 / 0.9326).
  - `crnet`: the full network and loss (the default; CRNet, 24.01 / 0.9281).
  - `crnet10`: the full network trained on 10% of the labels, supervised only
    (data.label_fraction 0.1; 21.94 / 0.9086).
- A size (the values: `SIZES` in configs/common.py):
  - `demo`: CPU-sized: features 8, 2 groups x 1 recurrence x 2 blocks, 32x32 patches, batch 8,
    1200 steps (54.5 epochs of 22 steps), learning rate 2e-3 halved at steps 660 and 990, on the
    embedded default data (6 train / 2 test pairs darkened from scikit-image's photos).
    `python main.py --config=configs/crnet.py:demo --workdir=/tmp/demo_crnet`
    Measured (2 CPU cores, no GPU, 2026-11-24): 2 min 06 s wall time in all (about 14 steps/s,
    110 patches/s); test PSNR 21.52 dB / SSIM 0.658 at the last step, 22.57 dB / 0.660 at
    step 1100 (the best checkpoint), against 7.73 dB / 0.165 for the input itself (identity).
  - `test`: tiny, for the tests (a few seconds): features 4, 2 groups x 1 x 1 block, the
    default data downscaled to 64 pixels, 16x16 patches, batch 4, 3 steps.
"""

import ml_collections

from configs import common
from configs import default

# Table 2 rows: (model overrides, loss overrides, data overrides).
ROWS = {
    'rn': ({'masked_conv': False, 'layer_attention': False}, {'beta': 0.0}, {}),
    'mrn': ({'layer_attention': False}, {'beta': 0.0}, {}),
    'mrn+': ({'layer_attention': False}, {'beta': 1.0}, {}),
    'crnet-': ({}, {'beta': 0.0}, {}),
    'crnet': ({}, {}, {}),
    'crnet10': ({}, {}, {'label_fraction': 0.1}),
}
# Size argument -> its entry in common.SIZES.
SIZE_ENTRIES = {'demo': 'demo', 'test': 'test'}
SIZES = tuple(SIZE_ENTRIES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Supervised CRNet; `arg` selects a Table 2 row and/or a size (see the module docstring)."""
  row, size = common.parse_arg(arg, ROWS, SIZES)
  config = default.get_config()
  config.method = 'supervised'
  config.data.label_fraction = 1.0
  common.apply_row(config, ROWS[row or 'crnet'])
  common.apply_size(config, SIZE_ENTRIES.get(size))
  return config
