"""Base config: every field of the model and its training (docs/model.md), with its defaults.

The run configs (`configs/crnet.py`, `configs/mcmt.py`) start from this one and change only what
their recipe needs. Field groups:

- `model`: the CRNet architecture and the switches for the rows of the paper's Table 2
  (defined in `crnet_jax/model_defaults.py`, which the library reads released models with).
- `loss`: the weights of the progressive enhancement loss (beta), of the mid-consistency (gamma) and
  of the consistency term in the semi-supervised objective (lam).
- `mcmt`: the mean teacher (EMA decay, teacher input noise) and the optional warm-ups.
- `data`: the dataset, patches, batches and the labeled fraction.
- top level: the optimisation schedule, evaluation, checkpointing and logging.
"""

import ml_collections

from crnet_jax import model_defaults


def get_model_config() -> ml_collections.ConfigDict:
  """The CRNet fields (docs/model.md), defined in `crnet_jax/model_defaults.py`."""
  return model_defaults.get_model_config()


def get_config() -> ml_collections.ConfigDict:
  """Supervised CRNet on the embedded default dataset, with the paper's recipe."""
  config = ml_collections.ConfigDict()
  config.model = get_model_config()

  config.loss = ml_collections.ConfigDict()
  config.loss.beta = 1.0  # weight of the mid-step loss L_ms in L_PE (0 = CRNet- / MRN)
  config.loss.gamma = 1.0  # weight of the mid-consistency L_mc in L_MCR (0 = Ours-)
  config.loss.lam = 1.0  # weight of L_MCR in L_SSL

  # 'supervised' (CRNet) or 'mcmt' (Multi-Consistency Mean Teacher).
  config.method = 'supervised'

  config.mcmt = ml_collections.ConfigDict()
  config.mcmt.ema_decay = 0.99
  config.mcmt.noise_std = 0.02  # std of the Gaussian noise on the teacher's input
  # Clip the teacher's noisy input to [0, 1] (True). Clipping biases the noise brighter in the
  # darkest pixels (negative draws are cut off at 0); False keeps it zero-mean (docs/model.md).
  config.mcmt.clip_noisy_input = True
  config.mcmt.ema_warmup = False  # decay min(ema_decay, 1 - 1 / (step + 1)); off in the paper
  config.mcmt.rampup_epochs = 0.0  # sigmoid ramp-up of lam over these epochs; 0 = off (paper)

  config.data = ml_collections.ConfigDict()
  # 'default' (synthetic pairs from scikit-image's photos, nothing to download), 'lol',
  # 'paired_folders' or 'synthetic_pairs'.
  config.data.dataset = 'default'
  config.data.patch_size = 128
  config.data.patches_per_image = 30
  config.data.batch_size = 16  # labeled patches per step (global, over all devices)
  config.data.unlabeled_batch_size = 16  # unlabeled patches per step (MCMT only)
  config.data.label_fraction = 1.0  # fraction of the paired train images that keep labels
  # What an epoch's length counts: 'labeled' images (patches_per_image patches of each per epoch)
  # or 'all' train pairs, labeled or not (docs/model.md, "Choices the paper leaves open").
  config.data.epoch_images = 'labeled'
  config.data.eval_batch_size = 4
  config.data.num_workers = 0  # grain worker processes (0 = load in the main process)
  config.data.read_threads = 2  # grain reader threads per process (main or worker)
  # Keep decoded training images in memory (per process) when they fit in this many MiB, so that
  # after the first epoch patches are cut without decoding (0 = never cache).
  config.data.cache_mb = 4096
  config.data.seed = 0  # shuffles, crops, label split, test split, synthetic degradation
  # Where the built TFDS datasets are cached ('' = ~/.cache/crnet_jax/tfds).
  config.data.data_dir = ''
  # dataset='lol': the manual download folder and the variant ('v1' | 'v2_real' | 'v2_synthetic').
  config.data.lol_dir = ''
  config.data.lol_variant = 'v1'
  # dataset='paired_folders': low/high folders matched by file name; test pairs from the test
  # folders, or (when those are '') a seeded `test_fraction` of the pairs.
  config.data.low_dir = ''
  config.data.high_dir = ''
  config.data.test_low_dir = ''
  config.data.test_high_dir = ''
  config.data.test_fraction = 0.1  # paired_folders / synthetic_pairs without test folders
  # dataset='synthetic_pairs': a folder of clean photos, darkened by `config.data.synthetic`.
  config.data.photos_dir = ''
  # Extra folders of unlabeled low-light images joining the MCMT pool, e.g.
  # --config.data.unlabeled_dirs="('/data/dark1', '/data/dark2')".
  config.data.unlabeled_dirs = ()
  config.data.eval_pad_multiple = 8  # eval images are zero-padded to a multiple of this

  # The seeded degradation of synthetic pairs (crnet_jax/datasets/degrade.py documents each
  # step); the defaults match the mean brightness of LOL's low-light images (docs/data.md).
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.exposure_min = 0.025  # linear-luminance gain range
  config.data.synthetic.exposure_max = 0.07
  config.data.synthetic.gamma_min = 1.1  # luminance exponent range (> 1 darkens mid-tones)
  config.data.synthetic.gamma_max = 1.5
  config.data.synthetic.shot_noise_min = 1e-4  # signal-dependent noise variance per unit
  config.data.synthetic.shot_noise_max = 1e-3
  config.data.synthetic.read_noise_min = 5e-4  # signal-independent noise std
  config.data.synthetic.read_noise_max = 2e-3
  config.data.synthetic.color_cast = 0.05  # max relative per-channel gain deviation
  config.data.synthetic.max_side = 600  # photos are downscaled to this longer side (0 = keep)

  config.seed = 0
  config.num_epochs = 100  # epochs convert to steps with input_pipeline.steps_per_epoch
  config.num_train_steps = -1  # > 0 overrides num_epochs (short test runs); -1 = from epochs
  config.learning_rate = 5e-4
  config.lr_decay_epochs = (20, 40, 60, 90)  # the learning rate is halved at each
  config.lr_decay_factor = 0.5
  config.eval_every_epochs = 10.0  # may be fractional; 0 = only at the end
  config.num_eval_images = 3  # test images shown in TensorBoard (low | enhanced | high)
  config.checkpoint_every_steps = 1000
  config.max_to_keep = 3
  config.log_every_steps = 50

  # main.py --mode=enhance|evaluate|export (crnet_jax/inference.py).
  config.inference = ml_collections.ConfigDict()
  config.inference.bucket = 32  # pad H and W to a multiple of this: one compilation per bucket
  # Larger images go through tiles; 0: every image whose whole-image pass fits in half the memory
  # runs whole (on a GPU, 4K in bf16 does: benchmarks/README.md).
  config.inference.max_whole_pixels = 1024 * 1024
  config.inference.tile_size = 512  # tile side in pixels, context included
  config.inference.tile_overlap = 0  # context around each tile's core; 0 = exact (receptive radius)
  # Keep each pass's block outputs between the tiled energy sweep and the pass (about 1.3x the
  # compute of the whole image, B*C more channels of memory per pixel) or recompute them (2.3x).
  config.inference.cache_blocks = True
  # Larger images are refused, naming their pixel count (docs/reliability.md); 0: as many as
  # fit in half the memory of the device (the RAM on CPU) at this network's bytes per pixel.
  config.inference.max_image_pixels = 0
  return config
