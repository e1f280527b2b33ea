r"""The runs of the label-efficiency study: few labels + unlabeled photos vs. labels.

Every run trains on synthetic low/normal pairs made by `experiments/study/main.py prepare` from 532
clean photos (CBSD432 + SunHays80 + Urban100_sub20, darkened by `crnet_jax/datasets/degrade.py`)
and evaluates during training on the 68 CBSD68 photos darkened the same way (the `paired_folders`
dataset with separate test folders). `docs/study.md` gives the commands; in short:

  python experiments/study/main.py prepare --sources /data/study_sources    # -> study_data/
  python main.py --config=configs/study.py:mcmt10 --workdir=runs/study/mcmt10
  python experiments/study/main.py run --runs crnet10,mcmt10 --budget_minutes 9  # resumable

Arguments (comma-separated, `--config=configs/study.py:cpu,mcmt10`): one run and at most one size.

- Runs (`RUNS`):
  - `crnet100`: supervised CRNet, 100% of the labels (the upper reference).
  - `crnet10`: supervised CRNet, the same seeded 10% of the labels as the MCMT runs.
  - `mcmt10-`: MCMT with 10% labels, without the mid-consistency term (gamma 0; paper "Ours-").
  - `mcmt10`: the full MCMT with 10% labels (paper "Ours"): the unlabeled pool is the low images
    of the other 90% of the training pairs.
  - `mcmt10_real`: as `mcmt10`, the pool joined by the real low-light photos of DICM, LIME and
    LOL eval15/low (without 778, the LOL test pair): what real dark photos add.
  - `rn`, `mrn`, `mrn+`, `crnet-`: the backbone ablations of the paper's Table 2, 100% labels.
- Sizes (the values: `SIZES` in configs/common.py):
  - none (the default, for a GPU): the full CRNet (C 32, N 4, T 2, B 5) in bfloat16 compute
    (float32 parameters), patches of 128, 16 labeled (+ 16 unlabeled) patches per step, the
    paper's schedule: 100 epochs, Adam 5e-4 halved at epochs 20, 40, 60 and 90, evaluation of
    the student and the teacher on CBSD68 every 4 epochs (25 points on the PSNR-vs-step curve).
  - `half`: the same for 50 epochs (learning rate halved at epochs 10, 20, 30 and 45, evaluation
    every 2 epochs).
  - `small`: the study at CPU scale (about 35 minutes per supervised run and 70 per MCMT run
    on 2 CPU cores, most of it evaluation): a small CRNet (C 8, 2 groups x 1 recurrence x 2
    blocks) in float32, 32x32 patches, 8 labeled (+ 8 unlabeled) patches per step, 10 patches
    per labeled photo and epoch at 10% labels (1 at 100%: 53 * 10 // 8 = 532 * 1 // 8 = 66 steps
    per epoch), and the paper's schedule otherwise: 100 epochs (6,600 steps), Adam 5e-4 halved
    at epochs 20, 40, 60 and 90; evaluation every 10 epochs (one evaluation of the 68 CBSD68
    photos costs as much CPU time as ~1,000 training steps). Not the paper's network: a preview of the
    claim, not its measurement.
  - `cpu`: a tiny CRNet (C 4, 2 groups x 1 x 1 block), 32x32 patches, batches of 4 (+ 4),
    4 steps: for the tests and for a CPU smoke run that proves the wiring.

Equal budgets. Every run has the same seed (`seed` and `data.seed` 0, hence the same 10% label
split) and the same number of steps: an "epoch" is made the same number of steps in every run by
taking `patches_per_image = 3` patches per photo and epoch in the 100%-label runs and 30 (the
paper's) in the 10%-label runs. With the 532 study photos that is 532 * 3 // 16 = 99 steps for
100% and 53 * 30 // 16 = 99 steps for 10% (53 labeled photos), so 100 epochs are 9,900 steps for
every run (`experiments/study/main.py run` prints the plan and says if the steps ever differ).
All runs see 16 labeled patches per step; MCMT adds 16 unlabeled ones, as in configs/mcmt.py.

`study_dir` (a top-level field; `--config.study_dir=/abs/path`) is the folder written by
`experiments/study/main.py prepare`; every data path (and the TFDS cache, `study_dir/tfds`)
follows it.
`run_name` records the run for the report.
"""

import ml_collections

from configs import common
from configs import crnet
from configs import mcmt

# Run name -> (method, label fraction, Table 2 row overrides (model, loss, data), real photos).
RUNS = {
    'crnet100': ('supervised', 1.0, crnet.ROWS['crnet'], False),
    'crnet10': ('supervised', 0.1, crnet.ROWS['crnet'], False),
    'mcmt10-': ('mcmt', 0.1, mcmt.ROWS['ours-'], False),
    'mcmt10': ('mcmt', 0.1, mcmt.ROWS['ours'], False),
    'mcmt10_real': ('mcmt', 0.1, mcmt.ROWS['ours'], True),
    'rn': ('supervised', 1.0, crnet.ROWS['rn'], False),
    'mrn': ('supervised', 1.0, crnet.ROWS['mrn'], False),
    'mrn+': ('supervised', 1.0, crnet.ROWS['mrn+'], False),
    'crnet-': ('supervised', 1.0, crnet.ROWS['crnet-'], False),
}
# The order in which `experiments/study/main.py run` trains them: the claim first, ablations last.
CORE_RUNS = ('crnet10', 'mcmt10', 'mcmt10-', 'crnet100', 'mcmt10_real')
ABLATION_RUNS = ('rn', 'mrn', 'mrn+', 'crnet-')
# Size argument -> its entry in common.SIZES.
SIZE_ENTRIES = {'cpu': 'study_cpu', 'small': 'study_small', 'half': 'study_half'}
SIZES = tuple(SIZE_ENTRIES)

SEED = 0
STUDY_DIR = 'study_data'  # relative to the working directory (the repo root for main.py)
REFERENCE_LABEL_FRACTION = 0.1  # the runs with few labels take `PATCHES_PER_IMAGE` per photo
PATCHES_PER_IMAGE = 30  # the paper's, for the 10% runs (3 for the 100% runs)
# Subfolders of `study_dir` written by `experiments/study/main.py prepare`.
TRAIN = 'train'  # train/{low,high}: 532 synthetic pairs
TEST = 'cbsd68'  # cbsd68/{low,high}: 68 synthetic pairs
REAL_DARK = ('real_dark/dicm', 'real_dark/lime', 'real_dark/lol_low')


def patches_per_image(label_fraction: float, base: int = PATCHES_PER_IMAGE) -> int:
  """Patches per labeled photo and epoch: `base` at 10% labels, scaled so an epoch's steps match."""
  return max(1, int(round(base * REFERENCE_LABEL_FRACTION / label_fraction)))


def _apply_recipe(config: ml_collections.ConfigDict, label_fraction: float) -> None:
  """The study's runs without a size: the paper's network, patches and schedule, evaluation of
  the student and the teacher every 4 epochs."""
  c = config
  c.num_epochs = 100
  c.lr_decay_epochs = (20, 40, 60, 90)
  c.eval_every_epochs = 4
  c.checkpoint_every_steps = 250  # a killed call loses at most this many steps
  c.max_to_keep = 2
  c.log_every_steps = 50
  c.num_eval_images = 2
  c.model.dtype = 'bfloat16'
  c.data.update(patch_size=128, batch_size=16, unlabeled_batch_size=16, eval_batch_size=4,
                patches_per_image=patches_per_image(label_fraction))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """One run of the study; `arg` names the run and optionally a size (module docstring)."""
  run, size = common.parse_arg(arg, RUNS, SIZES)
  if run is None:
    raise ValueError(f'config argument {arg!r}: name a run, one of {list(RUNS)}')
  method, label_fraction, row, real = RUNS[run]
  config = (mcmt if method == 'mcmt' else crnet).get_config()
  config.method = method
  common.apply_row(config, row)
  config.data.label_fraction = label_fraction

  config.run_name = run
  config.study_dir = ml_collections.FieldReference(STUDY_DIR)
  ref = config.get_ref('study_dir')
  d = config.data
  d.dataset = 'paired_folders'
  d.low_dir = ref + f'/{TRAIN}/low'
  d.high_dir = ref + f'/{TRAIN}/high'
  d.test_low_dir = ref + f'/{TEST}/low'
  d.test_high_dir = ref + f'/{TEST}/high'
  d.test_fraction = 0.0
  d.data_dir = ref + '/tfds'
  if real:
    # A string of folders (data.unlabeled_dirs accepts 'a,b,c'), so it follows study_dir.
    del d['unlabeled_dirs']
    dirs = ref + f'/{REAL_DARK[0]}'
    for sub in REAL_DARK[1:]:
      dirs = dirs + ',' + ref + f'/{sub}'
    d.unlabeled_dirs = dirs
  config.seed = SEED
  d.seed = SEED
  _apply_recipe(config, label_fraction)
  common.apply_size(config, SIZE_ENTRIES.get(size))
  if size in ('small', 'cpu'):  # 10 patches per labeled photo and epoch at 10% labels
    d.patches_per_image = patches_per_image(label_fraction, base=10)
  return config
