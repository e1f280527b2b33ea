r"""CRNet and MCMT on LOL v1 (485 train / 15 test pairs), the paper's dataset: one arm per run.

The data path is an argument (`--config.data.lol_dir`): the folder holding `our485/` and
`eval15/` (each with `low/` and `high/`), or a folder written by `experiments/lol/lol.py pack`.

  python main.py --config=configs/lol.py:few --workdir=runs/lol/few \
      --config.data.lol_dir=/path/to/LOL

Arguments (comma-separated, `--config=configs/lol.py:few,test`): one arm and at most one size.

- Arms (`ARMS`), every one with the same seed, hence the same labeled pairs and the same steps:
  - `few`: supervised CRNet on a seeded 10% of the labels (49 pairs; paper 21.94 dB / 0.9086).
  - `full`: supervised CRNet on all 485 pairs (paper 24.01 / 0.9281).
  - `mcmt`: MCMT with the same 10% labeled, the other 436 lows unlabeled (paper 23.05 / 0.9354).
  - `mcmt-`: as `mcmt` without the mid-consistency term, gamma 0 (paper 22.50 / 0.9370).
  - `mcmt_real`: as `mcmt`, the pool joined by real dark photos given as
    `--config.data.unlabeled_dirs="('/path/DICM', '/path/LIME')"`.
- Sizes (the values: `SIZES` in configs/common.py):
  - none (the default, for a GPU): the paper's network (C 32, N 4, T 2, B 5) in bfloat16 compute
    (float32 parameters), patches of 128, 16 labeled (+ 16 unlabeled) patches per step, the
    paper's schedule: 100 epochs of 30 patches per labeled image, Adam 5e-4 halved at epochs 20,
    40, 60 and 90; evaluation on eval15 every 10 epochs. `few`: 49 * 30 // 16 = 91 steps per
    epoch, 9,100 steps. `full` takes 3 patches per image and epoch (485 * 3 // 16 = 90 steps
    per epoch, 9,000 steps), so that every arm has about the same budget and schedule.
  - `cpu`: the label-limited regime that 2 CPU cores can train (docs/study.md, "LOL v1 at CPU
    scale"): a small CRNet (C 16, 2 groups x 1 recurrence x 2 blocks, float32), 32x32 patches,
    8 labeled (+ 8 unlabeled) patches per step, 4,000 steps for every arm (about 22 epochs:
    49 * 30 // 8 = 183 steps per epoch at 10%, 485 * 3 // 8 = 181 at 100%), Adam 2e-3 halved
    at epochs 11 and 16.4 (steps ~2,000 and ~3,000), evaluation every ~500 steps. Meant for LOL
    at half resolution (`experiments/lol/lol.py pack --scale 0.5`), where 4,000 steps are 11 passes
    over the 49 labeled pairs.
  - `cpu_wide`: as `cpu` with twice the features (C 32: 343k parameters against 89k), to test
    whether the gap between 10% and 100% of the labels grows with the network's capacity.
  - `cpu_long`: as `cpu` trained 4x longer (16,000 steps; the learning rate halved at steps
    ~8,000, 12,000, 14,000 and 15,000, so the last evaluations come from a settled network), to
    test whether 485 pairs pull away from 49 when the network sees each of them more often
    (in the `cpu` runs `full` still rose at the last step while `few` was flat from step ~1,000).
  - `cpu_mean`: as `cpu` with `model.layer_attention_energy='mean'`: the layer attention's energy
    divided by the pixels it sums over, so that a 300x200 test image (58x the pixels of a 32x32
    patch) gets the softmax the patches trained (docs/model.md, "The energy grows with the image
    size"; in `cpu_long` the `full` arm's whole-image PSNR fell from 21.2 to 13.2 dB while its
    training loss kept falling).
  - `cpu_long_mean`: `cpu_long` with the energy as a mean (`cpu_mean`'s model, `cpu_long`'s
    16,000 steps).
  - `test`: tiny (features 4, 2 groups x 1 recurrence x 1 block, 16x16 patches, 3 steps), for the
    tests.

Expected (the `few` arm at the default size on one H200, `experiments/lol/lol_gpu.sh`): the
README's "Results on LOL v1" table gives the measured figure next to the paper's.
"""

import ml_collections

from configs import common
from configs import crnet
from configs import mcmt

# Arm -> (method, label fraction, loss overrides).
ARMS = {
    'few': ('supervised', 0.1, {}),
    'full': ('supervised', 1.0, {}),
    'mcmt': ('mcmt', 0.1, {}),
    'mcmt-': ('mcmt', 0.1, {'gamma': 0.0}),
    'mcmt_real': ('mcmt', 0.1, {}),
}
# Size argument -> its entry in common.SIZES.
SIZE_ENTRIES = {'cpu': 'lol_cpu', 'cpu_wide': 'lol_cpu_wide', 'cpu_long': 'lol_cpu_long',
                'cpu_mean': 'lol_cpu_mean', 'cpu_long_mean': 'lol_cpu_long_mean', 'test': 'test'}
SIZES = tuple(SIZE_ENTRIES)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One arm of the LOL runs; `arg` selects the arm and optionally a size (module docstring)."""
  arm, size = common.parse_arg(arg, ARMS, SIZES)
  if arm is None:
    raise ValueError(f'config argument {arg!r}: name one arm of {sorted(ARMS)}')
  method, fraction, loss = ARMS[arm]
  config = mcmt.get_config() if method == 'mcmt' else crnet.get_config()
  config.method = method
  config.loss.update(loss)
  d = config.data
  d.dataset = 'lol'
  d.lol_variant = 'v1'
  d.label_fraction = fraction
  # Equal budgets: 30 patches per labeled image at 10% labels, 3 at 100%.
  d.patches_per_image = 3 if fraction >= 1.0 else 30
  config.model.dtype = 'bfloat16'
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 1000
  config.num_eval_images = 3
  config.run_name = arm
  common.apply_size(config, SIZE_ENTRIES.get(size))
  return config
