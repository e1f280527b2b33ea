"""The masked residual block as Pallas kernels, forward and backward (`model.mrb_impl='pallas'`).

It computes the function of `layers.MaskedResidualBlock` (masked, any activation; equal up to
float rounding), with the same parameters (`mc1/{feature,mask}_{kernel,bias}`, `mc2/...`), so a checkpoint trained on
either path runs on the other:

```
z   = m * (act(conv(x, Kf1) + bf1) * sigmoid(conv(x, Kg1) + bg1))   # MC1, then the pixel mask
out = x + m * (act(conv(z, Kf2) + bf2) * sigmoid(conv(z, Kg2) + bg2))   # MC2, mask, residual
```
(3x3 SAME convolutions, NHWC, HWIO kernels; `m` = 1 without a pixel mask.) The convolutions take
their inputs and weights in the compute dtype (float32 or bfloat16) and accumulate in float32;
biases, gates, mask and residual sum are float32; `z` is stored in the compute dtype and the
output in the wider of the input's dtype and the compute dtype, as the plain path does.

Kernels (each a `pallas_call` over tiles of `tile = (TH, TW)` pixels of one image, all channels):

- forward, 2 kernels: `_mc1` reads x, writes z; `_mc2` reads z and x, writes out. Each computes
  its 3x3 convolution as 9 shifted matmuls (TH*TW, C) @ (C, C) for the feature half and 9 for the
  mask half, accumulated in float32, with the bias, activation, sigmoid gate, pixel mask (and for
  `_mc2` the residual) as the epilogue: the 2C pre-activations never leave the kernel.
- backward (`jax.custom_vjp`; the residuals are x, z and the mask, nothing else is saved), 3
  kernels: `_bwd_mc2` recomputes MC2's pre-activations from z and writes `dA2 = d(pre-activation
  of MC2)` (feature and mask halves); `_bwd_mc1` computes `dz = conv^T(dA2, K2)`, recomputes
  MC1's pre-activations from x and writes `dA1`; `_bwd_input` writes `dx = dout +
  conv^T(dA1, K1)`. dA is one (batch, H, W, 2C) array, the feature half then the mask half, so
  each transposed convolution is 9 matmuls (TH*TW, 2C) @ (2C, C). The weight and bias gradients
  are XLA's: per MC one weight-gradient convolution of its input (x or z) with dA (cuDNN's on a
  GPU) and a sum of dA.
  (Accumulating them inside the kernels instead, 9 taps x 2 halves of float32 C x C sums per
  program, needs 1.6-3.3x the 227 KiB of shared memory a Hopper block may have at 8 x 16 tiles;
  compiled for an H100 with `benchmarks/hlo_counts.py --target=h100`.)

Tiling and halo: a program's 3x3 taps read the input at its tile shifted by -1..1 pixels, i.e.
the tile with a 1-pixel halo, as 9 gathers of (TH*TW, C) from the whole array with the pixel
coordinates clamped into the image and the pixels outside it replaced by zeros (the SAME
padding): no padded copy, any H and W (tiles at the right and bottom edges are partial; their
stores are masked). The halo is re-read from cache, not recomputed: the block is split into one
kernel per MC because the second convolution needs MC1's output shifted by a pixel, which in
Pallas's GPU (Triton) lowering cannot be done on values in registers (no value slicing), only by
loads from memory.

Expected GPU benefit, per block and per pixel, in C-channel activation reads/writes ("C-units",
2 bytes each in bf16; `benchmarks/README.md` has the whole network's roofline):

| | kernels | C-units | what |
| --- | --- | --- | --- |
| XLA forward | 4 | ~13 | conv -> 2C, gate fusion 2C -> C, conv -> 2C, gate + mask + residual fusion |
| Pallas forward | 2 | 5 | x -> z (2), z + x -> out (3) |
| XLA backward | ~8 | ~24 | per MC: gate-gradient fusion, input-gradient conv, weight-gradient conv |
| Pallas backward | 3 + 2 weight-gradient convs + 2 sums | 23 | z + dout -> dA2 (4), dA2 + x -> dA1 (5), dA1 + dout -> dx (4); x + dA1, z + dA2 -> dK (6); dA1, dA2 -> db (4) |

so about 2.5x fewer bytes for the forward pass and about as many for the backward pass, for
1.5x the block's FLOPs in the backward pass (6 convolutions instead of 4: both MCs'
pre-activations are recomputed instead of saved). The blocks are 60% of CRNet's FLOPs and about
half of its bytes, hence the prediction in `benchmarks/README.md` (a prediction: nothing here has
run on a GPU yet).
The kernels are not tuned: the tile size (`tile`) and the Triton warps are still to be measured.

Backends: on a GPU the kernels are lowered with Pallas's Triton backend (`interpret=False`),
which needs C and TH*TW to be powers of two and at least 16 (the default 32 channels and 8x16
tiles are); the tests check that every kernel lowers for Triton, and `benchmarks/hlo_counts.py
--target=h100` compiles them for an H100 without one (they fit its shared memory and registers),
but nothing has run on a GPU yet. On any other backend (CPU, TPU) they run in Pallas's
interpreter (`interpret=True`), which is how the tests check their numbers: correct, but slow
(for tests and small runs only).
XLA does not partition the kernels' custom calls over devices: for data-parallel training on
several GPUs they would need `shard_map` (not done here), or use the `xla` path.
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

DEFAULT_TILE = (8, 16)  # rows x columns of pixels per program: 128 rows of each matmul
# The 3x3 taps (dy, dx), in the order of the kernel's first two axes.
TAPS = tuple((dy, dx) for dy in range(3) for dx in range(3))
PARAM_NAMES = ('feature_kernel', 'mask_kernel', 'feature_bias', 'mask_bias')


@dataclasses.dataclass(frozen=True)
class _Static:
  """What the kernels are specialised on (hashable: a `custom_vjp` nondiff argument)."""
  activation: Callable[[Array], Array]
  dtype: Any  # the compute dtype (a numpy dtype)
  tile: tuple[int, int]
  interpret: bool


@dataclasses.dataclass(frozen=True)
class _Geometry:
  """Array and tile sizes of one call: batch n, image h x w, channels c, tiles th x tw."""
  n: int
  h: int
  w: int
  c: int
  th: int
  tw: int

  @property
  def rows(self) -> int:  # tiles per column of the image
    return pl.cdiv(self.h, self.th)

  @property
  def cols(self) -> int:  # tiles per row of the image
    return pl.cdiv(self.w, self.tw)


def default_interpret() -> bool:
  """Whether the kernels run in Pallas's interpreter when not told: unless the backend is a GPU.

  A tool that compiles for a GPU on a host without one (`benchmarks/hlo_counts.py --target`)
  replaces this function, so that the kernels are lowered for the GPU, not interpreted.
  """
  return jax.default_backend() != 'gpu'


def masked_residual_block(x: Array, mc1: dict[str, Array], mc2: dict[str, Array],
                          mask: Array | None = None, *,
                          activation: Callable[[Array], Array] = jax.nn.relu,
                          dtype: Dtype = jnp.float32, tile: Sequence[int] | None = None,
                          interpret: bool | None = None) -> Array:
  """`MRB(x) = x + m * MC2(m * MC1(x))`, `MC(v) = act(conv_f(v)) * sigmoid(conv_m(v))`.

  Args:
    x: (batch, H, W, C).
    mc1, mc2: each MC's parameters as the plain path keeps them (`feature_kernel`,
      `mask_kernel`: (3, 3, C, C); `feature_bias`, `mask_bias`: (C,)); cast to `dtype`.
    mask: (batch, H, W, 1) pixel mask (`layers.apply_mask`) or None.
    activation: of the feature convolutions.
    dtype: the compute dtype.
    tile: (rows, columns) of pixels per program, default `DEFAULT_TILE`.
    interpret: run the kernels in Pallas's interpreter; default: `default_interpret()`.
  Returns:
    (batch, H, W, C) in the wider of `x.dtype` and `dtype`. Differentiable (`jax.custom_vjp`,
    the backward pass is Pallas kernels too) wrt `x` and the parameters; not wrt `mask`.
  """
  if interpret is None:
    interpret = default_interpret()
  tile = tuple(int(t) for t in (tile or DEFAULT_TILE))
  channels = x.shape[-1]
  for name, p in (('mc1', mc1), ('mc2', mc2)):
    for key in PARAM_NAMES:
      want = (3, 3, channels, channels) if key.endswith('kernel') else (channels,)
      if tuple(p[key].shape) != want:
        raise ValueError(f'model.mrb_impl=pallas: {name}/{key} has shape {p[key].shape}, '
                         f'expected {want} (a block of {channels} -> {channels} channels)')
  if not interpret:
    pow2 = lambda v: v >= 16 and v & (v - 1) == 0
    if not (pow2(channels) and pow2(tile[0] * tile[1])):
      raise ValueError(f'model.mrb_impl=pallas: the GPU kernels need the channels ({channels}) '
                       f'and the pixels per tile ({tile[0]} x {tile[1]}) to be powers of two '
                       '>= 16')
  static = _Static(activation, jnp.dtype(dtype), tile, bool(interpret))
  params = tuple(jnp.asarray(p[k]).astype(dtype) for p in (mc1, mc2) for k in PARAM_NAMES)
  if mask is not None:
    mask = jax.lax.stop_gradient(mask.astype(jnp.float32))
  return _mrb(static, x, mask, params)


# ------------------------------------------------------------------------------------------------
# The pieces the kernels are made of (traced inside the kernels).


def _tile_pixels(geo: _Geometry, i, j) -> tuple[Array, Array, Array]:
  """Rows, columns (each (TH*TW, 1) int32) of tile (i, j)'s pixels and whether each is real."""
  p = jax.lax.broadcasted_iota(jnp.int32, (geo.th * geo.tw, 1), 0)
  rows = i * geo.th + p // geo.tw
  cols = j * geo.tw + p % geo.tw
  return rows, cols, (rows < geo.h) & (cols < geo.w)


def _gather(ref, n, rows: Array, cols: Array, geo: _Geometry) -> Array:
  """`ref[n, rows, cols, :]` (TH*TW, channels), zero where the pixel is outside the image."""
  inside = (rows >= 0) & (rows < geo.h) & (cols >= 0) & (cols < geo.w)
  channels = jax.lax.broadcasted_iota(jnp.int32, (1, ref.shape[-1]), 1)
  values = ref[n, jnp.clip(rows, 0, geo.h - 1), jnp.clip(cols, 0, geo.w - 1), channels]
  return jnp.where(inside, values, jnp.zeros_like(values))


def _conv_taps(ref, n, rows: Array, cols: Array, geo: _Geometry, dtype) -> list[Array]:
  """The 9 shifted inputs `v(p + (dy - 1, dx - 1))` of a 3x3 SAME conv at the tile's pixels."""
  return [_gather(ref, n, rows + dy - 1, cols + dx - 1, geo).astype(dtype) for dy, dx in TAPS]


def _conv(taps: Sequence[Array], kernel_ref) -> Array:
  """`sum_t taps[t] @ K[t]`, float32: the 3x3 convolution (no bias) at the tile's pixels."""
  acc = None
  for (dy, dx), tap in zip(TAPS, taps):
    term = jnp.dot(tap, kernel_ref[dy, dx], preferred_element_type=jnp.float32)
    acc = term if acc is None else acc + term
  return acc


def _gates(taps, kf_ref, kg_ref, bf_ref, bg_ref) -> tuple[Array, Array]:
  """The MC's pre-activations (f, g) = (conv_f + b_f, conv_m + b_m), float32 (TH*TW, C)."""
  f = _conv(taps, kf_ref) + bf_ref[...].astype(jnp.float32)
  g = _conv(taps, kg_ref) + bg_ref[...].astype(jnp.float32)
  return f, g


def _gated(static: _Static, f: Array, g: Array) -> Array:
  """`MC = act(f) * sigmoid(g)`."""
  return static.activation(f) * jax.nn.sigmoid(g)


def _gate_grads(static: _Static, f: Array, g: Array, d_out: Array) -> tuple[Array, Array]:
  """Gradients of `act(f) * sigmoid(g)` wrt f and g, given that of the output."""
  act, d_act = jax.jvp(static.activation, (f,), (jnp.ones_like(f),))
  s = jax.nn.sigmoid(g)
  return d_out * s * d_act, d_out * act * s * (1.0 - s)


def _store_tile(ref, value: Array, real: Array, geo: _Geometry) -> None:
  """Stores a tile's (TH*TW, C) values into its (1, TH, TW, C) block; pixels outside the image
  are masked off."""
  shape = (1, geo.th, geo.tw, value.shape[-1])
  pltriton.store(ref, value.reshape(shape).astype(ref.dtype),
                 mask=jnp.broadcast_to(real.reshape(shape[:3] + (1,)), shape))


def _flip(kf: Array, kg: Array) -> Array:
  """`K'[s] = K[2 - s]^T` of the MC's two kernels side by side, (3, 3, 2C, C): the kernel of the
  transposed convolution (the input gradient) of the fused 2C one, read against dA's 2C."""
  return jnp.swapaxes(jnp.concatenate([kf, kg], axis=-1)[::-1, ::-1], 2, 3)


# ------------------------------------------------------------------------------------------------
# Kernels.


def _mc1_kernel(static, geo, has_mask, x_ref, *refs):
  """z = m * MC1(x) on one tile."""
  m_ref, (kf, kg, bf, bg, z_ref) = (refs[0], refs[1:]) if has_mask else (None, refs)
  n, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols, real = _tile_pixels(geo, i, j)
  f, g = _gates(_conv_taps(x_ref, n, rows, cols, geo, static.dtype), kf, kg, bf, bg)
  z = _gated(static, f, g)
  if has_mask:
    z = z * _gather(m_ref, n, rows, cols, geo)
  _store_tile(z_ref, z, real, geo)


def _mc2_kernel(static, geo, has_mask, z_ref, x_ref, *refs):
  """out = x + m * MC2(z) on one tile."""
  m_ref, (kf, kg, bf, bg, o_ref) = (refs[0], refs[1:]) if has_mask else (None, refs)
  n, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols, real = _tile_pixels(geo, i, j)
  f, g = _gates(_conv_taps(z_ref, n, rows, cols, geo, static.dtype), kf, kg, bf, bg)
  y = _gated(static, f, g)
  if has_mask:
    y = y * _gather(m_ref, n, rows, cols, geo)
  _store_tile(o_ref, _gather(x_ref, n, rows, cols, geo).astype(jnp.float32) + y, real, geo)


def _store_halves(ref, df: Array, dg: Array, real: Array, geo: _Geometry) -> None:
  """Stores a tile's gradients of the feature and mask pre-activations into the two channel
  halves of its (1, TH, TW, 2C) block: dA, laid out as the plain path's fused 2C convolution."""
  _store_tile(ref.at[:, :, :, pl.ds(0, geo.c)], df, real, geo)
  _store_tile(ref.at[:, :, :, pl.ds(geo.c, geo.c)], dg, real, geo)


def _bwd_mc2_kernel(static, geo, has_mask, z_ref, dout_ref, *refs):
  """dA2 = d(MC2's pre-activations), feature and mask halves, on one tile."""
  m_ref, (kf, kg, bf, bg, da_ref) = (refs[0], refs[1:]) if has_mask else (None, refs)
  n, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols, real = _tile_pixels(geo, i, j)
  f, g = _gates(_conv_taps(z_ref, n, rows, cols, geo, static.dtype), kf, kg, bf, bg)
  d = _gather(dout_ref, n, rows, cols, geo).astype(jnp.float32)
  if has_mask:
    d = d * _gather(m_ref, n, rows, cols, geo)
  _store_halves(da_ref, *_gate_grads(static, f, g, d), real, geo)


def _bwd_mc1_kernel(static, geo, has_mask, da2_ref, x_ref, *refs):
  """dz = conv^T(dA2, K2), then dA1 = d(MC1's pre-activations), on one tile."""
  m_ref, refs = (refs[0], refs[1:]) if has_mask else (None, refs)
  k2t, kf, kg, bf, bg, da_ref = refs
  n, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols, real = _tile_pixels(geo, i, j)
  dz = _conv(_conv_taps(da2_ref, n, rows, cols, geo, static.dtype), k2t)
  if has_mask:
    dz = dz * _gather(m_ref, n, rows, cols, geo)
  f, g = _gates(_conv_taps(x_ref, n, rows, cols, geo, static.dtype), kf, kg, bf, bg)
  _store_halves(da_ref, *_gate_grads(static, f, g, dz), real, geo)


def _bwd_input_kernel(static, geo, da1_ref, dout_ref, k1t, dx_ref):
  """dx = dout + conv^T(dA1, K1) on one tile."""
  n, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  rows, cols, real = _tile_pixels(geo, i, j)
  dx = _conv(_conv_taps(da1_ref, n, rows, cols, geo, static.dtype), k1t)
  _store_tile(dx_ref, _gather(dout_ref, n, rows, cols, geo).astype(jnp.float32) + dx, real,
              geo)


# ------------------------------------------------------------------------------------------------
# pallas_call wrappers.


def _whole(a: Array) -> pl.BlockSpec:
  """The whole array in every program (the kernels gather what they need from it)."""
  return pl.BlockSpec(a.shape, lambda *_: (0,) * a.ndim)


def _call(kernel, static: _Static, grid, inputs, out_specs, out_shape, name):
  """`pallas_call` of `kernel` with every input whole (4 warps per Triton program)."""
  params = None if static.interpret else pltriton.CompilerParams(num_warps=4)
  return pl.pallas_call(
      kernel, out_shape=out_shape, grid=grid, in_specs=[_whole(a) for a in inputs],
      out_specs=out_specs, interpret=static.interpret, name=name,
      compiler_params=params)(*inputs)


def _tile_spec(geo: _Geometry, c: int) -> pl.BlockSpec:
  return pl.BlockSpec((1, geo.th, geo.tw, c), lambda n, i, j: (n, i, j, 0))


def _geometry(static: _Static, x: Array) -> _Geometry:
  n, h, w, c = x.shape
  return _Geometry(n, h, w, c, *static.tile)


def _mc_params(params, which: int):
  kf, kg, bf, bg = params[4 * which: 4 * which + 4]
  return kf, kg, bf.reshape(1, -1), bg.reshape(1, -1)


def _forward(static: _Static, x: Array, mask: Array | None, params) -> tuple[Array, Array]:
  geo = _geometry(static, x)
  masks = [] if mask is None else [mask]
  grid = (geo.n, geo.rows, geo.cols)
  z = _call(functools.partial(_mc1_kernel, static, geo, mask is not None), static, grid,
            [x, *masks, *_mc_params(params, 0)], _tile_spec(geo, geo.c),
            jax.ShapeDtypeStruct(x.shape, static.dtype), 'mrb_mc1')
  out_dtype = jnp.result_type(x.dtype, static.dtype)
  out = _call(functools.partial(_mc2_kernel, static, geo, mask is not None), static, grid,
              [z, x, *masks, *_mc_params(params, 1)], _tile_spec(geo, geo.c),
              jax.ShapeDtypeStruct(x.shape, out_dtype), 'mrb_mc2')
  return out, z


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mrb(static: _Static, x: Array, mask: Array | None, params) -> Array:
  return _forward(static, x, mask, params)[0]


def _mrb_fwd(static, x, mask, params):
  out, z = _forward(static, x, mask, params)
  return out, (x, mask, z, params)


def _param_grads(v: Array, da: Array, dtype) -> tuple[Array, ...]:
  """One MC's kernel and bias gradients (feature, mask) from its input `v` and `dA`, by XLA.

  `sum_p tap_t(p)^T dA(p)` for the 9 taps is the weight gradient of the 3x3 convolution: one
  weight-gradient convolution of both halves (2C outputs, as the plain path's fused MC), in the
  compute dtype as the plain path's (a GPU accumulates it in float32).
  """
  conv = lambda k: jax.lax.conv_general_dilated(
      v.astype(dtype), k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  dk = jax.vjp(conv, jnp.zeros((3, 3, v.shape[-1], da.shape[-1]), dtype))[1](da)[0]
  db = jnp.sum(da.astype(jnp.float32), axis=(0, 1, 2)).astype(dtype)
  c = v.shape[-1]
  return dk[..., :c], dk[..., c:], db[:c], db[c:]


def _mrb_bwd(static, residuals, d_out):
  """The block's backward pass: 3 kernels and XLA's weight gradients (module docstring)."""
  x, mask, z, params = residuals
  geo = _geometry(static, x)
  masks = [] if mask is None else [mask]
  has_mask = mask is not None
  grid = (geo.n, geo.rows, geo.cols)
  da_spec = _tile_spec(geo, 2 * geo.c)
  da_shape = jax.ShapeDtypeStruct(x.shape[:-1] + (2 * geo.c,), static.dtype)
  kf1, kg1, bf1, bg1 = _mc_params(params, 0)
  kf2, kg2, bf2, bg2 = _mc_params(params, 1)
  da2 = _call(functools.partial(_bwd_mc2_kernel, static, geo, has_mask), static, grid,
              [z, d_out, *masks, kf2, kg2, bf2, bg2], da_spec, da_shape, 'mrb_bwd_mc2')
  da1 = _call(functools.partial(_bwd_mc1_kernel, static, geo, has_mask), static, grid,
              [da2, x, *masks, _flip(kf2, kg2), kf1, kg1, bf1, bg1], da_spec, da_shape,
              'mrb_bwd_mc1')
  dx = _call(functools.partial(_bwd_input_kernel, static, geo), static, grid,
             [da1, d_out, _flip(kf1, kg1)],
             _tile_spec(geo, geo.c), jax.ShapeDtypeStruct(x.shape, x.dtype), 'mrb_bwd_input')
  d_mask = None if mask is None else jnp.zeros_like(mask)
  return dx, d_mask, (*_param_grads(x, da1, static.dtype), *_param_grads(z, da2, static.dtype))


_mrb.defvjp(_mrb_fwd, _mrb_bwd)
