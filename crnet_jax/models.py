"""CRNet, the Comprehensive Residual Network, and its recurrent group LMRG.

```
y = x
for i in 1..N:                 # distinct weights per LMRG
    (h, c) = zeros
    for t in 1..T:             # shared weights within the LMRG
        y, (h, c) = LMRG_i(x, y, (h, c))
    stage_i = y
return final = stage_N, intermediates = (stage_1 .. stage_{N-1})
```
The intermediate stages feed the mid-step loss L_ms and the mid-consistency L_mc.
"""

from collections.abc import Sequence
import contextlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crnet_jax import layers

Array = jax.Array

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# What `model.remat` rematerialises in the backward pass (the forward pass is unchanged):
# nothing, each LMRG pass, or each masked residual block.
REMAT = ('none', 'lmrg', 'blocks')
# `model.remat_policy`: what a rematerialised part may still keep from its forward pass
# (jax.checkpoint_policies); 'dots_saveable' keeps the convolution outputs and recomputes only the
# elementwise ops (activations, gates, residual sums) in the backward pass.
REMAT_POLICIES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')


def remat_policy(name: str):
  """The jax.checkpoint policy named `name` (one of `REMAT_POLICIES`)."""
  _check_choice('remat_policy', name, REMAT_POLICIES)
  return getattr(jax.checkpoint_policies, name)


class LMRG(nn.Module):
  """One pass of a layer-attentive masked residual group (docs/model.md, "One LMRG pass").

  ```
  z  = MC_head(concat(x, y))        # 6 -> C
  h, state = memory(z, state)       # C -> C
  f_1..f_B = MRB_1..MRB_B chained from h
  u  = LAM(f_1..f_B)                # B*C -> C   (without layer attention: u = f_B)
  y' = x + MC_tail(u)               # C -> 3, identity activation (skip='previous': y + ...)
  ```
  `mask` (batch, H, W, 1), 1 on real pixels, makes a padded image compute exactly what the
  unpadded one does (`layers.apply_mask`); evaluation and inference pass it, training does not.
  Tiled inference (`crnet_jax.inference`) runs a pass in two parts. Part one, with
  `energy_mask`: head, memory and blocks only, returning `(blocks, state, energy)`: the block
  outputs (B of them; only f_B without layer attention), the new memory state and the layer
  attention's energy over the pixels of `energy_mask` (summed over tiles it is the whole image's
  energy; None without layer attention). Part two, with `blocks` (those outputs, gathered over
  the tiles) and `energy` (the summed energy): layer attention, tail and skip only, returning y'.
  """
  features: int = 32
  num_blocks: int = 5
  activation: str = 'relu'
  memory: str = 'convlstm'
  skip: str = 'input'
  masked_conv: bool = True
  layer_attention: bool = True
  fused_masked_conv: bool = True
  layer_attention_impl: str = 'stack'
  mrb_impl: str = 'xla'  # the masked residual blocks as XLA ops or Pallas kernels
  remat_blocks: bool = False  # rematerialise each masked residual block (model.remat='blocks')
  remat_policy: str = 'nothing_saveable'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, y: Array, state: layers.MemoryState | None, *,
               mask: Array | None = None, energy: Array | None = None,
               energy_mask: Array | None = None, blocks: Sequence[Array] | None = None):
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    masked = lambda v: layers.apply_mask(v, mask)
    conv = layers.conv_type(self.masked_conv, self.fused_masked_conv)
    part_two = blocks is not None
    if not part_two:
      inputs = masked(jnp.concatenate([x, y], axis=-1).astype(self.dtype))
      z = masked(conv(self.features, self.activation, **common, name='head')(inputs))
      h, state = layers.MEMORY_MODULES[self.memory](self.features, **common,
                                                    name='memory')(z, state)
      h, state = masked(h), tuple(masked(s) for s in state)
      block_cls = layers.MaskedResidualBlock
      if self.remat_blocks:
        block_cls = nn.remat(block_cls, policy=remat_policy(self.remat_policy))
      blocks = []
      for b in range(self.num_blocks):
        h = block_cls(self.features, self.activation, masked=self.masked_conv,
                      fused=self.fused_masked_conv, impl=self.mrb_impl, **common,
                      name=f'block_{b}')(h, mask)
        blocks.append(h)
      if energy_mask is not None:  # tiled inference, part one
        if not self.layer_attention:
          return blocks[-1:], state, None
        if self.layer_attention_impl == 'concat':
          return blocks, state, layers.layer_energy_of_list(blocks, energy_mask)
        return blocks, state, layers.layer_energy(
            jnp.stack(blocks, axis=1), energy_mask,
            matmul=self.layer_attention_impl == 'stack')
    if self.layer_attention:
      u = masked(layers.LayerAttention(self.features, impl=self.layer_attention_impl, **common,
                                       name='layer_attention')(blocks, energy))
    else:
      u = blocks[-1]
    residual = conv(x.shape[-1], 'identity', **common, name='tail')(u)
    base = x if self.skip == 'input' else y
    out = base.astype(jnp.float32) + residual.astype(jnp.float32)
    return out if part_two else (out, state)


class CRNet(nn.Module):
  """The Comprehensive Residual Network: N LMRGs, each unrolled T times with shared weights.

  Returns `(final, intermediates)`: the last stage's image and the tuple of the N-1 earlier
  stages, all float32 and of the input's shape, not clipped (clip only for metrics and files).
  `mask` (batch, H, W, 1), 1 on the real pixels of images padded at the bottom and right, makes
  each padded image give exactly its unpadded result on the real pixels (`layers.apply_mask`).
  """
  features: int = 32
  num_groups: int = 4
  recurrences: int = 2
  num_blocks: int = 5
  activation: str = 'relu'
  memory: str = 'convlstm'
  skip: str = 'input'
  masked_conv: bool = True
  layer_attention: bool = True
  fused_masked_conv: bool = True
  layer_attention_impl: str = 'stack'
  mrb_impl: str = 'xla'
  remat: str = 'none'
  remat_policy: str = 'nothing_saveable'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, tuple[Array, ...]]:
    x = x.astype(jnp.float32)
    y = x
    stages = []
    for i in range(self.num_groups):
      group = lmrg_of(self, name=f'lmrg_{i}', remat=self.remat == 'lmrg')
      state = layers.zero_memory_state(x.astype(self.dtype), self.features)
      for _ in range(self.recurrences):
        y, state = group(x, y, state, mask=mask)
      stages.append(y)
    return stages[-1], tuple(stages[:-1])


def init_params(model: CRNet, rng: Array) -> Any:
  """CRNet's `'params'` (their shapes do not depend on the image size: a 16x16 input is used).

  Drawn with the non-partitionable threefry, which gives the same numbers on every backend and
  compiles several times faster on CPU than the partitionable one for CRNet's many initialisers
  (about 3 s instead of 20 s for the default network). Jit it for speed.
  """
  context = getattr(jax, 'threefry_partitionable', None)
  with context(False) if context is not None else contextlib.nullcontext():
    return model.init(rng, jnp.zeros((1, 16, 16, 3), jnp.float32))['params']


def abstract_params(model: CRNet) -> Any:
  """The shapes and dtypes of `init_params(model, key)` (`jax.ShapeDtypeStruct`s), computing none."""
  return jax.eval_shape(model.init, jax.random.key(0),
                        jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))['params']


def param_mismatch(model: CRNet, params: Any
                   ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]] | None:
  """How `params` differ from what `model` takes, or None when every path and shape agrees.

  Returns:
    (paths the model has and `params` lack, paths `params` have and the model lacks,
    [(path, shape in `params`, shape the model takes)]), paths as `jax.tree_util.keystr`.
  """
  want = {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(abstract_params(model))}
  got = {jax.tree_util.keystr(k): tuple(np.shape(v))
         for k, v in jax.tree_util.tree_leaves_with_path(params)}
  if want == got:
    return None
  return (sorted(set(want) - set(got)), sorted(set(got) - set(want)),
          [(k, got[k], want[k]) for k in sorted(set(want) & set(got)) if want[k] != got[k]])


def enhance(model: CRNet, params: Any, x: Array, mask: Array | None = None) -> Array:
  """The network's final image, clipped to [0, 1]: what evaluation, inference and export use.

  With the pixel `mask` of a padded batch, each image's output on its real pixels is exactly its
  unpadded output (padding and the other images in the batch change nothing).
  """
  return jnp.clip(model.apply({'params': params}, x, mask)[0], 0.0, 1.0)


def lmrg_of(model: CRNet, name: str | None = None, remat: bool = False) -> LMRG:
  """The LMRG that `model` builds for each group (apply it with `params['lmrg_<i>']`).

  With `remat` (CRNet with `remat='lmrg'`) the pass is wrapped in `nn.remat` with the model's
  policy: same parameters, same forward pass, activations recomputed in the backward pass.
  """
  cls = nn.remat(LMRG, policy=remat_policy(model.remat_policy)) if remat else LMRG
  return cls(features=model.features, num_blocks=model.num_blocks, activation=model.activation,
             memory=model.memory, skip=model.skip, masked_conv=model.masked_conv,
             layer_attention=model.layer_attention, fused_masked_conv=model.fused_masked_conv,
             layer_attention_impl=model.layer_attention_impl, mrb_impl=model.mrb_impl,
             remat_blocks=model.remat == 'blocks', remat_policy=model.remat_policy,
             dtype=model.dtype, param_dtype=model.param_dtype, name=name)


def receptive_radius(model: CRNet) -> int:
  """How many pixels away one LMRG pass looks: one per 3x3 conv on its longest path.

  Head, memory (ConvLSTM 1, ConvGRU 2 convs in sequence), 2B block convs, fuse, tail: 14 for the
  defaults. The layer attention's energy is global; tiled inference sums it over tiles.
  """
  memory = {'convlstm': 1, 'convgru': 2, 'none': 0}[model.memory]
  return 1 + memory + 2 * model.num_blocks + int(model.layer_attention) + 1


def _check_choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'model.{key}: {value!r} is not one of {sorted(choices)}')


def create_model(model_config: ml_collections.ConfigDict) -> CRNet:
  """Builds CRNet from `config.model`, checking every field first."""
  for key in ('features', 'num_groups', 'recurrences', 'num_blocks'):
    value = model_config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'model.{key}: must be a positive integer, got {value!r}')
  _check_choice('activation', model_config.activation, layers.ACTIVATIONS)
  _check_choice('memory', model_config.memory, layers.MEMORY_MODULES)
  _check_choice('skip', model_config.skip, ('input', 'previous'))
  _check_choice('dtype', model_config.dtype, DTYPES)
  # Performance options (same parameters, same function); older configs may lack them.
  layer_attention_impl = model_config.get('layer_attention_impl', 'stack')
  remat = model_config.get('remat', 'none')
  policy = model_config.get('remat_policy', 'nothing_saveable')
  mrb_impl = model_config.get('mrb_impl', 'xla')
  _check_choice('layer_attention_impl', layer_attention_impl, layers.LAYER_ATTENTION_IMPLS)
  _check_choice('mrb_impl', mrb_impl, layers.MRB_IMPLS)
  _check_choice('remat', remat, REMAT)
  _check_choice('remat_policy', policy, REMAT_POLICIES)
  return CRNet(
      features=model_config.features,
      num_groups=model_config.num_groups,
      recurrences=model_config.recurrences,
      num_blocks=model_config.num_blocks,
      activation=model_config.activation,
      memory=model_config.memory,
      skip=model_config.skip,
      masked_conv=model_config.masked_conv,
      layer_attention=model_config.layer_attention,
      fused_masked_conv=model_config.fused_masked_conv,
      layer_attention_impl=layer_attention_impl,
      mrb_impl=mrb_impl,
      remat=remat,
      remat_policy=policy,
      dtype=DTYPES[model_config.dtype],
  )


def num_params(model_config: ml_collections.ConfigDict, channels: int = 3) -> int:
  """The analytic parameter count of CRNet for `config.model` (1,240,732 for the defaults).

  Counted module by module from the shapes of docs/model.md, independently of the flax code, so a
  test can check that the network has exactly the parameters the design describes.
  """
  c, b = model_config.features, model_config.num_blocks

  def conv(cin: int, cout: int) -> int:
    return 9 * cin * cout + cout

  def mc(cin: int, cout: int) -> int:  # feature conv + mask conv, or one plain conv
    return 2 * conv(cin, cout) if model_config.masked_conv else conv(cin, cout)

  memory = {'convlstm': conv(2 * c, 4 * c),
            'convgru': conv(2 * c, 2 * c) + conv(2 * c, c),
            'none': 0}[model_config.memory]
  attention = 1 + conv(b * c, c) if model_config.layer_attention else 0
  group = mc(2 * channels, c) + memory + b * 2 * mc(c, c) + attention + mc(c, channels)
  return model_config.num_groups * group


def flops_per_pixel(model_config: ml_collections.ConfigDict, channels: int = 3) -> int:
  """The analytic forward FLOPs per pixel of CRNet (4,974,592, i.e. 4.97 MFLOP, for the defaults).

  Two FLOPs (a multiply and an add) per multiply-accumulate of every 3x3 convolution (9 * C_in *
  C_out per pixel) and of the layer attention's two einsums (the energy `F F^T` and `A F`, each
  B * B * C per pixel, counted as the full matrix products of docs/model.md), summed over the
  N * T passes. Biases, activations, gates, residual sums and the softmax are left out (a few
  hundred FLOPs per pixel, under 0.1%), as is usual for FLOP counts of convolutional networks.
  Counted like `num_params`, from docs/model.md and independently of the flax code; a train
  step costs about 3x the forward pass (the backward pass computes two convolutions per forward
  one: the input gradient and the kernel gradient).
  """
  c, b = model_config.features, model_config.num_blocks

  def conv(cin: int, cout: int) -> int:
    return 9 * cin * cout

  def mc(cin: int, cout: int) -> int:
    return 2 * conv(cin, cout) if model_config.masked_conv else conv(cin, cout)

  memory = {'convlstm': conv(2 * c, 4 * c),
            'convgru': conv(2 * c, 2 * c) + conv(2 * c, c),
            'none': 0}[model_config.memory]
  attention = 2 * b * b * c + conv(b * c, c) if model_config.layer_attention else 0
  macs = mc(2 * channels, c) + memory + b * 2 * mc(c, c) + attention + mc(c, channels)
  return 2 * macs * model_config.num_groups * model_config.recurrences
