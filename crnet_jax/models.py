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
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crnet_jax import layers
from crnet_jax import model_defaults

Array = jax.Array

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# What `model.remat` rematerialises in the backward pass (the forward pass is unchanged):
# nothing, each LMRG pass, or each masked residual block.
REMAT = ('none', 'lmrg', 'blocks')
# `model.remat_policy`: what a rematerialised part may still keep from its forward pass
# (jax.checkpoint_policies); 'dots_saveable' keeps the convolution outputs and recomputes only the
# elementwise ops (activations, gates, residual sums) in the backward pass.
REMAT_POLICIES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable')
# The image channels that CRNet reads and writes (RGB).
CHANNELS = 3


def remat_policy(name: str):
  """The jax.checkpoint policy named `name` (one of `REMAT_POLICIES`)."""
  _check_choice('remat_policy', name, REMAT_POLICIES)
  return getattr(jax.checkpoint_policies, name)


@dataclasses.dataclass(frozen=True)
class CRNetConfig:
  """Every option of CRNet: the fields of `config.model` (`model_defaults.py` documents them).

  Build it with `from_config(config.model)`, which checks every field; `dtype` is the compute
  dtype (`jnp.float32` or `jnp.bfloat16`; parameters are float32 whatever it is).
  """
  features: int
  num_groups: int
  recurrences: int
  num_blocks: int
  activation: str
  memory: str
  skip: str
  masked_conv: bool
  layer_attention: bool
  fused_masked_conv: bool
  dtype: Any
  layer_attention_impl: str
  layer_attention_energy: str
  mrb_impl: str
  remat: str
  remat_policy: str

  @classmethod
  def from_config(cls, model_config: ml_collections.ConfigDict) -> 'CRNetConfig':
    """The options of `config.model`, checked (ValueError naming the bad field)."""
    for key in ('features', 'num_groups', 'recurrences', 'num_blocks'):
      value = model_config[key]
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'model.{key}: must be a positive integer, got {value!r}')
    _check_choice('activation', model_config.activation, layers.ACTIVATIONS)
    _check_choice('memory', model_config.memory, layers.MEMORY_MODULES)
    _check_choice('skip', model_config.skip, ('input', 'previous'))
    _check_choice('dtype', model_config.dtype, DTYPES)
    # Fields added after the first release (older configs lack them: their defaults apply).
    defaults = model_defaults.get_model_config()
    added = {key: model_config.get(key, defaults[key])
             for key in ('layer_attention_impl', 'layer_attention_energy', 'mrb_impl', 'remat',
                         'remat_policy')}
    _check_choice('layer_attention_impl', added['layer_attention_impl'],
                  layers.LAYER_ATTENTION_IMPLS)
    _check_choice('layer_attention_energy', added['layer_attention_energy'],
                  layers.LAYER_ATTENTION_ENERGIES)
    _check_choice('mrb_impl', added['mrb_impl'], layers.MRB_IMPLS)
    _check_choice('remat', added['remat'], REMAT)
    _check_choice('remat_policy', added['remat_policy'], REMAT_POLICIES)
    required = [f.name for f in dataclasses.fields(cls) if f.name not in added]
    return cls(**{key: model_config[key] for key in required if key != 'dtype'},
               dtype=DTYPES[model_config.dtype], **added)

  def to_dict(self) -> dict[str, Any]:
    """The fields as `config.model` spells them (`dtype` by name)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    return {**d, 'dtype': jnp.dtype(self.dtype).name}


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
  `__call__` is the whole pass. Tiled inference (`crnet_jax.inference`) runs it in two parts,
  each with `apply(..., method=...)`: `blocks_and_energy` (head, memory, blocks; summed over the
  tiles, its energy is the whole image's) and `attend_and_tail` (layer attention, tail, skip).
  """
  config: CRNetConfig

  def setup(self):
    c = self.config
    conv = layers.conv_type(c.masked_conv, c.fused_masked_conv)
    self.head = conv(c.features, c.activation, dtype=c.dtype)
    self.memory = layers.MEMORY_MODULES[c.memory](c.features, dtype=c.dtype)
    block = layers.MaskedResidualBlock
    if c.remat == 'blocks':  # rematerialise each masked residual block
      block = nn.remat(block, policy=remat_policy(c.remat_policy))
    self.blocks = [block(c.features, c.activation, masked=c.masked_conv,
                         fused=c.fused_masked_conv, impl=c.mrb_impl, dtype=c.dtype,
                         name=f'block_{b}') for b in range(c.num_blocks)]
    if c.layer_attention:
      self.layer_attention = layers.LayerAttention(
          c.features, impl=c.layer_attention_impl, energy_mode=c.layer_attention_energy,
          dtype=c.dtype)
    self.tail = conv(CHANNELS, 'identity', dtype=c.dtype)

  def __call__(self, x: Array, y: Array, state: layers.MemoryState, mask: Array | None = None,
               energy: Array | None = None) -> tuple[Array, layers.MemoryState]:
    """`(y', new state)`; `energy`, when given, replaces the layer attention's own."""
    blocks, state = self._blocks(x, y, state, mask)
    return self.attend_and_tail(x, y, blocks, mask, energy), state

  def blocks_and_energy(self, x: Array, y: Array, state: layers.MemoryState, mask: Array | None,
                        energy_mask: Array) -> tuple[list[Array], layers.MemoryState, Array | None]:
    """Part one: `(blocks, new state, energy)`.

    The block outputs (B of them; only f_B without layer attention), the new memory state and
    the layer attention's energy over the pixels of `energy_mask` (batch, H, W) (None without
    layer attention), as a sum: summed over tiles, `layers.scale_energy` then scales it.
    """
    c = self.config
    blocks, state = self._blocks(x, y, state, mask)
    if not c.layer_attention:
      return blocks[-1:], state, None
    if c.layer_attention_impl == 'concat':
      return blocks, state, layers.layer_energy_of_list(blocks, energy_mask)
    return blocks, state, layers.layer_energy(jnp.stack(blocks, axis=1), energy_mask,
                                              matmul=c.layer_attention_impl == 'stack')

  def attend_and_tail(self, x: Array, y: Array, blocks: Sequence[Array],
                      mask: Array | None = None, energy: Array | None = None) -> Array:
    """Part two: y' from the block outputs of `blocks_and_energy` (and the summed `energy`)."""
    if x.shape[-1] != CHANNELS:
      raise ValueError(f'CRNet reads {CHANNELS}-channel images, got shape {x.shape}')
    if self.config.layer_attention:
      pixels = None if mask is None else jnp.sum(mask.astype(jnp.float32), axis=(1, 2, 3))
      u = layers.apply_mask(self.layer_attention(blocks, energy, pixels), mask)
    else:
      u = blocks[-1]
    residual = self.tail(u)
    base = x if self.config.skip == 'input' else y
    return base.astype(jnp.float32) + residual.astype(jnp.float32)

  def _blocks(self, x: Array, y: Array, state: layers.MemoryState, mask: Array | None
              ) -> tuple[list[Array], layers.MemoryState]:
    """Head, memory and blocks: the B block outputs and the new memory state."""
    masked = lambda v: layers.apply_mask(v, mask)
    z = masked(self.head(masked(jnp.concatenate([x, y], axis=-1).astype(self.config.dtype))))
    h, state = self.memory(z, state)
    h, state = masked(h), tuple(masked(s) for s in state)
    blocks = []
    for block in self.blocks:
      h = block(h, mask)
      blocks.append(h)
    return blocks, state


class CRNet(nn.Module):
  """The Comprehensive Residual Network: N LMRGs, each unrolled T times with shared weights.

  Returns `(final, intermediates)`: the last stage's image and the tuple of the N-1 earlier
  stages, all float32 and of the input's shape, not clipped (clip only for metrics and files).
  `mask` (batch, H, W, 1), 1 on the real pixels of images padded at the bottom and right, makes
  each padded image give exactly its unpadded result on the real pixels (`layers.apply_mask`).
  """
  config: CRNetConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> tuple[Array, tuple[Array, ...]]:
    c = self.config
    group_cls = LMRG
    if c.remat == 'lmrg':  # rematerialise each LMRG pass: same parameters, same forward pass
      group_cls = nn.remat(LMRG, policy=remat_policy(c.remat_policy))
    x = x.astype(jnp.float32)
    y = x
    stages = []
    for i in range(c.num_groups):
      group = group_cls(c, name=f'lmrg_{i}')
      state = layers.zero_memory_state(x.astype(c.dtype), c.features)
      for _ in range(c.recurrences):
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


def receptive_radius(model: CRNet) -> int:
  """How many pixels away one LMRG pass looks: one per 3x3 conv on its longest path.

  Head, memory (ConvLSTM 1, ConvGRU 2 convs in sequence), 2B block convs, fuse, tail: 14 for the
  defaults. The layer attention's energy is global; tiled inference sums it over tiles.
  """
  c = model.config
  memory = {'convlstm': 1, 'convgru': 2, 'none': 0}[c.memory]
  return 1 + memory + 2 * c.num_blocks + int(c.layer_attention) + 1


def _check_choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'model.{key}: {value!r} is not one of {sorted(choices)}')


def create_model(model_config: ml_collections.ConfigDict) -> CRNet:
  """Builds CRNet from `config.model`, checking every field first."""
  return CRNet(CRNetConfig.from_config(model_config))


def num_params(model_config: ml_collections.ConfigDict, channels: int = CHANNELS) -> int:
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


def flops_per_pixel(model_config: ml_collections.ConfigDict,
                    channels: int = CHANNELS) -> int:
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
