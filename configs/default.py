"""Base config: every field of `../shared/design/crnet.md`, with its defaults.

The run configs (`configs/crnet.py`, `configs/mcmt.py`) start from this one and change only what
their recipe needs. Field groups:

- `model`: the CRNet architecture and the switches for the rows of the paper's Table 2.
- `loss`: the weights of the progressive enhancement loss (beta), of the mid-consistency (gamma) and
  of the consistency term in the semi-supervised objective (lam).
- `mcmt`: the mean teacher (EMA decay, teacher input noise) and the optional warm-ups.
- `data`: the dataset, patches, batches and the labeled fraction.
- top level: the optimisation schedule, evaluation, checkpointing and logging.
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The CRNet fields (design page: Shapes, MC, memory, LAM, LMRG)."""
  m = ml_collections.ConfigDict()
  m.features = 32  # C
  m.num_groups = 4  # N distinct LMRGs
  m.recurrences = 2  # T unrolls of each LMRG, shared weights
  m.num_blocks = 5  # B masked residual blocks per LMRG
  m.activation = 'relu'  # of the feature conv in each MC ('relu', 'gelu', 'silu', 'leaky_relu')
  m.memory = 'convlstm'  # 'convlstm' | 'convgru' | 'none'
  m.skip = 'input'  # long skip: 'input' (x + residual) | 'previous' (y + residual)
  # Table 2 switches: RN = masked_conv False and layer_attention False; MRN = layer_attention False.
  m.masked_conv = True
  m.layer_attention = True
  # Run each MC's feature and mask convs as one conv with 2C outputs (same numerics, faster).
  m.fused_masked_conv = True
  # Compute dtype: 'float32', or 'bfloat16' (params stay float32).
  m.dtype = 'float32'
  return m


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
  config.mcmt.noise_std = 0.02  # std of the Gaussian noise on the teacher's input (then clipped)
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
  config.data.eval_batch_size = 4
  config.data.num_workers = 0  # grain worker processes (0 = load in the main process)
  config.data.seed = 0

  config.seed = 0
  config.num_epochs = 100
  config.learning_rate = 5e-4
  config.lr_decay_epochs = (20, 40, 60, 90)  # the learning rate is halved at each
  config.lr_decay_factor = 0.5
  config.eval_every_epochs = 10
  config.checkpoint_every_steps = 1000
  config.max_to_keep = 3
  config.log_every_steps = 50
  return config
