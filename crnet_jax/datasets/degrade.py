"""A seeded low-light degradation: clean photo -> (low, normal) pair, in pure numpy.

Modelled on LOL's synthetic set (Wei et al. 2018 darkened raw photos by adjusting the luminance
and adding noise). For an sRGB image `x` in [0, 1], `degrade` does, per image:

1. Linearise: `lin = srgb_to_linear(x)` (the exact sRGB transfer curve).
2. Darken the luminance `Y = 0.2126 R + 0.7152 G + 0.0722 B` (linear) with an exposure factor
   `e ~ U[exposure_min, exposure_max]` and a gamma `g ~ U[gamma_min, gamma_max]` (g > 1 darkens
   the mid-tones more than the highlights): `Y' = e * Y ** g`. The three channels are scaled by
   `Y' / Y`, so hue and saturation are kept.
3. Colour cast: channel gains `1 + U[-color_cast, color_cast]`, normalised to keep the
   luminance (a dim scene's white balance is rarely exact).
4. Sensor noise in the linear domain, signal dependent (Poisson-Gaussian, heteroscedastic
   approximation): `lin' = lin + sqrt(s * lin + r ** 2) * N(0, 1)` with shot noise
   `s ~ U[shot_noise_min, shot_noise_max]` and read noise `r ~ U[read_noise_min, read_noise_max]`.
5. Clip to [0, 1] and go back to sRGB. The builders then round to uint8 (quantisation).

The defaults (`DegradationParams()`, mirrored in `configs/default.py` `config.data.synthetic`)
give a mean pixel value close to that of LOL's real low-light test images (about 0.06, see
`experiments/brightness.py` and `docs/data.md`).

Everything here is a pure function of its inputs: the same image, parameters and seed give the
same output on every machine.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Union

import numpy as np

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float64)


@dataclasses.dataclass(frozen=True)
class DegradationParams:
  """Ranges of the per-image degradation; each image draws its values uniformly in them."""
  exposure_min: float = 0.025
  exposure_max: float = 0.07
  gamma_min: float = 1.1
  gamma_max: float = 1.5
  shot_noise_min: float = 1e-4
  shot_noise_max: float = 1e-3
  read_noise_min: float = 5e-4
  read_noise_max: float = 2e-3
  color_cast: float = 0.05

  def __post_init__(self):
    for lo, hi in (('exposure_min', 'exposure_max'), ('gamma_min', 'gamma_max'),
                   ('shot_noise_min', 'shot_noise_max'), ('read_noise_min', 'read_noise_max')):
      a, b = getattr(self, lo), getattr(self, hi)
      if not 0 <= a <= b:
        raise ValueError(f'DegradationParams: need 0 <= {lo} <= {hi}, got {a} and {b}')
    if self.exposure_max > 1 or self.gamma_min <= 0:
      raise ValueError('DegradationParams: need exposure_max <= 1 and gamma_min > 0')
    if not 0 <= self.color_cast < 1:
      raise ValueError(f'DegradationParams: need 0 <= color_cast < 1, got {self.color_cast}')

  @classmethod
  def from_mapping(cls, m: Mapping[str, Any]) -> 'DegradationParams':
    """Builds the parameters from a dict / ConfigDict, ignoring keys that are not fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: float(v) for k, v in dict(m).items() if k in names})


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
  """The sRGB electro-optical transfer function, [0, 1] -> [0, 1]."""
  x = np.asarray(x, np.float64)
  return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
  """The inverse of `srgb_to_linear`, [0, 1] -> [0, 1]."""
  x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
  return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def image_seed(seed: int, name: str) -> np.random.Generator:
  """The generator of one image: depends only on the global seed and the image's name."""
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode('utf-8'))])


def sample(params: DegradationParams, rng: np.random.Generator) -> dict[str, Any]:
  """Draws one image's degradation values (exposure, gamma, gains, shot, read)."""
  exposure = rng.uniform(params.exposure_min, params.exposure_max)
  gamma = rng.uniform(params.gamma_min, params.gamma_max)
  gains = 1.0 + rng.uniform(-params.color_cast, params.color_cast, size=3)
  gains = gains / float(_LUMA @ gains)
  shot = rng.uniform(params.shot_noise_min, params.shot_noise_max)
  read = rng.uniform(params.read_noise_min, params.read_noise_max)
  return dict(exposure=exposure, gamma=gamma, gains=gains, shot=shot, read=read)


def degrade(image: np.ndarray,
            rng: Union[np.random.Generator, int],
            params: DegradationParams | None = None) -> np.ndarray:
  """Darkens a clean sRGB image into a low-light one (steps in the module docstring).

  Args:
    image: float (H, W, 3) in [0, 1] (uint8 is accepted and divided by 255).
    rng: a numpy Generator, or an int seed.
    params: the ranges; `DegradationParams()` when None.

  Returns:
    The low-light image, float32 (H, W, 3) in [0, 1].
  """
  params = params or DegradationParams()
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  x = np.asarray(image)
  if x.dtype == np.uint8:
    x = x.astype(np.float64) / 255.0
  if x.ndim != 3 or x.shape[-1] != 3:
    raise ValueError(f'degrade: expected an (H, W, 3) image, got {x.shape}')
  v = sample(params, rng)
  lin = srgb_to_linear(np.clip(x, 0.0, 1.0))
  y = lin @ _LUMA
  y_low = v['exposure'] * y ** v['gamma']
  ratio = np.where(y > 1e-6, y_low / np.maximum(y, 1e-6), v['exposure'])
  lin = lin * ratio[..., None] * v['gains']
  std = np.sqrt(v['shot'] * np.clip(lin, 0.0, None) + v['read'] ** 2)
  lin = lin + std * rng.standard_normal(lin.shape)
  return linear_to_srgb(lin).astype(np.float32)
