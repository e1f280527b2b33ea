"""The model config: every field of CRNet (docs/model.md), with its defaults.

`configs/default.py` builds the run configs' `model` group from it, and a release or an export
(`crnet_jax/release.py`) reads a saved model config onto it, so that the library needs nothing
from `configs/`. `models.CRNetConfig.from_config` turns a model config into the network's options
(and takes the performance options that an older config lacks from here).
"""

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The CRNet fields (docs/model.md: shapes, MC, memory, LAM, LMRG)."""
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
  # The layer attention's energy E = F F^T as the paper's sum over the H*W*C products ('sum'),
  # which grows with the image, or their mean ('mean': the same softmax for a patch and a whole
  # image). A deviation when 'mean': docs/model.md, "The energy grows with the image size".
  m.layer_attention_energy = 'sum'
  # Run each MC's feature and mask convs as one conv with 2C outputs (same numerics, faster).
  m.fused_masked_conv = True
  # Compute dtype: 'float32', or 'bfloat16' (params stay float32).
  m.dtype = 'float32'
  # Performance options: same parameters, same function up to float rounding (benchmarks/README.md).
  # Layer attention as the formula's stack + matmuls + transpose ('stack'), the same with float32
  # reductions in place of the matmuls ('reduce'; no GEMM), or as a weighted sum of the block
  # outputs concatenated on the channel axis ('concat'; no stacked copy, no transpose, no GEMM).
  m.layer_attention_impl = 'stack'
  # The masked residual blocks as XLA convolutions and elementwise ops ('xla') or as fused Pallas
  # kernels, forward and backward ('pallas': crnet_jax/pallas_mrb.py; masked_conv=True only; on a
  # backend other than a GPU the kernels run in Pallas's interpreter, correct but slow).
  m.mrb_impl = 'xla'
  # Rematerialise activations in the backward pass: 'none', each LMRG pass ('lmrg') or each masked
  # residual block ('blocks'), keeping what `remat_policy` allows ('nothing_saveable',
  # 'dots_saveable': keep the conv outputs, 'dots_with_no_batch_dims_saveable').
  m.remat = 'none'
  m.remat_policy = 'nothing_saveable'
  return m
