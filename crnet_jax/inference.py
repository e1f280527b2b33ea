"""Enhance images of any size with a trained CRNet: padding, shape buckets and exact tiles.

`Enhancer(model, params)` maps an (H, W, 3) float image in [0, 1] to the enhanced image, clipped to
[0, 1]:

1. The image is padded at the bottom and right up to a multiple of `bucket` pixels, so that the
   jitted network compiles once per bucket, not once per image size, and the output is cropped
   back to exactly (H, W). The network gets the pixel mask of the real pixels, with which the
   padded image computes exactly what the unpadded one does (`layers.apply_mask`).
2. An image with more than `max_whole_pixels` pixels (after padding) goes through tiles, so that
   device memory stays bounded. CRNet is not purely local: every LMRG pass has a layer attention
   whose energy `E = F F^T` sums over the whole image. Tiling therefore runs pass by pass: for
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

`enhance_paths` runs an Enhancer over files and folders and writes PNGs; unreadable files are
listed and skipped. `evaluate_pairs` scores a paired folder and draws figures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from crnet_jax import image_io
from crnet_jax import models

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


@dataclasses.dataclass(frozen=True)
class TilingConfig:
  """How images are padded and tiled (`config.inference`)."""
  bucket: int = 32  # pad H and W up to a multiple of this (fewer compilations)
  max_whole_pixels: int = 1024 * 1024  # larger (padded) images go through tiles
  tile_size: int = 512  # tile side, context included
  tile_overlap: int = 0  # context pixels around a tile's core; 0 = one pass's receptive radius
  # Keep each pass's block outputs at full resolution between its two parts (about 1.3x the
  # compute of a whole-image pass) instead of recomputing them (about 2.3x, B x C fewer channels
  # of memory per pixel).
  cache_blocks: bool = True

  def __post_init__(self):
    for name in ('bucket', 'max_whole_pixels', 'tile_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'inference.{name} must be positive, got {getattr(self, name)}')
    if self.tile_overlap < 0:
      raise ValueError(f'inference.tile_overlap must be >= 0, got {self.tile_overlap}')

  @classmethod
  def from_config(cls, config: Any) -> 'TilingConfig':
    """From a `config.inference` ConfigDict (or any mapping with these keys)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: type(getattr(cls, k))(v) for k, v in dict(config).items() if k in fields})


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


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


class Enhancer:
  """A jitted CRNet forward pass over images of any size (see the module docstring)."""

  def __init__(self, model: models.CRNet, params: Any,
               tiling: TilingConfig = TilingConfig()):
    self.model = model
    self.params = jax.device_put(params)
    self.tiling = tiling
    self.halo = tiling.tile_overlap or models.receptive_radius(model)

    self._forward = jax.jit(functools.partial(models.enhance, model))
    self._tiled = jax.jit(self._tiled_forward)

  def forward(self, batch: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The clipped network output for an (n, H, W, 3) batch and its (n, H, W, 1) pixel mask."""
    if mask is None:
      mask = np.ones(batch.shape[:-1] + (1,), np.float32)
    return np.asarray(self._forward(self.params, jnp.asarray(batch, jnp.float32),
                                    jnp.asarray(mask, jnp.float32)))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """Enhances one (H, W, 3) image: pad to the bucket, whole or tiled, crop back."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'expected an (H, W, 3) image, got shape {image.shape}')
    h, w, _ = image.shape
    b = self.tiling.bucket
    pad = ((0, _round_up(h, b) - h), (0, _round_up(w, b) - w), (0, 0))
    padded = np.pad(image, pad)
    mask = np.pad(np.ones((h, w, 1), np.float32), pad)
    if padded.shape[0] * padded.shape[1] <= self.tiling.max_whole_pixels:
      out = self.forward(padded[None], mask[None])[0]
    else:
      out = self.tiled(padded, mask)
    return out[:h, :w]

  def tiled(self, image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Enhances an (H, W, 3) image with its (H, W, 1) pixel mask pass by pass over tiles."""
    if mask is None:
      mask = np.ones(image.shape[:-1] + (1,), np.float32)
    return np.asarray(self._tiled(self.params, jnp.asarray(image, jnp.float32)[None],
                                  jnp.asarray(mask, jnp.float32)[None]))[0]

  def _tiled_forward(self, params: Any, x: jax.Array, mask: jax.Array) -> jax.Array:
    """CRNet on a (1, H, W, 3) image, every pass computed tile by tile (module docstring)."""
    model = self.model
    _, height, width, _ = x.shape
    th, tw = min(self.tiling.tile_size, height), min(self.tiling.tile_size, width)
    tiles = np.array([(wy, wx, cy0 - wy, cy1 - wy, cx0 - wx, cx1 - wx)
                      for wy, cy0, cy1 in tile_windows(height, th, self.halo)
                      for wx, cx0, cx1 in tile_windows(width, tw, self.halo)], np.int32)

    def window(a, tile):
      return jax.lax.dynamic_slice(a, (0, tile[0], tile[1], 0), (1, th, tw, a.shape[-1]))

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

    group = models.lmrg_of(model)
    cached = self.tiling.cache_blocks
    num_cached = (model.num_blocks if model.layer_attention else 1) if cached else 0
    # One loop over the N x T passes (group p // T's parameters), so that XLA keeps one pass's
    # full-resolution buffers, not N x T of them, and compiles the pass once.
    stacked = jax.tree.map(lambda *a: jnp.stack(a),
                           *[params[f'lmrg_{i}'] for i in range(model.num_groups)])

    def one_pass(p, carry):
      y, h, c = carry
      variables = {'params': jax.tree.map(lambda a: a[p // model.recurrences], stacked)}
      first = p % model.recurrences == 0  # a group starts with a zero memory state
      h, c = (jnp.where(first, jnp.zeros_like(v), v) for v in (h, c))
      inputs = lambda tile: dict(
          x=window(x, tile), y=window(y, tile), state=(window(h, tile), window(c, tile)),
          mask=window(mask, tile))

      def part_one(carry, tile):
        # Head, memory and blocks; the energy over the core; with `cached`, the cores of the
        # block outputs and of the new memory state are kept at full resolution.
        blocks, state, energy = group.apply(variables, **inputs(tile), energy_mask=core_mask(tile))
        fulls, total = carry
        if cached:
          fulls = put(fulls, tuple(blocks) + tuple(state), tile)
        return (fulls, total if energy is None else total + energy), None

      fulls = tuple(jnp.zeros_like(h) for _ in range(num_cached + 2)) if cached else ()
      energy = (jnp.zeros((1, model.num_blocks, model.num_blocks), jnp.float32)
                if model.layer_attention else None)
      if model.layer_attention or cached:
        (fulls, energy), _ = jax.lax.scan(part_one, (fulls, energy), tiles)

      if cached:  # the layer attention, fuse and tail read the gathered block outputs
        def part_two(y_new, tile):
          out = group.apply(variables, window(x, tile), window(y, tile), None,
                            mask=window(mask, tile), energy=energy,
                            blocks=[window(f, tile) for f in fulls[:num_cached]])
          return put((y_new,), (out,), tile)[0], None

        y_new, _ = jax.lax.scan(part_two, y, tiles)
        return (y_new,) + fulls[num_cached:]

      def step(carry, tile):  # the whole pass again on each tile, with the summed energy
        out, state = group.apply(variables, **inputs(tile), energy=energy)
        return put(carry, (out,) + tuple(state), tile), None

      return jax.lax.scan(step, (y, h, c), tiles)[0]

    zeros = jnp.zeros((1, height, width, model.features), model.dtype)
    y, _, _ = jax.lax.fori_loop(0, model.num_groups * model.recurrences, one_pass,
                                (x, zeros, zeros))
    return jnp.clip(y, 0.0, 1.0)


def list_inputs(inputs: str | Sequence[str]) -> list[str]:
  """The image files named by `inputs`: files as given, folders' image files (by extension)."""
  paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
  files = []
  for path in paths:
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(path):
      found = sorted(os.path.join(path, n) for n in os.listdir(path)
                     if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith('.'))
      if not found:
        raise image_io.DataError(f'{path}: no image files ({", ".join(IMAGE_EXTENSIONS)})')
      files.extend(found)
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise image_io.MissingDataError(f'{path}: input not found')
  return files


def output_names(files: Iterable[str]) -> list[str]:
  """`name.png` for each input; an input whose stem repeats keeps its extension (`a.jpg.png`)."""
  files = list(files)
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  return [(s if stems.count(s) == 1 else os.path.basename(f)) + '.png'
          for f, s in zip(files, stems)]


def enhance_paths(enhancer: Enhancer, inputs: str | Sequence[str], output_dir: str, *,
                  progress: bool = True) -> dict[str, Any]:
  """Enhances every image named by `inputs` into `output_dir` as PNGs with the same names.

  Returns `{'written': [output paths], 'failed': {input path: reason}}`. A file that cannot be
  read is listed in `failed` (and in one warning) and the others are still processed.
  """
  files = list_inputs(inputs)
  os.makedirs(output_dir, exist_ok=True)
  written, failed = [], {}
  for path, name in zip(tqdm.tqdm(files, desc='enhance', unit='img', disable=not progress),
                        output_names(files)):
    try:
      image = image_io.load_image(path)
    except image_io.DataError as e:
      failed[path] = str(e)
      continue
    out_path = os.path.join(output_dir, name)
    image_io.save_image(out_path, enhancer(image))
    written.append(out_path)
  if failed:
    logging.warning('Skipped %d unreadable file(s):\n  %s', len(failed),
                    '\n  '.join(failed.values()))
  return {'written': written, 'failed': failed}


def _label(image: np.ndarray, text: str) -> np.ndarray:
  """`image` (uint8 HxWx3) with a title bar holding `text` above it."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  bar = Image.new('RGB', (image.shape[1], 18), (0, 0, 0))
  ImageDraw.Draw(bar).text((4, 3), text, fill=(255, 255, 255))
  return np.concatenate([np.asarray(bar), image], axis=0)


def side_by_side(low: np.ndarray, enhanced: np.ndarray, high: np.ndarray, title: str,
                 gap: int = 4) -> np.ndarray:
  """One uint8 figure: low | enhanced | ground truth, with `title` above."""
  sep = np.full((low.shape[0], gap, 3), 255, np.uint8)
  row = np.concatenate([image_io.to_uint8(low), sep, image_io.to_uint8(enhanced), sep,
                        image_io.to_uint8(high)], axis=1)
  return _label(row, title)


def contact_sheet(figures: Sequence[np.ndarray], width: int = 900, columns: int = 2) -> np.ndarray:
  """The figures scaled to a common width and laid out in a grid (uint8)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  cell = width // columns
  thumbs = []
  for fig in figures:
    scale = cell / fig.shape[1]
    thumbs.append(np.asarray(Image.fromarray(fig).resize(
        (cell, max(1, round(fig.shape[0] * scale))), Image.BILINEAR)))
  rows = []
  for i in range(0, len(thumbs), columns):
    group = thumbs[i:i + columns]
    height = max(t.shape[0] for t in group)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255)
              for t in group]
    padded += [np.full((height, cell, 3), 255, np.uint8)] * (columns - len(group))
    rows.append(np.concatenate(padded, axis=1))
  return np.concatenate(rows, axis=0)


def evaluate_pairs(enhancer: Enhancer, low_dir: str, high_dir: str, output_dir: str, *,
                   progress: bool = True) -> dict[str, Any]:
  """PSNR and SSIM of the enhanced low images against their ground truth, per image and mean.

  Pairs are matched by file name (`low_dir/x.png` with `high_dir/x.png`). Writes
  `output_dir/metrics.json`, a side-by-side figure per image (`figures/<name>.png`: low |
  enhanced | ground truth, PSNR in the title) and `contact_sheet.png`. Metrics are computed on
  the clipped output at full resolution with `losses.psnr` and `losses.ssim` (the definitions of
  scikit-image). Returns the metrics dict.
  """
  from crnet_jax import losses  # pylint: disable=g-import-not-at-top
  from crnet_jax.datasets import base  # pylint: disable=g-import-not-at-top
  items = base.pair_files(base.list_image_files(low_dir, what='low folder'),
                          base.list_image_files(high_dir, what='ground-truth folder'))
  os.makedirs(os.path.join(output_dir, 'figures'), exist_ok=True)
  per_image, figures = [], []
  for item in tqdm.tqdm(items, desc='evaluate', unit='img', disable=not progress):
    low, high = image_io.load_image(item.low), image_io.load_image(item.high)
    if low.shape != high.shape:
      raise image_io.DataError(f'{item.low}: size {low.shape[:2]} differs from its ground truth '
                               f'{item.high} {high.shape[:2]}')
    enhanced = enhancer(low)
    record = {'name': item.name,
              'psnr': float(losses.psnr(enhanced, high)),
              'ssim': float(losses.ssim(enhanced, high)),
              'input_psnr': float(losses.psnr(low, high)),
              'input_ssim': float(losses.ssim(low, high))}
    per_image.append(record)
    figure = side_by_side(low, enhanced, high, f'{item.name}: PSNR {record["psnr"]:.2f} dB, '
                          f'SSIM {record["ssim"]:.4f} (input {record["input_psnr"]:.2f} dB)')
    image_io.save_image(os.path.join(output_dir, 'figures', item.name + '.png'), figure / 255.0)
    figures.append(figure)
  keys = ('psnr', 'ssim', 'input_psnr', 'input_ssim')
  result = {'num_images': len(per_image),
            'mean': {k: float(np.mean([r[k] for r in per_image])) for k in keys},
            'images': per_image}
  with open(os.path.join(output_dir, 'metrics.json'), 'w') as f:
    json.dump(result, f, indent=2)
  image_io.save_image(os.path.join(output_dir, 'contact_sheet.png'),
                      contact_sheet(figures) / 255.0)
  return result
