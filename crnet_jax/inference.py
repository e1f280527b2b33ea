"""Enhance images of any size with a trained CRNet: padding, shape buckets and exact tiles.

`Enhancer(model, params)` maps an (H, W, 3) float image in [0, 1] to the enhanced image, clipped to
[0, 1]:

1. The image is padded at the bottom and right up to a multiple of `bucket` pixels, so that the
   jitted network compiles once per bucket, not once per image size, and the output is cropped
   back to exactly (H, W). The network gets the pixel mask of the real pixels, with which the
   padded image computes exactly what the unpadded one does (`layers.apply_mask`).
2. An image with more than `max_whole_pixels` pixels (after padding) goes through tiles, so that
   device memory stays bounded (`max_whole_pixels=0`: every image whose whole-image pass, as
   compiled, needs at most half of the device's memory runs whole, the others tiled). CRNet is
   not purely local: every LMRG pass has a layer attention whose energy `E = F F^T` sums over
   the whole image. Tiling therefore runs pass by pass: for
   each of the N x T passes, (a) every tile computes head, memory and blocks, writes the cores of
   its block outputs and of the new memory state into full-resolution buffers, and adds the
   energy over its core pixels into the whole image's energy; (b) every tile computes the layer
   attention (with that energy), the fuse and tail convolutions and the skip from the gathered
   block outputs, and writes its core into the full-resolution estimate. Each tile's core is
   surrounded by `tile_overlap` pixels of context (by default the receptive radius of one pass,
   `models.receptive_radius`, 14 pixels for the defaults), so the cores join without seams and
   the result equals the whole-image pass up to float rounding: no blending is needed. Tiles are
   laid over the padded image and clamped inside it; all tiles have one shape (one compilation).
   With `cache_blocks=False`, (b) recomputes the whole pass on each tile instead of keeping the
   block outputs: about 2.3x the compute of the whole image instead of 1.3x, for B x C fewer
   channels of memory per pixel.

Memory: the tiled pass keeps the image in its own dtype (uint8 for 8-bit files) and converts
each tile to float32 when the network reads it; the estimate stays float32 (what the exactness
above needs), and the output is rounded to uint8 on the device when asked for
(`enhance_uint8`). `bytes_per_pixel` gives what a pass holds per pixel; images over
`max_image_pixels` are refused before they are decoded, naming their pixel count.

`enhance_paths` runs an Enhancer over files and folders and writes PNGs; every input file is
written or reported with the reason, and a user's files are never replaced (docs/reliability.md).
`evaluate_pairs` scores a paired folder, keeps the enhanced images and draws figures and a contact
sheet. Both check their inputs and outputs first (`plan_enhance`, `plan_evaluation`: main.py does
so before loading the model) and show a progress bar on stderr (`progress.Bar`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from crnet_jax import image_io
from crnet_jax import layers
from crnet_jax import models
from crnet_jax.progress import track


@dataclasses.dataclass(frozen=True)
class TilingConfig:
  """How images are padded and tiled (`config.inference`)."""
  bucket: int = 32  # pad H and W up to a multiple of this (fewer compilations)
  # Larger (padded) images go through tiles; 0: those whose compiled whole-image pass needs more
  # than half of the device's memory (`Enhancer.uses_whole`).
  max_whole_pixels: int = 1024 * 1024
  tile_size: int = 512  # tile side, context included
  tile_overlap: int = 0  # context pixels around a tile's core; 0 = one pass's receptive radius
  # Keep each pass's block outputs at full resolution between its two parts (about 1.3x the
  # compute of a whole-image pass) instead of recomputing them (about 2.3x, B x C fewer channels
  # of memory per pixel).
  cache_blocks: bool = True
  # Larger images are refused, naming their pixel count; 0: those whose tiled pass fits in half
  # the memory (`Enhancer.max_image_pixels`).
  max_image_pixels: int = 0

  def __post_init__(self):
    for name in ('bucket', 'tile_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'inference.{name} must be positive, got {getattr(self, name)}')
    for name in ('tile_overlap', 'max_image_pixels', 'max_whole_pixels'):
      if getattr(self, name) < 0:
        raise ValueError(f'inference.{name} must be >= 0, got {getattr(self, name)}')

  @classmethod
  def from_config(cls, config: Any) -> 'TilingConfig':
    """From a `config.inference` ConfigDict (or any mapping with these keys)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: type(getattr(cls, k))(v) for k, v in dict(config).items() if k in fields})


def tile_windows(length: int, tile: int, halo: int) -> list[tuple[int, int, int]]:
  """`(window_start, core_start, core_end)` along one axis of `length` pixels.

  The cores partition [0, length); each window has `min(tile, length)` pixels and holds its core
  with at least `halo` pixels of context on each side, except where it meets the image's edge.
  """
  if length <= tile:
    return [(0, 0, length)]
  core = tile - 2 * halo
  if core < 1:
    raise ValueError(f'inference.tile_size {tile} leaves no core pixels with {halo} pixels of '
                     'context on each side; use a larger tile_size')
  windows = []
  for core_start in range(0, length, core):
    core_end = min(core_start + core, length)
    windows.append((min(max(core_start - halo, 0), length - tile), core_start, core_end))
  return windows


def bytes_per_pixel(model: models.CRNet, tiling: TilingConfig) -> int:
  """Memory of the tiled pass per pixel of the padded image, besides the tiles (docs/reliability.md).

  The input and the output as uint8 (3 + 3 bytes), the estimate as float32 (12), with
  `cache_blocks` the B block outputs of a pass (1 without layer attention), without it a second
  estimate (12); with T > 1 recurrences the memory state (h, c) before and after a pass; features
  in `model.config.dtype`. 16-bit inputs take 3 more bytes per pixel, float ones 9.
  """
  c = model.config
  feature = jnp.dtype(c.dtype).itemsize * c.features
  total = 3 + 12 + 3
  if tiling.cache_blocks:
    total += feature * (c.num_blocks if c.layer_attention else 1)
  else:
    total += 12
  if c.recurrences > 1:
    total += 4 * feature
  return total


def executable_bytes(compiled: Any) -> int:
  """What a compiled executable holds on its device: arguments + outputs + temporaries - the
  outputs that reuse (donated) argument buffers."""
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def _memory_bytes() -> int | None:
  """The memory inference can use: the first device's limit, or the host's RAM for CPU."""
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _size(h: int, w: int, dtype: Any) -> jax.Array:
  """The tiled pass's `size` argument: real height and width, and the integer image's divisor."""
  return jnp.array([h, w, 65535 if np.dtype(dtype) == np.uint16 else 255], jnp.int32)


class Enhancer:
  """A jitted CRNet forward pass over images of any size (see the module docstring)."""

  def __init__(self, model: models.CRNet, params: Any,
               tiling: TilingConfig = TilingConfig()):
    self.model = model
    self.params = jax.device_put(params)
    self.tiling = tiling
    self.halo = tiling.tile_overlap or models.receptive_radius(model)

    self._forward = jax.jit(functools.partial(models.enhance, model))
    self._whole = {}  # (height, width) -> the compiled whole-image pass, or None: too big
    self._tiled = jax.jit(self._tiled_forward, static_argnames=('out_uint8',))
    # uint8 in, uint8 out of the same (padded) shape: the output reuses the input's buffer.
    self._tiled_in_place = jax.jit(functools.partial(self._tiled_forward, out_uint8=True),
                                   donate_argnums=(1,))

  def max_image_pixels(self) -> tuple[int, str]:
    """The largest image in pixels, and how the limit was set (for the refusal's message).

    `inference.max_image_pixels` if positive; otherwise (0, the default) the pixels whose tiled
    pass (`bytes_per_pixel`) fits in half the memory of the device (the host's RAM on CPU), at
    most Pillow's hard limit.
    """
    if self.tiling.max_image_pixels > 0:
      return self.tiling.max_image_pixels, 'inference.max_image_pixels'
    per_pixel = bytes_per_pixel(self.model, self.tiling)
    memory = _memory_bytes()
    hard = 2 * image_io.DEFAULT_MAX_PIXELS
    if not memory:
      return hard, "Pillow's limit"
    fit = memory // 2 // per_pixel
    if fit >= hard:
      return hard, "Pillow's limit"
    return int(fit), (f'that fit in half of the {memory / 2**30:.1f} GiB of memory at '
                      f'{per_pixel} bytes per pixel for this network (inference.max_image_pixels=0)')

  def load(self, path: str) -> np.ndarray:
    """`path` as a native image (uint8 or uint16), refused over `max_image_pixels()`."""
    limit, how = self.max_image_pixels()
    return image_io.load_image_native(
        path, limit, limit_hint=f'({how}); downscale it, or set --config.inference.'
        'max_image_pixels (the tiled pass needs about '
        f'{bytes_per_pixel(self.model, self.tiling)} bytes per pixel)')

  def uses_whole(self, height: int, width: int) -> bool:
    """Whether a padded (height, width) image runs whole rather than tiled.

    At most `max_whole_pixels` pixels; with `max_whole_pixels=0`, when the whole-image pass
    compiled for that size needs at most half of the device's memory (the host's RAM on CPU).
    """
    if self.tiling.max_whole_pixels > 0:
      return height * width <= self.tiling.max_whole_pixels
    return self._compiled_whole(height, width) is not None

  def _compiled_whole(self, height: int, width: int) -> Any:
    """The whole-image pass compiled for one padded (height, width) image if it fits in half of
    the memory (`uses_whole`), else None; compiled once per size."""
    if (height, width) not in self._whole:
      image = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
      mask = jax.ShapeDtypeStruct((1, height, width, 1), jnp.float32)
      compiled = self._forward.lower(self.params, image, mask).compile()
      need = executable_bytes(compiled)
      memory = _memory_bytes()
      fits = need <= memory // 2 if memory else height * width <= TilingConfig.max_whole_pixels
      self._whole[(height, width)] = compiled if fits else None
    return self._whole[(height, width)]

  def forward(self, batch: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The clipped network output for an (n, H, W, 3) batch and its (n, H, W, 1) pixel mask."""
    if mask is None:
      mask = np.ones(batch.shape[:-1] + (1,), np.float32)
    return np.asarray(self._forward(self.params, jnp.asarray(batch, jnp.float32),
                                    jnp.asarray(mask, jnp.float32)))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """Enhances one (H, W, 3) image (float in [0, 1], uint8 or uint16): float32, in [0, 1]."""
    return self._enhance(image, out_uint8=False)

  def enhance_uint8(self, image: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """`to_uint8(self(image))`, without any float32 copy of the whole image on the host.

    `image` may also be a list holding the image, which this method empties: then the caller
    keeps no reference, and the host copy is freed once the image is on the device.
    """
    return self._enhance(image, out_uint8=True)

  def _check(self, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an (H, W, 3) image, got shape {image.shape}')
    if image.dtype not in (np.uint8, np.uint16):
      image = np.asarray(image, np.float32)
    return image

  def _padding(self, h: int, w: int) -> tuple[tuple[int, int], ...]:
    b = self.tiling.bucket
    return ((0, image_io.round_up(h, b) - h), (0, image_io.round_up(w, b) - w), (0, 0))

  def _enhance(self, image: np.ndarray | list[np.ndarray], out_uint8: bool) -> np.ndarray:
    """Pad to the bucket, whole or tiled, crop back (float32 or uint8)."""
    image = self._check(image.pop() if isinstance(image, list) else image)
    h, w, _ = image.shape
    pad = self._padding(h, w)
    if self.uses_whole(h + pad[0][1], w + pad[1][1]):
      padded = np.pad(image_io.to_float(image), pad)
      mask = np.pad(np.ones((h, w, 1), np.float32), pad)
      # With max_whole_pixels=0, the executable `uses_whole` compiled to measure its memory.
      forward = (self._forward if self.tiling.max_whole_pixels > 0
                 else self._compiled_whole(*padded.shape[:2]))
      out = np.asarray(forward(self.params, jnp.asarray(padded[None], jnp.float32),
                               jnp.asarray(mask[None])))[0][:h, :w]
      return image_io.to_uint8(out) if out_uint8 else out
    # Tiled: the image stays in its own dtype (uint8: a quarter of float32); each tile is
    # converted when the network reads it, and the output is written as uint8 if asked for.
    size = _size(h, w, image.dtype)
    in_place = out_uint8 and image.dtype == np.uint8
    padded = jnp.array(np.pad(image, pad) if any(p[1] for p in pad) else image)  # a copy
    del image  # the host copy is freed here if the caller handed it over (`enhance_uint8`)
    if in_place:
      out = self._tiled_in_place(self.params, padded, size)
    else:
      out = self._tiled(self.params, padded, size, out_uint8=out_uint8)
    del padded
    return np.asarray(out)[:h, :w]

  def tiled(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Enhances an (H, W, 3) image pass by pass over tiles (float32 out).

    `mask`, if given, must be 1 on a top-left rectangle (the real pixels of a padded image) and
    0 elsewhere.
    """
    image = self._check(image)
    h, w = image.shape[:2]
    if mask is not None:
      rows, cols = np.nonzero(np.asarray(mask)[..., 0])
      h, w = (int(rows.max()) + 1, int(cols.max()) + 1) if rows.size else (0, 0)
    return np.asarray(self._tiled(self.params, jnp.asarray(image), _size(h, w, image.dtype),
                                  out_uint8=False))

  def lower_tiled(self, height: int, width: int, dtype: Any = np.uint8) -> Any:
    """The tiled pass lowered for a padded (height, width, 3) image of `dtype` (uint8 out)."""
    return self._tiled.lower(self.params, jax.ShapeDtypeStruct((height, width, 3), dtype),
                             jax.ShapeDtypeStruct((3,), jnp.int32), out_uint8=True)

  def tiled_memory_bytes(self, height: int, width: int) -> int:
    """Arguments, output and temporaries of the compiled tiled pass for a uint8 image (bytes)."""
    return executable_bytes(self.lower_tiled(height, width).compile())

  def _tiled_forward(self, params: Any, image: jax.Array, size: jax.Array, *,
                     out_uint8: bool) -> jax.Array:
    """CRNet on an (H, W, 3) padded image, every pass computed tile by tile (module docstring).

    `size` is (h, w, m): the real pixels are the top-left h x w, and an integer image is
    divided by m (255 or 65535). Returns float32, or uint8 with `out_uint8`.
    """
    model = self.model
    height, width, _ = image.shape
    th, tw = min(self.tiling.tile_size, height), min(self.tiling.tile_size, width)
    tiles = np.array([(wy, wx, cy0 - wy, cy1 - wy, cx0 - wx, cx1 - wx)
                      for wy, cy0, cy1 in tile_windows(height, th, self.halo)
                      for wx, cx0, cx1 in tile_windows(width, tw, self.halo)], np.int32)
    # The divisor is an argument, not a constant: XLA would turn `/ 255` into `* (1 / 255)`,
    # which differs from `image_io.to_float` in the last bit.
    scale = size[2].astype(jnp.float32) if jnp.issubdtype(image.dtype, jnp.integer) else None
    image = image[None]

    def window(a, tile):
      return jax.lax.dynamic_slice(a, (0, tile[0], tile[1], 0), (1, th, tw, a.shape[-1]))

    def x_window(tile):  # the input tile as float32 in [0, 1], as `image_io.to_float` gives it
      v = window(image, tile).astype(jnp.float32)
      return v if scale is None else v / scale

    def mask_window(tile):  # 1 on the real pixels (the image is padded at the bottom and right)
      rows, cols = tile[0] + jnp.arange(th), tile[1] + jnp.arange(tw)
      return ((rows < size[0])[:, None] & (cols < size[1])[None, :]).astype(
          jnp.float32)[None, :, :, None]

    def core_mask(tile):
      rows, cols = jnp.arange(th), jnp.arange(tw)
      return (((rows >= tile[2]) & (rows < tile[3]))[:, None]
              & ((cols >= tile[4]) & (cols < tile[5]))[None, :])[None]

    def put(fulls, news, tile):
      """Writes the core pixels of each tile-sized `news` into its full-resolution `fulls`."""
      core = core_mask(tile)[..., None]
      return tuple(jax.lax.dynamic_update_slice(full, jnp.where(core, new, window(full, tile)),
                                                (0, tile[0], tile[1], 0))
                   for full, new in zip(fulls, news))

    c = model.config
    group = models.LMRG(c)
    # The energy summed over the tiles' cores, scaled as the layer attention scales its own.
    whole_image = lambda e: e if e is None else layers.scale_energy(
        e, c.layer_attention_energy, size[0] * size[1], c.features)
    cached = self.tiling.cache_blocks
    num_cached = (c.num_blocks if c.layer_attention else 1) if cached else 0
    # The memory state lives at full resolution only when a group has several recurrences
    # (it starts each group at zero).
    stateful = c.recurrences > 1
    feature_shape = (1, height, width, c.features)
    zero_state = lambda: layers.zero_memory_state(
        jnp.zeros((1, th, tw, 1), c.dtype), c.features)
    # One loop over the N x T passes (group p // T's parameters), so that XLA keeps one pass's
    # full-resolution buffers, not N x T of them, and compiles the pass once.
    stacked = jax.tree.map(lambda *a: jnp.stack(a),
                           *[params[f'lmrg_{i}'] for i in range(c.num_groups)])

    def one_pass(p, carry):
      y, state, blocks = carry
      variables = {'params': jax.tree.map(lambda a: a[p // c.recurrences], stacked)}
      first = p % c.recurrences == 0  # a group starts with a zero memory state

      def state_window(tile):
        if not stateful:
          return zero_state()
        return tuple(jnp.where(first, jnp.zeros_like(v), v)
                     for v in (window(state[0], tile), window(state[1], tile)))

      inputs = lambda tile, y: dict(x=x_window(tile), y=window(y, tile),
                                    state=state_window(tile), mask=mask_window(tile))

      if cached:
        def part_one(carry, tile):
          # Head, memory and blocks; the energy over the core; the cores of the block outputs
          # and of the new memory state are kept at full resolution.
          out, total = carry
          new_blocks, new_state, energy = group.apply(
              variables, **inputs(tile, y), energy_mask=core_mask(tile),
              method=models.LMRG.blocks_and_energy)
          out = put(out, tuple(new_blocks) + (tuple(new_state) if stateful else ()), tile)
          return (out, total if energy is None else total + energy), None

        energy = (jnp.zeros((1, c.num_blocks, c.num_blocks), jnp.float32)
                  if c.layer_attention else None)
        new_state = tuple(jnp.zeros(feature_shape, c.dtype) for _ in range(2 * stateful))
        (fulls, energy), _ = jax.lax.scan(part_one, (blocks + new_state, energy), tiles)
        blocks, new_state = fulls[:num_cached], fulls[num_cached:]
        energy = whole_image(energy)

        # The layer attention, fuse and tail read the gathered block outputs. The estimate is
        # updated in place: a tile reads it only where it writes (the skip), and the cores
        # partition the image.
        def part_two(y, tile):
          out = group.apply(variables, x_window(tile), window(y, tile),
                            [window(f, tile) for f in blocks], mask=mask_window(tile),
                            energy=energy, method=models.LMRG.attend_and_tail)
          return put((y,), (out,), tile)[0], None

        y, _ = jax.lax.scan(part_two, y, tiles)
        return y, new_state, blocks

      energy = None
      if c.layer_attention:
        def energy_of(total, tile):
          _, _, e = group.apply(variables, **inputs(tile, y), energy_mask=core_mask(tile),
                                method=models.LMRG.blocks_and_energy)
          return total + e, None
        energy, _ = jax.lax.scan(
            energy_of, jnp.zeros((1, c.num_blocks, c.num_blocks), jnp.float32), tiles)
        energy = whole_image(energy)

      def step(carry, tile):  # the whole pass on each tile, with the summed energy
        out, new_state = group.apply(variables, **inputs(tile, y), energy=energy)
        return put(carry, (out,) + (tuple(new_state) if stateful else ()), tile), None

      new = jax.lax.scan(step, (y,) + tuple(jnp.zeros(feature_shape, c.dtype)
                                            for _ in range(2 * stateful)), tiles)[0]
      return new[0], new[1:], blocks

    state = tuple(jnp.zeros(feature_shape, c.dtype) for _ in range(2 * stateful))
    blocks = tuple(jnp.zeros(feature_shape, c.dtype) for _ in range(num_cached))
    y = image.astype(jnp.float32)
    if scale is not None:
      y = y / scale
    y, _, _ = jax.lax.fori_loop(0, c.num_groups * c.recurrences, one_pass,
                                (y, state, blocks))
    y = jnp.clip(y, 0.0, 1.0)[0]
    return jnp.round(y * 255.0).astype(jnp.uint8) if out_uint8 else y


def list_inputs(inputs: str | Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """`(files, skipped)`: the files named by `inputs` (files as given, every file of a folder).

  A folder's files are not filtered by extension: a file that is not an image is reported when
  it fails to decode, so that every file is written or reported. What a folder holds besides
  files (subfolders: folders are not searched), and hidden files (names starting with a dot),
  are in `skipped`, path -> reason.
  """
  paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
  files, skipped = [], {}
  for path in paths:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
      names = sorted(os.listdir(path))
      if not names:
        raise image_io.DataError(f'{path}: the input folder is empty')
      for name in names:
        full = os.path.join(path, name)
        if name.startswith('.'):
          skipped[full] = f'{full}: hidden file, not read'
        elif os.path.isdir(full):
          skipped[full] = f'{full}: a folder (folders inside the input are not searched)'
        else:
          files.append(full)
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise image_io.MissingDataError(f'{path}: input not found')
  return files, skipped


def output_names(files: Iterable[str]) -> list[str]:
  """`name.png` for each input; an input whose stem repeats keeps its extension (`a.jpg.png`)."""
  files = list(files)
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  return [(s if stems.count(s) == 1 else os.path.basename(f)) + '.png'
          for f, s in zip(files, stems)]


def _real(path: str) -> str:
  return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _is_inside(path: str, folder: str) -> bool:
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def is_own_output(path: str) -> bool:
  """Whether `path` was written by enhance or evaluate (the mark of `image_io.save_image`)."""
  if path.endswith('.json'):
    try:
      with open(path) as f:
        return json.load(f).get('written_by') == image_io.OUTPUT_MARK
    except (OSError, ValueError, AttributeError):
      return False
  return image_io.is_own_output(path)


def check_output_folder(output_dir: str, input_folders: Iterable[str], what: str) -> None:
  """Refuses an output folder that is a file, or is one of `input_folders` or inside one.

  Symbolic links are resolved: a link to the input folder is the input folder.
  """
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise image_io.DataError(f'{output_dir}: the output folder is an existing file, not a '
                             'folder; choose a folder')
  out = _real(output_dir)
  for folder in input_folders:
    real = _real(folder)
    if _is_inside(out, real):
      where = 'is the' if out == real else 'is inside the'
      raise image_io.DataError(
          f'{output_dir}: the output folder {where} {what} {folder}; outputs never go among the '
          'inputs: choose a folder outside it')


def check_targets(targets: Sequence[str], inputs: Iterable[str]) -> None:
  """Refuses to write any of `targets` that is an input, a link, or a file this project did not
  write (all checked before anything is written, so a refusal leaves every file as it is)."""
  inputs = {_real(p) for p in inputs}
  problems = []
  for target in targets:
    if _real(target) in inputs:
      problems.append(f'{target}: is an input; an output never replaces an input')
    elif os.path.islink(target):
      problems.append(f'{target}: is a symbolic link; not replaced (remove it, or choose '
                      'another output)')
    elif os.path.isdir(target):
      problems.append(f'{target}: is a folder; not replaced')
    elif os.path.exists(target) and not is_own_output(target):
      problems.append(f'{target}: exists and was not written by crnet-jax; not replaced (move '
                      'it, or choose another output)')
  if problems:
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    raise image_io.DataError(problems[0] + more)


@dataclasses.dataclass(frozen=True)
class EnhanceJob:
  """What `run_enhance` reads and writes, checked by `plan_enhance` before any model is loaded."""
  files: list[str]  # the input files
  targets: list[str]  # the output file of each
  failed: dict[str, str]  # inputs known not to be written already (path -> reason)


def plan_enhance(inputs: str | Sequence[str], output: str) -> EnhanceJob:
  """The files of `inputs` and their outputs, all the checks of `enhance_paths` done."""
  files, failed = list_inputs(inputs)
  output = os.path.abspath(os.path.expanduser(os.fspath(output)))
  named = os.path.splitext(output)[1].lower() in image_io.IMAGE_EXTENSIONS
  if (isinstance(inputs, (str, os.PathLike)) and os.path.isfile(inputs) and named
      and not os.path.isdir(output)):
    targets = [output]
  else:
    folders = [p for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
               if os.path.isdir(p)] + sorted({os.path.dirname(f) for f in files})
    check_output_folder(output, folders, 'input folder')
    targets = [os.path.join(output, name) for name in output_names(files)]
  check_targets(targets, files)
  return EnhanceJob(files, targets, failed)


def enhance_paths(enhancer: Enhancer, inputs: str | Sequence[str], output: str, *,
                  progress: bool = True) -> dict[str, Any]:
  """Enhances every image named by `inputs` into the folder `output` as PNGs with the same names.

  A single input file with `output` ending in an image extension (`x.png`, `x.jpg`, ...) and not
  an existing folder is written to that file. A user's files are never replaced and outputs never
  land among the inputs (docs/reliability.md): `output` must not be an input folder or inside one
  (nor, for a folder, an input file's folder), and no output may replace an input, a symbolic
  link, or a file that is not an earlier output of this project (those carry
  `image_io.OUTPUT_MARK` and are replaced by a rerun). All of this is checked before anything
  is written (`plan_enhance`, which main.py runs before loading the model); a refusal is a
  `DataError` naming the path.

  Returns `{'written': [output paths], 'failed': {path: reason}}`: every input file is written or
  in `failed` (unreadable, not an image, over `max_image_pixels`, a subfolder, a hidden file),
  and the failures are listed in one warning; the others are still processed. With `progress`,
  a bar on stderr (`progress.Bar`).
  """
  return run_enhance(enhancer, plan_enhance(inputs, output), progress=progress)


def run_enhance(enhancer: Enhancer, job: EnhanceJob, *, progress: bool = True) -> dict[str, Any]:
  """Enhances the files of `job` (`plan_enhance`); returns what `enhance_paths` does."""
  failed = dict(job.failed)
  written = []
  for path, out_path in track(zip(job.files, job.targets), 'enhance', total=len(job.files),
                              enabled=progress):
    try:
      image = enhancer.load(path)
    except image_io.DataError as e:
      failed[path] = str(e)
      continue
    holder = [image]
    del image  # `enhance_uint8` frees the host copy once it is on the device
    image_io.save_image(out_path, enhancer.enhance_uint8(holder))
    written.append(out_path)
  if failed:
    logging.warning('Skipped %d file(s):\n  %s', len(failed), '\n  '.join(failed.values()))
  return {'written': written, 'failed': failed}


def _label(image: np.ndarray, text: str) -> np.ndarray:
  """`image` (uint8 HxWx3) with a title bar holding `text` above it."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  bar = Image.new('RGB', (image.shape[1], 18), (0, 0, 0))
  ImageDraw.Draw(bar).text((4, 3), text, fill=(255, 255, 255))
  return np.concatenate([np.asarray(bar), image], axis=0)


CAPTION_SIZE = 16  # pixels: the text of the contact sheet, shown at its own size
SHEET_CELL = 320  # the width of each image of a contact sheet row
SHEET_GAP = 6  # white pixels between the images, and between the rows
SHEET_MAX_ROWS = 200  # more pairs: the sheet shows the first ones (figures/ has them all)


def _font(size: int) -> Any:
  """Pillow's own font at `size` pixels (the small fixed bitmap font without FreeType)."""
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  try:
    return ImageFont.load_default(size=size)
  except (ImportError, OSError, TypeError, ValueError):
    return ImageFont.load_default()


def caption_bar(width: int, texts: Sequence[tuple[int, str]] | str, size: int = CAPTION_SIZE,
                *, right: str = '', background: tuple[int, int, int] = (32, 32, 32),
                color: tuple[int, int, int] = (255, 255, 255), center: int = 0) -> np.ndarray:
  """A uint8 bar `width` pixels wide with text in a `size`-pixel font.

  `texts` is one string (at the left), or `(x, text)` pairs; with `center` > 0 each text is
  centred in the `center` pixels from its x. `right` is drawn at the right end, whole: a text
  too long for the room left is cut with '...' (a long file name, not the scores after it).
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  font = _font(size)
  pad = max(3, size // 3)
  height = size + 2 * pad
  bar = Image.new('RGB', (width, height), background)
  draw = ImageDraw.Draw(bar)
  if isinstance(texts, str):
    texts = [(pad, texts)]
  _, top, _, bottom = draw.textbbox((0, 0), 'Ag', font=font)  # one baseline for every text
  y = (height - (bottom - top)) // 2 - top
  end = width
  if right:
    end = max(pad, width - pad - int(draw.textlength(right, font=font)))
    draw.text((end, y), right, fill=color, font=font)
    end -= 2 * size  # a space before it
  for x, text in texts:
    room = (center or end - x) - pad
    if draw.textlength(text, font=font) > room:
      while text and draw.textlength(text + '...', font=font) > room:
        text = text[:-1]
      text += '...'
    x_min, _, x_max, _ = draw.textbbox((0, 0), text, font=font)
    x0 = x + (center - (x_max - x_min)) // 2 - x_min if center else x
    draw.text((x0, y), text, fill=color, font=font)
  return np.asarray(bar)


def _fit_width(image: np.ndarray, width: int) -> np.ndarray:
  """A uint8 image scaled to `width` pixels (its aspect kept)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  if w == width:
    return image
  size = (width, max(1, round(h * width / w)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _row(images: Sequence[np.ndarray], gap: int) -> np.ndarray:
  sep = np.full((images[0].shape[0], gap, 3), 255, np.uint8)
  return np.concatenate(sum(([image, sep] for image in images), [])[:-1], axis=1)


def _as_uint8(image: np.ndarray) -> np.ndarray:
  """A uint8 image as it is; a float one in [0, 1] rounded (`image_io.to_uint8`)."""
  image = np.asarray(image)
  return image if image.dtype == np.uint8 else image_io.to_uint8(image)


def side_by_side(low: np.ndarray, enhanced: np.ndarray, high: np.ndarray, title: str,
                 gap: int = 4, *, scores: str = '') -> np.ndarray:
  """One uint8 figure at full resolution: low | enhanced | ground truth (float in [0, 1] or
  uint8), `title` above.

  `scores` ends the bar, on the right. The font grows with the figure (1/60 of its width, 14 to
  40 pixels), so the text reads at the size a viewer shows the whole figure.
  """
  row = _row([_as_uint8(x) for x in (low, enhanced, high)], gap)
  size = min(40, max(14, row.shape[1] // 60))
  return np.concatenate([caption_bar(row.shape[1], title, size, right=scores), row], axis=0)


def triptych_row(low: np.ndarray, enhanced: np.ndarray, high: np.ndarray, caption: str, *,
                 scores: str = '', cell: int = SHEET_CELL, gap: int = SHEET_GAP) -> np.ndarray:
  """One row of a contact sheet: `caption` (and `scores` on the right) in a bar, then low |
  enhanced | ground truth, each scaled to `cell` pixels of width (`3 * cell + 2 * gap` wide)."""
  images = [_fit_width(_as_uint8(x), cell) for x in (low, enhanced, high)]
  row = _row(images, gap)
  return np.concatenate([caption_bar(row.shape[1], caption, right=scores), row], axis=0)


def contact_sheet(rows: Sequence[np.ndarray], title: str = '', *, cell: int = SHEET_CELL,
                  gap: int = SHEET_GAP) -> np.ndarray:
  """The `triptych_row`s one under the other, under a header: `title` and the column names.

  A white band of `gap` pixels separates the rows. The text keeps `CAPTION_SIZE` pixels: the
  sheet is meant to be seen at its own size (`3 * cell + 2 * gap` pixels wide).
  """
  width = 3 * cell + 2 * gap
  names = caption_bar(width, [(i * (cell + gap), name) for i, name in
                              enumerate(('low', 'enhanced', 'ground truth'))],
                      background=(255, 255, 255), color=(0, 0, 0), center=cell)
  parts = ([caption_bar(width, title)] if title else []) + [names]
  for row in rows:
    parts += [np.full((gap, width, 3), 255, np.uint8), row]
  return np.concatenate(parts, axis=0)


SAMPLE_COLUMNS = ('low', 'student', 'teacher', 'high')
HEADER_HEIGHT = 18  # `_label`'s title bar


def sample_grid(examples: Sequence[Mapping[str, np.ndarray]], cell: int = 192,
                gap: int = 4) -> np.ndarray:
  """One uint8 figure: a row per example, columns low | student | teacher | high.

  The teacher's column is there when the examples have one (MCMT). Every image is scaled to
  `cell` pixels of width (its aspect kept); the columns are separated, and the rows too, by `gap`
  white pixels, and a header bar names the columns (`_label`).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not examples:
    raise ValueError('sample_grid needs at least one example')
  columns = [c for c in SAMPLE_COLUMNS if c in examples[0]]
  vsep = np.full((HEADER_HEIGHT, gap, 3), 255, np.uint8)
  header = [_label(np.zeros((0, cell, 3), np.uint8), name) for name in columns]
  parts = [np.concatenate(sum(([h, vsep] for h in header), [])[:-1], axis=1)]
  for ex in examples:
    h, w = ex['low'].shape[:2]
    size = (cell, max(1, round(h * cell / w)))
    cells = [np.asarray(Image.fromarray(image_io.to_uint8(ex[c])).resize(size, Image.BILINEAR))
             for c in columns]
    sep = np.full((size[1], gap, 3), 255, np.uint8)
    row = np.concatenate(sum(([c, sep] for c in cells), [])[:-1], axis=1)
    parts += [np.full((gap, row.shape[1], 3), 255, np.uint8), row]
  return np.concatenate(parts, axis=0)


METRICS_FILE = 'metrics.json'
CONTACT_SHEET_FILE = 'contact_sheet.png'
ENHANCED_DIR = 'enhanced'  # <output>/enhanced/<name>.png: the enhanced images
FIGURES_DIR = 'figures'  # <output>/figures/<name>.png: low | enhanced | ground truth


@dataclasses.dataclass(frozen=True)
class EvaluationJob:
  """The pairs `run_evaluation` scores, checked by `plan_evaluation` before any model is loaded."""
  low_dir: str
  high_dir: str
  output_dir: str
  pairs: list[Any]  # `datasets.base.Item`s: name (the stem), low and high paths
  skipped: dict[str, str]  # files left out for want of a partner (path -> reason)
  skip_unpaired: bool = False

  def targets(self) -> list[str]:
    """Every file evaluate writes."""
    return ([os.path.join(self.output_dir, name) for name in (METRICS_FILE, CONTACT_SHEET_FILE)]
            + [os.path.join(self.output_dir, folder, item.name + '.png')
               for folder in (ENHANCED_DIR, FIGURES_DIR) for item in self.pairs])


def plan_evaluation(low_dir: str, high_dir: str, output_dir: str, *,
                    skip_unpaired: bool = False) -> EvaluationJob:
  """The pairs of `low_dir` and `high_dir`, checked without the model, and the files to write.

  Low and ground-truth images are paired by name without the extension (`low/x.png` with
  `high/x.jpg`). Every problem with the data is reported at once, in one `DataError` that lists
  them: a missing or empty folder; a file without a partner (with `skip_unpaired`, such files
  are left out instead and listed in `skipped`; an error if no pair is left); two files of one
  folder with the same name; an image that does not decode (each is decoded here, in threads);
  a pair of different sizes. Then the output is checked: `output_dir` may not be either input
  folder or inside one, and no file there is replaced unless evaluate wrote it
  (`check_targets`).
  """
  from crnet_jax.datasets import base  # pylint: disable=g-import-not-at-top
  folders = {'low': (low_dir, 'low folder'), 'high': (high_dir, 'ground-truth folder')}
  files, problems = {}, []
  for key, (folder, what) in folders.items():
    try:
      files[key] = base.list_image_files(folder, what=what)
    except image_io.DataError as e:
      problems.append(str(e))
  base.raise_problems(problems)
  low_dir, high_dir = base.expand(low_dir), base.expand(high_dir)
  by_name = {}
  for key, (_, what) in folders.items():
    index = {}
    for path in files[key]:
      name = base.stem(path)
      if name in index:
        problems.append(f'{path}: same name as {index[name]} in the {what} (pairs are matched '
                        'by the name without its extension); rename or move one')
      else:
        index[name] = path
    by_name[key] = index
  lows, highs = by_name['low'], by_name['high']
  unpaired = {path: f'{path}: no ground truth named {name}.* in {high_dir}'
              for name, path in lows.items() if name not in highs}
  unpaired.update({path: f'{path}: no low image named {name}.* in {low_dir}'
                   for name, path in highs.items() if name not in lows})
  pairs = [base.Item(name=name, low=lows[name], high=highs[name])
           for name in sorted(set(lows) & set(highs), key=base.natural_key)]
  if skip_unpaired and not pairs:
    problems.append(f'{low_dir}: no low image has a ground truth of the same name in '
                    f'{high_dir}: nothing to score')

  def check(item):
    try:
      low = image_io.load_image_native(item.low)
      high_shape = image_io.load_image_native(item.high).shape
    except image_io.DataError as e:
      return str(e)
    if low.shape != high_shape:
      return (f'{item.low}: size {low.shape[0]}x{low.shape[1]} (HxW) differs from its ground '
              f'truth {item.high}: {high_shape[0]}x{high_shape[1]}')
    return None

  problems += [p for p in base.parallel_map(check, pairs) if p]
  if unpaired and not skip_unpaired:
    hint = '--skip_unpaired scores only the pairs'
    header = (f'{len(unpaired)} file(s) without a partner of the same name ({hint})'
              if not problems else
              f'{len(unpaired) + len(problems)} problems with the evaluation data ({hint})')
    base.raise_problems(list(unpaired.values()) + problems, header)
  base.raise_problems(problems)
  output_dir = base.expand(output_dir)
  check_output_folder(output_dir, [low_dir], 'low folder')
  check_output_folder(output_dir, [high_dir], 'ground-truth folder')
  job = EvaluationJob(low_dir, high_dir, output_dir, pairs,
                      unpaired if skip_unpaired else {}, skip_unpaired)
  check_targets(job.targets(), [item.low for item in pairs] + [item.high for item in pairs])
  return job


def model_fields(model: models.CRNet) -> dict[str, Any]:
  """The model config's fields (`configs/default.py`) of a CRNet module."""
  return model.config.to_dict()


def evaluate_pairs(enhancer: Enhancer, low_dir: str, high_dir: str, output_dir: str, *,
                   skip_unpaired: bool = False, progress: bool = True,
                   model: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """PSNR and SSIM of the enhanced low images against their ground truth, per image and mean.

  `plan_evaluation` (pairs by name, every check) then `run_evaluation` (what is written).
  """
  job = plan_evaluation(low_dir, high_dir, output_dir, skip_unpaired=skip_unpaired)
  return run_evaluation(enhancer, job, progress=progress, model=model)


def _scores(record: Mapping[str, Any]) -> str:
  return (f'PSNR {record["psnr"]:.2f} dB   SSIM {record["ssim"]:.4f}   (input '
          f'{record["input_psnr"]:.2f} dB, {record["input_ssim"]:.4f})')


def run_evaluation(enhancer: Enhancer, job: EvaluationJob, *, progress: bool = True,
                   model: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Scores the pairs of `job` (`plan_evaluation`) and writes into `job.output_dir`:

  - `enhanced/<name>.png`: each enhanced image (8 bits);
  - `figures/<name>.png`: low | enhanced | ground truth at full resolution, with the scores;
  - `contact_sheet.png`: one row per pair (the first `SHEET_MAX_ROWS`), low | enhanced |
    ground truth scaled to `SHEET_CELL` pixels, under a caption with the file name and scores;
  - `metrics.json`: `model` (`model`, e.g. `export.load_model_and_origin`'s origin, with
    `config`, the model fields), `data` (the folders, `skip_unpaired`), `num_images`, `mean`,
    `images` (per pair: name, file names, PSNR, SSIM, the input's own PSNR and SSIM), `scored`
    (the low files' names) and `skipped` (file and reason).

  PSNR and SSIM (`losses.psnr`, `losses.ssim`: scikit-image's definitions) are computed on the
  clipped output at full resolution, before the rounding to 8 bits of the saved image. Returns
  the content of metrics.json (less its `written_by` mark).
  """
  from crnet_jax import losses  # pylint: disable=g-import-not-at-top
  out = job.output_dir
  for folder in (ENHANCED_DIR, FIGURES_DIR):
    os.makedirs(os.path.join(out, folder), exist_ok=True)
  per_image, rows = [], []
  for item in track(job.pairs, 'evaluate', enabled=progress):
    low, high = image_io.load_image(item.low), image_io.load_image(item.high)
    if low.shape != high.shape:  # changed since `plan_evaluation`
      raise image_io.DataError(f'{item.low}: size {low.shape[:2]} differs from its ground truth '
                               f'{item.high} {high.shape[:2]}')
    enhanced = enhancer(low)
    record = {'name': item.name,
              'low': os.path.basename(item.low),
              'high': os.path.basename(item.high),
              'enhanced': f'{ENHANCED_DIR}/{item.name}.png',
              'psnr': float(losses.psnr(enhanced, high)),
              'ssim': float(losses.ssim(enhanced, high)),
              'input_psnr': float(losses.psnr(low, high)),
              'input_ssim': float(losses.ssim(low, high))}
    per_image.append(record)
    image_io.save_image(os.path.join(out, ENHANCED_DIR, item.name + '.png'), enhanced)
    scores = _scores(record)
    image_io.save_image(os.path.join(out, FIGURES_DIR, item.name + '.png'),
                        side_by_side(low, enhanced, high, record['low'], scores=scores))
    if len(rows) < SHEET_MAX_ROWS:
      rows.append(triptych_row(low, enhanced, high, record['low'], scores=scores))
  keys = ('psnr', 'ssim', 'input_psnr', 'input_ssim')
  mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
  result = {
      'model': {**(model or {}),
                'config': dict((model or {}).get('config') or model_fields(enhancer.model))},
      'data': {'low_dir': job.low_dir, 'high_dir': job.high_dir,
               'skip_unpaired': job.skip_unpaired},
      'num_images': len(per_image),
      'mean': mean,
      'images': per_image,
      'scored': [r['low'] for r in per_image],
      'skipped': [{'file': path, 'reason': reason} for path, reason in job.skipped.items()],
  }

  def write_metrics(tmp):
    with open(tmp, 'w') as f:
      json.dump({**result, 'written_by': image_io.OUTPUT_MARK}, f, indent=2)

  image_io.write_atomically(os.path.join(out, METRICS_FILE), write_metrics)
  shown = (f', the first {len(rows)} shown (all in {FIGURES_DIR}/)'
           if len(rows) < len(per_image) else '')
  title = (f'Mean over {len(per_image)} pairs{shown}: PSNR {mean["psnr"]:.2f} dB, SSIM '
           f'{mean["ssim"]:.4f} (input {mean["input_psnr"]:.2f} dB, {mean["input_ssim"]:.4f})')
  image_io.save_image(os.path.join(out, CONTACT_SHEET_FILE), contact_sheet(rows, title))
  return result
