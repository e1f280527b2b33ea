"""Image decoding and encoding shared by the data pipeline, evaluation and inference.

`load_image(path)` returns a float32 array of shape (H, W, 3) with values in [0, 1]. The rules:

- Formats: anything Pillow decodes (PNG, JPEG, BMP, TIFF, WebP, GIF first frame, ...). The file
  is decoded fully (`img.load()`), so a truncated or corrupt file fails here, not later.
- EXIF orientation is honoured (`PIL.ImageOps.exif_transpose`): the array is the image as a
  viewer shows it.
- Grayscale (`L`, `1`, 16-bit `I;16`, 32-bit `I`, float `F`) is replicated to three channels.
- Alpha (`RGBA`, `LA`, `PA`, palette with transparency) is dropped: the colour channels are kept
  as stored and NOT composited over a background (compositing over white would brighten a
  low-light image; over black would darken its edges).
- Palette (`P`) images are converted to RGB through their palette. CMYK, YCbCr, LAB and HSV are
  converted to RGB by Pillow.
- Bit depth: 8-bit channels are divided by 255, 16-bit ones by 65535 (16-bit grayscale PNG/TIFF,
  and 16-bit RGB TIFF, which is read with `tifffile` for full precision). 32-bit integer
  grayscale (`I`, what Pillow uses for some 16-bit files) is taken as 16-bit (divided by 65535,
  clipped). Float images (`F`) are clipped to [0, 1]. Pillow itself reduces 16-bit RGB PNG to 8
  bits per channel; such files are read at that precision.

Size limit: Pillow refuses images over 2 x `PIL.Image.MAX_IMAGE_PIXELS` (178,956,970 pixels) as
possible decompression bombs and warns above 89,478,485; its warning is silenced here and such
files are handled deliberately: `load_image(path, max_pixels=N)` (what the dataset builders use,
with `max_image_pixels()`: $CRNET_MAX_IMAGE_PIXELS, default 89,478,485, e.g. 10000x10000 is over)
refuses a larger image with a `DataError` naming the file, before decoding it; without
`max_pixels` (inference) images up to Pillow's hard limit decode, and larger ones are a
`DataError`. A limit above Pillow's raises Pillow's limit with it.

Every failure is a `DataError` (a `ValueError`) whose message starts with the file's path and
says what is wrong; a missing file or folder is a `MissingDataError` (also a
`FileNotFoundError`).

`load_image_native(path)` is the same image before the division: uint8 for 8-bit files, uint16
for 16-bit ones (float32 only for float and 32-bit integer files), a quarter or half of the
float32 image's memory; inference keeps large images so and converts one tile at a time.

`save_image(path, image)` clips a float image to [0, 1], rounds it to uint8 (a uint8 image is
written as it is) and writes it (PNG unless the path ends in .jpg/.jpeg/.bmp/.tif/.tiff/.webp),
creating parent folders. The file is written under a temporary hidden name and renamed, so it is
complete or absent, and it carries the mark `OUTPUT_MARK` (PNG text / EXIF "Software"), by which
`is_own_output` tells this project's earlier outputs from a user's files.

`IMAGE_EXTENSIONS` is the one list of image file extensions of the project.
"""

from __future__ import annotations

import io
import os
from typing import Union
import warnings

import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps
from PIL import PngImagePlugin
from PIL import UnidentifiedImageError

PathLike = Union[str, os.PathLike]

# Never accept truncated files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Large images are handled by `max_pixels` / DataError (module docstring), not by a warning.
warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.gif')
OUTPUT_MARK = 'crnet-jax'  # the "Software" tag of every image this project writes
_EXIF_SOFTWARE = 0x0131
MAX_PIXELS_ENV = 'CRNET_MAX_IMAGE_PIXELS'
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb warning threshold


def max_image_pixels() -> int:
  """The largest training/evaluation image in pixels: $CRNET_MAX_IMAGE_PIXELS or 89,478,485."""
  value = os.environ.get(MAX_PIXELS_ENV, '').strip()
  if not value:
    return DEFAULT_MAX_PIXELS
  try:
    limit = int(value)
  except ValueError:
    limit = 0
  if limit < 1:
    raise DataError(f'${MAX_PIXELS_ENV}={value!r}: expected a positive number of pixels')
  return limit

_SAVE_FORMATS = {
    '.png': 'PNG',
    '.jpg': 'JPEG',
    '.jpeg': 'JPEG',
    '.bmp': 'BMP',
    '.tif': 'TIFF',
    '.tiff': 'TIFF',
    '.webp': 'WEBP',
}


class DataError(ValueError):
  """A problem with the input data (a file, a folder or a pairing), named in the message."""


class MissingDataError(DataError, FileNotFoundError):
  """A file or folder that should exist does not."""


def _open_decoded(path: PathLike, max_pixels: int | None = None, limit_hint: str | None = None
                  ) -> tuple[Image.Image, Image.Image]:
  """Opens and fully decodes `path` with Pillow: (as stored, with the orientation applied)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MissingDataError(f'{path}: file not found')
  if os.path.isdir(path):
    raise DataError(f'{path}: is a folder, not an image file')
  if max_pixels and Image.MAX_IMAGE_PIXELS and max_pixels > Image.MAX_IMAGE_PIXELS:
    Image.MAX_IMAGE_PIXELS = int(max_pixels)  # never below ours: our check below decides
  try:
    img = Image.open(path)
  except UnidentifiedImageError:
    raise DataError(f'{path}: not an image file (Pillow cannot identify its format)') from None
  except Image.DecompressionBombError as e:
    raise DataError(f'{path}: image too large to decode safely ({e}); downscale it') from e
  except OSError as e:
    raise DataError(f'{path}: cannot open image ({e})') from e
  w, h = img.size
  if max_pixels and w * h > max_pixels:
    img.close()
    hint = limit_hint or (f'for training data (Pillow\'s decompression-bomb threshold); '
                          f'downscale it, or allow more with ${MAX_PIXELS_ENV}')
    raise DataError(f'{path}: image is {w}x{h} (WxH) = {w * h:,} pixels, more than the limit of '
                    f'{max_pixels:,} {hint}')
  try:
    img.load()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{path}: corrupt or truncated image ({type(e).__name__}: {e})') from e
  try:
    transposed = ImageOps.exif_transpose(img)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{path}: cannot apply the EXIF orientation ({e})') from e
  return img, (transposed if transposed is not None else img)


def _is_16bit_rgb_tiff(img: Image.Image) -> bool:
  if img.format != 'TIFF':
    return False
  try:
    bits = img.tag_v2.get(258)  # BitsPerSample
  except AttributeError:
    return False
  if bits is None:
    return False
  bits = bits if isinstance(bits, tuple) else (bits,)
  return len(bits) >= 3 and max(bits) == 16


def _read_tiff_16bit(path: str, img: Image.Image) -> np.ndarray | None:
  """Reads a 16-bit RGB TIFF at full precision (uint16) with tifffile (None when unavailable)."""
  try:
    import tifffile  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    arr = tifffile.imread(path)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{path}: corrupt 16-bit TIFF ({e})') from e
  if arr.ndim != 3 or arr.shape[-1] < 3 or arr.dtype != np.uint16:
    return None
  # Apply the EXIF orientation the same way Pillow did for the 8-bit view.
  orientation = img.getexif().get(0x0112, 1)
  return _orient(arr[..., :3], orientation)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation tag (1-8) to an HxWxC array."""
  ops = {
      2: lambda a: a[:, ::-1],
      3: lambda a: a[::-1, ::-1],
      4: lambda a: a[::-1],
      5: lambda a: np.swapaxes(a, 0, 1),
      6: lambda a: np.rot90(a, -1),
      7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
      8: lambda a: np.rot90(a, 1),
  }
  if orientation in ops:
    arr = ops[orientation](arr)
  return np.ascontiguousarray(arr)


def _to_native_rgb(img: Image.Image, path: str) -> np.ndarray:
  """A decoded Pillow image as HxWx3 by the module's rules, before the division to [0, 1].

  uint8 for 8-bit channels, uint16 for 16-bit grayscale, float32 (already in [0, 1]) for 32-bit
  integer and float images.
  """
  mode = img.mode
  if mode in ('P', 'PA'):
    img = img.convert('RGBA' if ('transparency' in img.info or mode == 'PA') else 'RGB')
    mode = img.mode
  if mode == '1':
    img = img.convert('L')
    mode = 'L'
  if mode in ('RGB', 'RGBA', 'RGBX', 'L', 'LA'):
    arr = np.asarray(img, dtype=np.uint8)
  elif mode.startswith('I;16'):
    arr = np.asarray(img).astype(np.uint16)
  elif mode == 'I':
    arr = np.clip(np.asarray(img).astype(np.float64) / 65535.0, 0.0, 1.0).astype(np.float32)
  elif mode == 'F':
    arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
  else:
    try:
      img = img.convert('RGB')
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f'{path}: unsupported image mode {mode!r} ({e})') from e
    arr = np.asarray(img, dtype=np.uint8)
  if arr.ndim == 2:
    arr = arr[..., None]
  channels = arr.shape[-1]
  if channels in (1, 2):  # gray or gray + alpha
    arr = np.repeat(arr[..., :1], 3, axis=-1)
  elif channels >= 3:
    arr = arr[..., :3]
  return np.ascontiguousarray(arr)


def to_float(image: np.ndarray) -> np.ndarray:
  """A native image (uint8 / 255, uint16 / 65535, float as is) as float32 in [0, 1]."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image.astype(np.float32) / 255.0
  if image.dtype == np.uint16:
    return image.astype(np.float32) / 65535.0
  return np.asarray(image, np.float32)


def load_image_native(path: PathLike, max_pixels: int | None = None,
                      limit_hint: str | None = None) -> np.ndarray:
  """The image of `load_image` before the division to [0, 1]: uint8, uint16 or float32 (H, W, 3).

  `to_float` of it is exactly `load_image(path)`. `limit_hint` ends the message of a refusal by
  `max_pixels` (what the limit is and how to change it).
  """
  path = os.fspath(path)
  stored, img = _open_decoded(path, max_pixels, limit_hint)
  arr = None
  if _is_16bit_rgb_tiff(stored):
    arr = _read_tiff_16bit(path, stored)
  if arr is None:
    arr = _to_native_rgb(img, path)
  img.close()
  stored.close()
  if arr.shape[0] < 1 or arr.shape[1] < 1:
    raise DataError(f'{path}: empty image ({arr.shape[0]}x{arr.shape[1]})')
  return arr


def load_image(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
  """Decodes an image file to float32 (H, W, 3) in [0, 1] (rules in the module docstring).

  Args:
    path: the file.
    max_pixels: refuse (DataError, before decoding) images with more pixels; None: Pillow's
      limit only.

  Returns:
    The image, float32, shape (H, W, 3), values in [0, 1].

  Raises:
    MissingDataError: the file does not exist.
    DataError: the file is not an image, is corrupt or truncated, or has an unsupported mode.
  """
  return to_float(load_image_native(path, max_pixels))


def load_image_uint8(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
  """Like `load_image`, rounded to uint8 (H, W, 3): what the dataset builders store."""
  return to_uint8(load_image(path, max_pixels))


def image_size(path: PathLike) -> tuple[int, int]:
  """(height, width) of an image as `load_image` returns it (after the EXIF orientation)."""
  _, img = _open_decoded(path)
  return img.height, img.width


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Clips a float image to [0, 1] and rounds it to uint8."""
  return np.round(np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
  """Encodes an (H, W, 3) uint8 array (or float in [0, 1]) as PNG bytes."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = to_uint8(image)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=compress_level)
  return buf.getvalue()


def is_own_output(path: PathLike) -> bool:
  """Whether the image at `path` was written by `save_image` (it carries `OUTPUT_MARK`)."""
  try:
    with Image.open(os.fspath(path)) as img:
      if img.info.get('Software') == OUTPUT_MARK:
        return True
      return img.getexif().get(_EXIF_SOFTWARE) == OUTPUT_MARK
  except Exception:  # pylint: disable=broad-except
    return False


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is at least `n` (an image side padded to it)."""
  return -(-n // multiple) * multiple


def write_atomically(path: PathLike, write) -> None:
  """Calls `write(tmp_path)` for a hidden temporary file next to `path`, then renames it."""
  path = os.fspath(path)
  parent, name = os.path.split(path)
  tmp = os.path.join(parent, f'.{name}.tmp-{os.getpid()}')
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.remove(tmp)


def save_image(path: PathLike, image: np.ndarray) -> None:
  """Writes a float image in [0, 1] (H, W, 3), (H, W, 1) or (H, W) as an 8-bit file.

  Values are clipped to [0, 1] and rounded to uint8 (uint8 images are written as they are). The
  format follows the extension (.png, .jpg/.jpeg, .bmp, .tif/.tiff, .webp); any other extension
  is written as PNG. The file appears complete or not at all (`write_atomically`) and carries
  `OUTPUT_MARK` (not in BMP, which has no place for it).

  Args:
    path: the output file; parent folders are created.
    image: the image.
  """
  path = os.fspath(path)
  arr = np.asarray(image)
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
    raise ValueError(f'save_image({path}): expected (H, W), (H, W, 1) or (H, W, 3), got '
                     f'{arr.shape}')
  if arr.ndim == 3 and arr.shape[-1] == 4:
    arr = arr[..., :3]
  arr = to_uint8(arr) if arr.dtype != np.uint8 else arr
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  fmt = _SAVE_FORMATS.get(os.path.splitext(path)[1].lower(), 'PNG')
  kwargs = {}
  if fmt == 'PNG':
    info = PngImagePlugin.PngInfo()
    info.add_text('Software', OUTPUT_MARK)
    kwargs['pnginfo'] = info
  elif fmt != 'BMP':
    exif = Image.Exif()
    exif[_EXIF_SOFTWARE] = OUTPUT_MARK
    kwargs['exif'] = exif
  image = Image.fromarray(arr)
  write_atomically(path, lambda tmp: image.save(tmp, format=fmt, **kwargs))
