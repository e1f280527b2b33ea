"""The building blocks of CRNet (flax.linen), as `docs/model.md` reads the paper.

Every module keeps its parameters in float32 (`param_dtype`) and computes in `dtype` (float32, or
bfloat16 for speed). All convolutions are 3x3, stride 1, SAME padding, with bias.

- `MaskedConv`: the gated convolution MC(x) = act(conv_f(x)) * sigmoid(conv_m(x)).
- `PlainConv`: act(conv(x)), the RN ablation of Table 2 (no mask).
- `conv_type`: which of the two an MC position uses (a `ModuleDef` taking features, activation).
- `MaskedResidualBlock`: MRB(x) = x + MC2(MC1(x)).
- `ConvLSTM`, `ConvGRU`, `NoMemory`: the convolutional memory carried across an LMRG's recurrences.
- `LayerAttention`: HAN's layer attention over the B block outputs of one LMRG pass.
"""

from collections.abc import Callable, Sequence
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crnet_jax import pallas_mrb

Array = jax.Array
Dtype = Any
ModuleDef = Any
# The memory state (h, c). ConvGRU and NoMemory carry c along unchanged.
MemoryState = tuple[Array, Array]

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'leaky_relu': nn.leaky_relu,
    'identity': lambda x: x,
}

# PyTorch's default conv init (kaiming_uniform with a=sqrt(5): U(+-1/sqrt(fan_in))), as in the
# PyTorch code CRNet grows from; a uniform draw also compiles much faster on CPU than a truncated
# normal.
default_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def get_activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f'model.activation: unknown activation {name!r}; '
                     f'choose one of {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def conv3x3(x: Array, kernel: Array, bias: Array, dtype: Dtype) -> Array:
  """A 3x3 (or kxk) stride-1 SAME convolution of NHWC `x` with an HWIO kernel, in `dtype`."""
  x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=dtype)
  y = jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias


class Conv(nn.Module):
  """3x3 SAME convolution with bias, float32 params, computed in `dtype`."""
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param('kernel', default_kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    return conv3x3(x, kernel, bias, self.dtype)


class MaskedConv(nn.Module):
  """Masked (gated) convolution, the MC module: `MC(x) = act(conv_f(x)) * sigmoid(conv_m(x))`.

  The feature conv and the mask conv read the same input. Their parameters are kept apart
  (`feature/{kernel,bias}`, `mask/{kernel,bias}`); with `fused=True` they run as one convolution
  with 2x the output channels (kernels concatenated on the output axis), which computes exactly the
  same sums and is faster on accelerators. `fused` changes no parameter, so it can be switched on a
  trained checkpoint.
  """
  features: int
  activation: str = 'relu'  # 'identity' for the tail MC, whose output is an image residual
  fused: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _params(self, name: str, in_features: int) -> tuple[Array, Array]:
    kernel = self.param(f'{name}_kernel', default_kernel_init,
                        (3, 3, in_features, self.features), self.param_dtype)
    bias = self.param(f'{name}_bias', nn.initializers.zeros, (self.features,), self.param_dtype)
    return kernel, bias

  @nn.compact
  def __call__(self, x: Array) -> Array:
    act = get_activation(self.activation)
    feature_kernel, feature_bias = self._params('feature', x.shape[-1])
    mask_kernel, mask_bias = self._params('mask', x.shape[-1])
    if self.fused:
      both = conv3x3(x, jnp.concatenate([feature_kernel, mask_kernel], axis=-1),
                     jnp.concatenate([feature_bias, mask_bias]), self.dtype)
      feature, mask = jnp.split(both, 2, axis=-1)
    else:
      feature = conv3x3(x, feature_kernel, feature_bias, self.dtype)
      mask = conv3x3(x, mask_kernel, mask_bias, self.dtype)
    return act(feature) * nn.sigmoid(mask)


class PlainConv(nn.Module):
  """`act(conv(x))`: the convolution that replaces MC in the RN row of Table 2."""
  features: int
  activation: str = 'relu'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    y = Conv(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    return get_activation(self.activation)(y)


def conv_type(masked: bool, fused: bool = True) -> ModuleDef:
  """The MC module class: `MaskedConv` (run `fused` or not) or, for RN, `PlainConv`.

  Both take `(features, activation, dtype=..., param_dtype=..., name=...)`.
  """
  return functools.partial(MaskedConv, fused=fused) if masked else PlainConv


class MaskedConvParams(MaskedConv):
  """The parameters of a `MaskedConv` (same names, shapes and initialisers), without its conv."""

  @nn.compact
  def __call__(self, in_features: int) -> dict[str, Array]:
    feature_kernel, feature_bias = self._params('feature', in_features)
    mask_kernel, mask_bias = self._params('mask', in_features)
    return {'feature_kernel': feature_kernel, 'feature_bias': feature_bias,
            'mask_kernel': mask_kernel, 'mask_bias': mask_bias}


MRB_IMPLS = ('xla', 'pallas')


class MaskedResidualBlock(nn.Module):
  """Masked residual block: `MRB(x) = x + MC2(MC1(x))`, both MC at C -> C.

  With `masked=False` the MCs are plain convolutions (the residual block of RN). `mask` (see
  `apply_mask`) zeroes the features outside the real pixels between the two convolutions.

  `impl` (config `model.mrb_impl`): `'xla'`, the two MaskedConvs as written, or `'pallas'`, the
  same function and parameters as Pallas kernels, forward and backward
  (`crnet_jax/pallas_mrb.py`; masked blocks only). On a GPU they compile with Pallas's Triton
  backend; on any other backend they run in Pallas's interpreter (correct but slow).
  """
  features: int
  activation: str = 'relu'
  masked: bool = True
  fused: bool = True
  impl: str = 'xla'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    if self.impl not in MRB_IMPLS:
      raise ValueError(f'model.mrb_impl: {self.impl!r} is not one of {list(MRB_IMPLS)}')
    if self.impl == 'pallas':
      if not self.masked:
        raise ValueError("model.mrb_impl='pallas' implements the masked block only "
                         '(model.masked_conv=True)')
      kw = dict(features=self.features, param_dtype=self.param_dtype)
      mc1 = MaskedConvParams(**kw, name='mc1')(x.shape[-1])
      mc2 = MaskedConvParams(**kw, name='mc2')(self.features)
      return pallas_mrb.masked_residual_block(x, mc1, mc2, mask,
                                              activation=get_activation(self.activation),
                                              dtype=self.dtype)
    conv_cls = conv_type(self.masked, self.fused)
    kw = dict(features=self.features, activation=self.activation,
              dtype=self.dtype, param_dtype=self.param_dtype)
    y = apply_mask(conv_cls(**kw, name='mc1')(x), mask)
    y = apply_mask(conv_cls(**kw, name='mc2')(y), mask)
    return x + y


def apply_mask(x: Array, mask: Array | None) -> Array:
  """`x * mask`, or `x` when there is no mask.

  A pixel mask (batch, H, W, 1), 1 on the real pixels of an image padded at the bottom and right,
  applied to every convolution's input makes the padded network compute exactly what it computes
  on the unpadded image (SAME convolutions see zeros beyond the real pixels, and the layer
  attention's energy sums over real pixels only). Training on patches needs no mask.
  """
  return x if mask is None else x * mask.astype(x.dtype)


def zero_memory_state(x: Array, features: int) -> MemoryState:
  """The memory state (h, c) at the start of each LMRG: zeros shaped like the features."""
  zeros = jnp.zeros(x.shape[:-1] + (features,), x.dtype)
  return zeros, zeros


class ConvLSTM(nn.Module):
  """Convolutional LSTM cell (PReNet's memory).

  Gates from one 3x3 conv over concat(x, h) (2C -> 4C), in the order i, f, g, o:
  `c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`, `h' = sigmoid(o) * tanh(c')`.
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, state: MemoryState) -> tuple[Array, MemoryState]:
    h, c = state
    gates = Conv(4 * self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                 name='gates')(jnp.concatenate([x, h.astype(x.dtype)], axis=-1))
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h = nn.sigmoid(o) * jnp.tanh(c)
    return h, (h, c)


class ConvGRU(nn.Module):
  """Convolutional GRU cell (an ablation of the memory module).

  `z, r = sigmoid(conv([x, h]))` (2C -> 2C), `n = tanh(conv([x, r * h]))` (2C -> C),
  `h' = (1 - z) * n + z * h`. The cell state c is carried along unchanged.
  """
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, state: MemoryState) -> tuple[Array, MemoryState]:
    h, c = state
    h = h.astype(x.dtype)
    conv = lambda n, name: Conv(n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    z, r = jnp.split(nn.sigmoid(conv(2 * self.features, 'gates')(
        jnp.concatenate([x, h], axis=-1))), 2, axis=-1)
    n = jnp.tanh(conv(self.features, 'candidate')(jnp.concatenate([x, r * h], axis=-1)))
    h = (1 - z) * n + z * h
    return h, (h, c)


class NoMemory(nn.Module):
  """No memory module (ablation): the features pass through, the state is unchanged."""
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __call__(self, x: Array, state: MemoryState) -> tuple[Array, MemoryState]:
    return x, state


MEMORY_MODULES: dict[str, type[nn.Module]] = {
    'convlstm': ConvLSTM, 'convgru': ConvGRU, 'none': NoMemory}


LAYER_ATTENTION_IMPLS = ('stack', 'reduce', 'concat')
# How the energy scales with the image: the paper's sum over pixels, or the mean (config
# `model.layer_attention_energy`, docs/model.md "The energy grows with the image size").
LAYER_ATTENTION_ENERGIES = ('sum', 'mean')


def scale_energy(energy: Array, mode: str, pixels: Array | int, channels: int) -> Array:
  """The energy the softmax reads: `E` as summed ('sum', the paper) or `E / (pixels * C)` ('mean').

  'sum' grows with the number of pixels, so a whole test image sharpens the softmax far beyond
  what training patches did; 'mean' (the mean product over the H*W*C terms) is the same for a
  patch and a whole image with the same statistics. `pixels`: the real pixels of each image, a
  scalar or (batch,).
  """
  if mode == 'sum':
    return energy
  if mode != 'mean':
    raise ValueError(f'model.layer_attention_energy: {mode!r} is not one of '
                     f'{list(LAYER_ATTENTION_ENERGIES)}')
  count = jnp.asarray(pixels, jnp.float32).reshape(-1, 1, 1) * channels
  return energy.astype(jnp.float32) / count


def layer_energy(layers: Array, mask: Array | None = None, matmul: bool = True) -> Array:
  """The layer attention's energy `E = F F^T` (batch, B, B) in float32, over pixels where `mask`.

  `layers`: (batch, B, H, W, C); `mask`: (batch, H, W) or None. Summing the energies of disjoint
  parts of an image gives the energy of the whole image, which is what tiled inference uses.
  `matmul=True`: one batched matrix product at `Precision.HIGHEST` (on GPUs a float32 dot
  otherwise runs in TF32, 10 mantissa bits, and E sums H*W*C products). `matmul=False`: the same
  sums as B float32 reductions of `F * F_i` over H*W*C (row i of E), which a compiler fuses into
  reduction passes instead of a (B x K) x (K x B) GEMM, skinny and slow at HIGHEST.
  """
  flat = layers.astype(jnp.float32)
  if mask is not None:
    flat = flat * mask[:, None, :, :, None].astype(jnp.float32)
  flat = flat.reshape(layers.shape[0], layers.shape[1], -1)
  if not matmul:
    # Row by row on purpose: the one-line `sum(F[:, :, None] * F[:, None], -1)` is miscompiled by
    # XLA's CPU backend (jaxlib 0.10.2, its YNN fusion) when the batch is 1: wrong sums, NaN
    # gradients (tests/test_bench.py::test_reduce_layer_attention_at_batch_one).
    return jnp.stack([jnp.sum(flat * flat[:, i:i + 1], axis=-1) for i in range(flat.shape[1])],
                     axis=1)
  return jnp.einsum('bik,bjk->bij', flat, flat, precision=jax.lax.Precision.HIGHEST)


def layer_energy_of_list(outputs: Sequence[Array], mask: Array | None = None) -> Array:
  """`layer_energy` of the B block outputs, each (batch, H, W, C), without stacking them.

  Each of the B (B + 1) / 2 distinct entries of the symmetric `E` is a float32 sum of products of
  two block outputs; the reductions all read the same B arrays (an accelerator compiler can fuse
  them into one pass), and no (batch, B, H, W, C) copy is made. Equal to `layer_energy` up to the
  order of the float32 summation.
  """
  if mask is not None:
    m = mask.astype(jnp.float32)[..., None]
    outputs = [f.astype(jnp.float32) * m for f in outputs]
  return _pair_sums(outputs, outputs, symmetric=True)


class LayerAttention(nn.Module):
  """Layer attention module (LAM) of HAN over the B block outputs of one LMRG pass.

  With the layers flattened, `F: (batch, B, H*W*C)`:
  `E = F F^T` (batch, B, B); `A = softmax(rowmax(E) - E)` over the last axis (less correlated
  layers weigh more); `out = gamma * (A F) + F` with a learnable scalar `gamma` initialised to 0;
  then `out` is reshaped to (batch, H, W, B*C) and fused by a 3x3 conv B*C -> C.
  E and the softmax are computed in float32 whatever the compute dtype (E sums H*W*C terms).
  `energy_mode` ('sum' | 'mean', config `model.layer_attention_energy`): E as the sum above (the
  paper) or divided by the H*W*C terms it sums (`scale_energy`); `pixels` (batch,) counts each
  image's real pixels when it is padded (default H*W). `energy`, when given, replaces the scaled E
  (tiled inference passes the scaled energy of the whole image).

  Two implementations of the same function and the same parameters (`impl`, config
  `model.layer_attention_impl`):

  - `'stack'`: the formula as written: stack the B outputs to (batch, B, H, W, C), two batched
    matmuls, then move the layer axis next to the channels (a transposing copy) for the conv.
  - `'reduce'`: as `'stack'`, with the energy and `A F` computed as float32 reductions of
    broadcast products (`layer_energy(matmul=False)`; `A F` sums B weighted layers per pixel)
    instead of matrix products: no GEMM in the forward or the backward pass.
  - `'concat'`: `out_i = F_i + sum_j (gamma A)_ij F_j` as a weighted sum of the block outputs
    (accumulated in float32), concatenated on the channel axis straight into the
    (batch, H, W, B*C) input of the fuse conv, with the energy from `layer_energy_of_list`. No
    stacked copy and no transpose: one elementwise pass reads the B outputs and writes the conv's
    input. Its backward pass is written out (`_attend_concat_bwd`: one pass of B * B reductions
    and one elementwise pass), not left to autodiff of the unrolled sums. Equal to `'stack'` up to
    float rounding, in outputs and gradients.
  """
  features: int
  impl: str = 'stack'
  energy_mode: str = 'sum'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, layers: Array | Sequence[Array], energy: Array | None = None,
               pixels: Array | None = None) -> Array:
    """`layers`: (batch, B, H, W, C), or the B arrays (batch, H, W, C) -> (batch, H, W, features).
    """
    if self.impl not in LAYER_ATTENTION_IMPLS:
      raise ValueError(f'model.layer_attention_impl: {self.impl!r} is not one of '
                       f'{list(LAYER_ATTENTION_IMPLS)}')
    gamma = self.param('gamma', nn.initializers.zeros, (), self.param_dtype)
    if energy is None and pixels is None:
      pixels = math.prod((layers.shape[2:4] if hasattr(layers, 'ndim') else layers[0].shape[1:3]))
    if self.impl in ('stack', 'reduce'):
      out = self._stacked(layers, energy, pixels, gamma)
    else:
      out = self._concatenated(layers, energy, pixels, gamma)
    return Conv(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name='fuse')(out)

  def _stacked(self, layers: Array | Sequence[Array], energy: Array | None,
               pixels: Array | int | None, gamma: Array) -> Array:
    if not hasattr(layers, 'ndim'):
      layers = jnp.stack(layers, axis=1)
    batch, num_layers, height, width, channels = layers.shape
    matmul = self.impl == 'stack'
    if energy is None:
      energy = scale_energy(layer_energy(layers, matmul=matmul), self.energy_mode, pixels,
                            channels)
    attention = _attention(energy)
    flat = layers.reshape(batch, num_layers, -1).astype(self.dtype)
    if matmul:
      attended = jnp.einsum('bij,bjk->bik', attention.astype(self.dtype), flat)
    else:  # sum_j A_ij F_j as B weighted terms accumulated in float32 (see `layer_energy`)
      wide = flat.astype(jnp.float32)
      attended = sum(attention[:, :, j, None] * wide[:, None, j] for j in range(num_layers))
      attended = attended.astype(self.dtype)
    out = gamma.astype(self.dtype) * attended + flat
    out = out.reshape(batch, num_layers, height, width, channels)
    return jnp.moveaxis(out, 1, 3).reshape(batch, height, width, num_layers * channels)

  def _concatenated(self, layers: Array | Sequence[Array], energy: Array | None,
                    pixels: Array | int | None, gamma: Array) -> Array:
    if hasattr(layers, 'ndim'):
      layers = [layers[:, b] for b in range(layers.shape[1])]
    layers = tuple(layers)
    if energy is None:
      # The energy's scale, one per image (1 for 'sum'), enters the hand-written backward pass.
      ones = jnp.ones((layers[0].shape[0], 1, 1), jnp.float32)
      scale = scale_energy(ones, self.energy_mode, pixels, layers[0].shape[-1])
      return _attend_concat(gamma.astype(jnp.float32), self.dtype, layers, scale)
    weights = gamma.astype(jnp.float32) * _attention(energy)
    return _weighted_concat(weights, layers, self.dtype)


def _attention(energy: Array) -> Array:
  """`A = softmax(rowmax(E) - E)` over the last axis (float32)."""
  energy = energy.astype(jnp.float32)
  return jax.nn.softmax(jnp.max(energy, axis=-1, keepdims=True) - energy, axis=-1)


def _weighted_concat(weights: Array, layers: Sequence[Array], dtype: Dtype) -> Array:
  """`concat_i(F_i + sum_j weights_ij F_j)` on the channel axis, accumulated in float32."""
  w = weights.astype(jnp.float32)[:, :, :, None, None, None]
  wide = [f.astype(jnp.float32) for f in layers]
  out = []
  for i, f in enumerate(wide):
    acc = f
    for j, g in enumerate(wide):
      acc = acc + w[:, i, j] * g
    out.append(acc.astype(dtype))
  return jnp.concatenate(out, axis=-1)


def _pair_sums(a: Sequence[Array], b: Sequence[Array], symmetric: bool) -> Array:
  """(batch, len(a), len(b)) float32 inner products `<a_i, b_j>` over all but the batch axis."""
  batch = a[0].shape[0]
  fa = [v.astype(jnp.float32).reshape(batch, -1) for v in a]
  fb = fa if symmetric else [v.astype(jnp.float32).reshape(batch, -1) for v in b]
  entries = {}
  for i in range(len(fa)):
    for j in range(len(fb)):
      if symmetric and j < i:
        entries[i, j] = entries[j, i]
      else:
        entries[i, j] = jnp.sum(fa[i] * fb[j], axis=-1)
  return jnp.stack([jnp.stack([entries[i, j] for j in range(len(fb))], axis=-1)
                    for i in range(len(fa))], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _attend_concat(gamma: Array, dtype: Dtype, layers: Sequence[Array], scale: Array) -> Array:
  """The 'concat' layer attention with its own backward pass (see `_attend_concat_bwd`)."""
  return _attend_concat_fwd(gamma, dtype, layers, scale)[0]


def _attend_concat_fwd(gamma, dtype, layers, scale):
  attention = _attention(scale * _pair_sums(layers, layers, symmetric=True))
  return (_weighted_concat(gamma * attention, layers, dtype),
          (gamma, attention, layers, scale))


def _attend_concat_bwd(dtype, residuals, d_out):
  """Gradients of `out_i = F_i + gamma sum_j A_ij F_j`, `A = softmax(rowmax(E) - E)`, `E = s F F^T`.

  With `G_ij = <dout_i, F_j>`: `dgamma = sum(G * A)`, `dA = gamma G`; the softmax's backward
  `dS = A * (dA - rowsum(dA * A))` and `dE = -dS` (the rowmax shift has no gradient: softmax is
  shift-invariant); `dF_j = dout_j + gamma sum_i A_ij dout_i + s sum_k (dE_jk + dE_kj) F_k`. One
  pass of reductions and one elementwise pass over the B layers, whatever XLA would fuse. The
  scale `s` (batch, 1, 1) depends on no parameter: its cotangent is zero.
  """
  del dtype
  gamma, attention, layers, scale = residuals
  n = len(layers)
  d_layers = [d.astype(jnp.float32) for d in jnp.split(d_out, n, axis=-1)]
  g = _pair_sums(d_layers, layers, symmetric=False)
  d_gamma = jnp.sum(g * attention)
  d_att = gamma * g
  d_scores = attention * (d_att - jnp.sum(d_att * attention, axis=-1, keepdims=True))
  d_energy = -d_scores
  d_sym = scale * (d_energy + jnp.swapaxes(d_energy, 1, 2))
  w = (gamma * attention)[:, :, :, None, None, None]
  s = d_sym[:, :, :, None, None, None]
  wide = [f.astype(jnp.float32) for f in layers]
  grads = []
  for j in range(n):
    acc = d_layers[j]
    for i in range(n):
      acc = acc + w[:, i, j] * d_layers[i] + s[:, j, i] * wide[i]
    grads.append(acc.astype(layers[j].dtype))
  return d_gamma.astype(gamma.dtype), tuple(grads), jnp.zeros_like(scale)


_attend_concat.defvjp(_attend_concat_fwd, _attend_concat_bwd)
