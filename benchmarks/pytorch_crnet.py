"""CRNet and its train steps in PyTorch: the PyTorch baseline of the benchmarks.

This module is a line-by-line twin of `crnet_jax.layers`, `crnet_jax.models` and `crnet_jax.losses`
(as `docs/model.md` describes them), written so that the benchmarks can time the same
network and the same train steps in PyTorch. Nothing in training or testing needs it; torch is a
benchmark-only dependency (`benchmarks/requirements.txt`).

- `create_model(config.model)` builds `CRNet` from the same ConfigDict fields as
  `crnet_jax.models.create_model`. The `dtype` field is not the model's here: pass
  `bf16=(config.model.dtype == 'bfloat16')` to the steps, which then run the forward pass under
  `torch.autocast(dtype=torch.bfloat16)` (parameters stay float32, as in flax).
- `load_flax_params(torch_model, flax_params)` copies the flax parameter pytree
  (`model.init(...)['params']`) into the torch model, so both compute the same function.
- `ssim`, `progressive_enhancement_loss`, `multi_consistency_loss`, `semi_supervised_loss`: the
  losses of `crnet_jax.losses`, always computed in float32.
- `make_supervised_step(model, opt)`, `make_mcmt_step(student, teacher, opt)`: one optimiser step
  of CRNet (L_PE) and of the Multi-Consistency Mean Teacher (L_SSL, then the EMA teacher update),
  optionally under bf16 autocast and `torch.compile`.

Tensors are NCHW inside (PyTorch's convention; the code also runs on `torch.channels_last`
tensors). `to_nchw`, `to_nhwc` and `apply_nhwc` convert from and to the NHWC numpy arrays of the JAX
side. Parameter names follow the flax ones: `lmrg_{i}.head`, `lmrg_{i}.memory.gates`,
`lmrg_{i}.block_{b}.mc1`, `lmrg_{i}.layer_attention.{gamma,fuse}`, `lmrg_{i}.tail`.
"""

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
# The memory state (h, c). ConvGRU and NoMemory carry c along unchanged.
MemoryState = tuple[Tensor, Tensor]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    'relu': F.relu,
    'gelu': lambda x: F.gelu(x, approximate='tanh'),  # flax's nn.gelu is the tanh approximation
    'silu': F.silu,
    'leaky_relu': lambda x: F.leaky_relu(x, 0.01),
    'identity': lambda x: x,
}

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def get_activation(name: str) -> Callable[[Tensor], Tensor]:
  if name not in ACTIVATIONS:
    raise ValueError(f'model.activation: unknown activation {name!r}; '
                     f'choose one of {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def conv3x3(in_features: int, out_features: int) -> nn.Conv2d:
  """A 3x3, stride 1, SAME-padded convolution with bias, initialised as crnet_jax's layers.

  The kernel is drawn from U(+-1/sqrt(fan_in)) (PyTorch's own default for conv kernels, which
  crnet_jax uses as `variance_scaling(1/3, 'fan_in', 'uniform')`); the bias starts at zero.
  """
  conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1, bias=True)
  bound = 1.0 / math.sqrt(in_features * 9)
  with torch.no_grad():
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)
  return conv


class MaskedConv(nn.Module):
  """Masked (gated) convolution, the MC module: `MC(x) = act(conv_f(x)) * sigmoid(conv_m(x))`.

  With `fused=True` the feature and mask convs are one `nn.Conv2d` with 2x the output channels
  (`conv`, feature channels first, as flax's fused path concatenates the kernels); otherwise two
  convs, `feature` and `mask`.
  """

  def __init__(self, in_features: int, features: int, activation: str = 'relu',
               fused: bool = True):
    super().__init__()
    self.features = features
    self.fused = fused
    self.act = get_activation(activation)
    if fused:
      self.conv = conv3x3(in_features, 2 * features)
    else:
      self.feature = conv3x3(in_features, features)
      self.mask = conv3x3(in_features, features)

  def forward(self, x: Tensor) -> Tensor:
    if self.fused:
      feature, mask = torch.chunk(self.conv(x), 2, dim=1)
    else:
      feature, mask = self.feature(x), self.mask(x)
    return self.act(feature) * torch.sigmoid(mask)


class PlainConv(nn.Module):
  """`act(conv(x))`: the convolution that replaces MC in the RN row of Table 2."""

  def __init__(self, in_features: int, features: int, activation: str = 'relu',
               fused: bool = True):
    del fused  # unused; keeps the constructor interchangeable with MaskedConv
    super().__init__()
    self.act = get_activation(activation)
    self.conv = conv3x3(in_features, features)

  def forward(self, x: Tensor) -> Tensor:
    return self.act(self.conv(x))


class MaskedResidualBlock(nn.Module):
  """Masked residual block: `MRB(x) = x + MC2(MC1(x))`, both MC at C -> C (plain if not masked)."""

  def __init__(self, features: int, activation: str = 'relu', masked: bool = True,
               fused: bool = True):
    super().__init__()
    conv_cls = MaskedConv if masked else PlainConv
    self.mc1 = conv_cls(features, features, activation, fused)
    self.mc2 = conv_cls(features, features, activation, fused)

  def forward(self, x: Tensor) -> Tensor:
    return x + self.mc2(self.mc1(x))


class ConvLSTM(nn.Module):
  """Convolutional LSTM cell: gates i, f, g, o from one conv over concat(x, h) (2C -> 4C).

  `c' = sigmoid(f) * c + sigmoid(i) * tanh(g)`, `h' = sigmoid(o) * tanh(c')`.
  """

  def __init__(self, features: int):
    super().__init__()
    self.gates = conv3x3(2 * features, 4 * features)

  def forward(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
    h, c = state
    i, f, g, o = torch.chunk(self.gates(torch.cat([x, h.to(x.dtype)], dim=1)), 4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


class ConvGRU(nn.Module):
  """Convolutional GRU cell (memory ablation); the cell state c is carried along unchanged.

  `z, r = sigmoid(conv([x, h]))` (2C -> 2C), `n = tanh(conv([x, r * h]))` (2C -> C),
  `h' = (1 - z) * n + z * h`.
  """

  def __init__(self, features: int):
    super().__init__()
    self.gates = conv3x3(2 * features, 2 * features)
    self.candidate = conv3x3(2 * features, features)

  def forward(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
    h, c = state
    h = h.to(x.dtype)
    z, r = torch.chunk(torch.sigmoid(self.gates(torch.cat([x, h], dim=1))), 2, dim=1)
    n = torch.tanh(self.candidate(torch.cat([x, r * h], dim=1)))
    h = (1 - z) * n + z * h
    return h, (h, c)


class NoMemory(nn.Module):
  """No memory module (ablation): the features pass through, the state is unchanged."""

  def __init__(self, features: int):
    del features
    super().__init__()

  def forward(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
    return x, state


MEMORY_MODULES: dict[str, type[nn.Module]] = {
    'convlstm': ConvLSTM, 'convgru': ConvGRU, 'none': NoMemory}


class LayerAttention(nn.Module):
  """Layer attention module (LAM) of HAN over the B block outputs of one LMRG pass.

  `F: (batch, B, C*H*W)`; `E = F F^T`; `A = softmax(rowmax(E) - E)`; `out = gamma * (A F) + F`,
  reshaped to (batch, B*C, H, W) (channel b*C + c, the same order as the flax code's
  (batch, H, W, B*C)) and fused by a 3x3 conv B*C -> C. E and the softmax are computed in float32,
  outside autocast. `energy='mean'` divides E by the C*H*W products it sums (the flax
  `model.layer_attention_energy`).
  """

  def __init__(self, features: int, num_layers: int, energy: str = 'sum'):
    super().__init__()
    if energy not in ('sum', 'mean'):
      raise ValueError(f"model.layer_attention_energy: {energy!r} is not one of ['sum', 'mean']")
    self.energy = energy
    self.gamma = nn.Parameter(torch.zeros(()))
    self.fuse = conv3x3(num_layers * features, features)

  def forward(self, layers: Tensor) -> Tensor:
    """`layers`: (batch, B, C, H, W) -> (batch, features, H, W)."""
    batch, num_layers, channels, height, width = layers.shape
    flat = layers.reshape(batch, num_layers, -1)
    with torch.autocast(device_type=layers.device.type, enabled=False):
      flat32 = flat.float()
      energy = torch.bmm(flat32, flat32.transpose(1, 2))
      if self.energy == 'mean':
        energy = energy / flat.shape[-1]
      energy = energy.amax(dim=-1, keepdim=True) - energy
      attention = torch.softmax(energy, dim=-1)
    attended = torch.bmm(attention.to(flat.dtype), flat)
    out = self.gamma.to(attended.dtype) * attended + flat.to(attended.dtype)
    return self.fuse(out.reshape(batch, num_layers * channels, height, width))


class LMRG(nn.Module):
  """One pass of a layer-attentive masked residual group.

  ```
  z  = MC_head(concat(x, y))        # 6 -> C
  h, state = memory(z, state)       # C -> C
  f_1..f_B = MRB_1..MRB_B chained from h
  u  = LAM(f_1..f_B)                # B*C -> C   (without layer attention: u = f_B)
  y' = x + MC_tail(u)               # C -> 3, identity activation (skip='previous': y + ...)
  ```
  """

  def __init__(self, features: int = 32, num_blocks: int = 5, activation: str = 'relu',
               memory: str = 'convlstm', skip: str = 'input', masked_conv: bool = True,
               layer_attention: bool = True, fused_masked_conv: bool = True, channels: int = 3,
               layer_attention_energy: str = 'sum'):
    super().__init__()
    self.features = features
    self.num_blocks = num_blocks
    self.skip = skip
    conv_cls = MaskedConv if masked_conv else PlainConv
    self.head = conv_cls(2 * channels, features, activation, fused_masked_conv)
    self.memory = MEMORY_MODULES[memory](features)
    for b in range(num_blocks):
      self.add_module(f'block_{b}', MaskedResidualBlock(features, activation, masked_conv,
                                                        fused_masked_conv))
    self.layer_attention = (LayerAttention(features, num_blocks, layer_attention_energy)
                            if layer_attention else None)
    self.tail = conv_cls(features, channels, 'identity', fused_masked_conv)

  def forward(self, x: Tensor, y: Tensor,
              state: MemoryState | None) -> tuple[Tensor, MemoryState]:
    """`state=None` starts the memory at zeros (shaped and typed like the head's output)."""
    z = self.head(torch.cat([x, y], dim=1))
    if state is None:
      zeros = torch.zeros_like(z)
      state = (zeros, zeros)
    h, state = self.memory(z, state)
    block_outputs = []
    for b in range(self.num_blocks):
      h = getattr(self, f'block_{b}')(h)
      block_outputs.append(h)
    u = self.layer_attention(torch.stack(block_outputs, dim=1)) if self.layer_attention else h
    residual = self.tail(u)
    base = x if self.skip == 'input' else y
    return base.float() + residual.float(), state


class CRNet(nn.Module):
  """The Comprehensive Residual Network: N LMRGs, each unrolled T times with shared weights.

  `forward(x)` takes NCHW images and returns `(final, intermediates)`: the last stage and the list
  of the N-1 earlier stages, float32, not clipped.
  """

  def __init__(self, features: int = 32, num_groups: int = 4, recurrences: int = 2,
               num_blocks: int = 5, activation: str = 'relu', memory: str = 'convlstm',
               skip: str = 'input', masked_conv: bool = True, layer_attention: bool = True,
               fused_masked_conv: bool = True, channels: int = 3,
               layer_attention_energy: str = 'sum'):
    super().__init__()
    self.num_groups = num_groups
    self.recurrences = recurrences
    for i in range(num_groups):
      self.add_module(f'lmrg_{i}', LMRG(features, num_blocks, activation, memory, skip,
                                        masked_conv, layer_attention, fused_masked_conv, channels,
                                        layer_attention_energy))

  def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    x = x.float()
    y = x
    stages = []
    for i in range(self.num_groups):
      group = getattr(self, f'lmrg_{i}')
      state = None
      for _ in range(self.recurrences):
        y, state = group(x, y, state)
      stages.append(y)
    return stages[-1], stages[:-1]


def create_model(model_config: Mapping[str, Any]) -> CRNet:
  """Builds CRNet from `config.model` (the fields of `configs/default.py`; `dtype` is ignored)."""
  for key, choices in (('activation', ACTIVATIONS), ('memory', MEMORY_MODULES),
                       ('skip', ('input', 'previous'))):
    if model_config[key] not in choices:
      raise ValueError(f'model.{key}: {model_config[key]!r} is not one of {sorted(choices)}')
  return CRNet(
      features=model_config['features'],
      num_groups=model_config['num_groups'],
      recurrences=model_config['recurrences'],
      num_blocks=model_config['num_blocks'],
      activation=model_config['activation'],
      memory=model_config['memory'],
      skip=model_config['skip'],
      masked_conv=model_config['masked_conv'],
      layer_attention=model_config['layer_attention'],
      fused_masked_conv=model_config['fused_masked_conv'],
      layer_attention_energy=model_config.get('layer_attention_energy', 'sum'),
  )


# ---------------------------------------------------------------------------------------------
# Flax -> torch parameters, NHWC <-> NCHW.


def _kernel(hwio: Any) -> Tensor:
  """A flax HWIO kernel as a torch OIHW weight (both cross-correlate, so no flip)."""
  return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(hwio, np.float32),
                                                            (3, 2, 0, 1))))


def _vector(x: Any) -> Tensor:
  return torch.from_numpy(np.array(x, np.float32))


def flax_to_torch_state_dict(torch_model: nn.Module,
                             flax_params: Mapping[str, Any]) -> dict[str, Tensor]:
  """The torch state dict equal to the flax parameter pytree `flax_params`.

  Walks the flax tree: a dict with `feature_kernel` is a MaskedConv (its two convs concatenated,
  feature first, when the torch module is fused), one with `kernel` is a conv, other leaves
  (`gamma`) are copied as they are.
  """
  state = {}

  def walk(tree: Mapping[str, Any], prefix: str) -> None:
    if 'feature_kernel' in tree:
      try:
        module = torch_model.get_submodule(prefix)
      except AttributeError:
        raise ValueError(f'flax parameters {prefix!r} have no torch module') from None
      if module.fused:
        state[f'{prefix}.conv.weight'] = torch.cat(
            [_kernel(tree['feature_kernel']), _kernel(tree['mask_kernel'])])
        state[f'{prefix}.conv.bias'] = torch.cat(
            [_vector(tree['feature_bias']), _vector(tree['mask_bias'])])
      else:
        for part in ('feature', 'mask'):
          state[f'{prefix}.{part}.weight'] = _kernel(tree[f'{part}_kernel'])
          state[f'{prefix}.{part}.bias'] = _vector(tree[f'{part}_bias'])
      return
    if 'kernel' in tree:
      state[f'{prefix}.weight'] = _kernel(tree['kernel'])
      state[f'{prefix}.bias'] = _vector(tree['bias'])
      return
    for key, value in tree.items():
      name = f'{prefix}.{key}' if prefix else key
      if isinstance(value, Mapping):
        walk(value, name)
      else:
        state[name] = _vector(value)

  walk(flax_params, '')
  return state


def load_flax_params(torch_model: nn.Module, flax_params: Mapping[str, Any]) -> nn.Module:
  """Copies the flax CRNet parameters (`model.init(...)['params']`) into `torch_model`.

  Kernels go from HWIO to OIHW. Every torch parameter must receive a value and every flax
  parameter must find a place, with the same shape; a mismatch raises ValueError. Returns
  `torch_model`.
  """
  state = flax_to_torch_state_dict(torch_model, flax_params)
  own = dict(torch_model.named_parameters())
  missing = sorted(own.keys() - state.keys())
  unexpected = sorted(state.keys() - own.keys())
  if missing or unexpected:
    raise ValueError(f'flax and torch parameters differ: no flax value for {missing}, '
                     f'no torch parameter for {unexpected}')
  for name, value in state.items():
    if own[name].shape != value.shape:
      raise ValueError(f'{name}: flax gives shape {tuple(value.shape)}, '
                       f'torch expects {tuple(own[name].shape)}')
  torch_model.load_state_dict(state, strict=True)
  return torch_model


def to_nchw(x: Any, device: torch.device | str | None = None) -> Tensor:
  """NHWC array (numpy or JAX) -> NCHW float32 tensor."""
  return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2).contiguous().to(device)


def to_nhwc(x: Tensor) -> np.ndarray:
  """NCHW tensor -> NHWC float32 numpy array."""
  return x.detach().float().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def apply_nhwc(model: CRNet, x: Any) -> tuple[np.ndarray, list[np.ndarray]]:
  """Runs `model` on NHWC images; returns `(final, intermediates)` as NHWC numpy arrays."""
  device = next(model.parameters()).device
  final, intermediates = model(to_nchw(x, device))
  return to_nhwc(final), [to_nhwc(s) for s in intermediates]


# ---------------------------------------------------------------------------------------------
# Losses (crnet_jax.losses), NCHW, always float32.


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _filter_valid(x: Tensor, window: Tensor) -> Tensor:
  """Separable 'valid' filtering of each channel of NCHW `x` with the 1-D `window`."""
  n, c, h, w = x.shape
  planes = x.reshape(n * c, 1, h, w)
  k = window.numel()
  planes = F.conv2d(planes, window.reshape(1, 1, k, 1))
  planes = F.conv2d(planes, window.reshape(1, 1, 1, k))
  return planes.reshape(n, c, planes.shape[2], planes.shape[3])


def ssim(x: Tensor, y: Tensor, max_val: float = 1.0) -> Tensor:
  """Mean SSIM per image of NCHW `x` and `y`, as `crnet_jax.losses.ssim` (without `mask`).

  Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances, averaged over
  the channels and the valid region. Computed in float32 outside autocast.
  """
  with torch.autocast(device_type=x.device.type, enabled=False):
    x, y = x.float(), y.float()
    c1 = (SSIM_K1 * max_val) ** 2
    c2 = (SSIM_K2 * max_val) ** 2
    window = torch.from_numpy(_gaussian_1d()).to(x.device)
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, e_xx, e_yy, e_xy = torch.chunk(stats, 5, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def _mse(a: Tensor, b: Tensor) -> Tensor:
  return torch.mean(torch.square(a.float() - b.float()))


def progressive_enhancement_loss(final: Tensor, intermediates: Sequence[Tensor], target: Tensor,
                                 beta: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
  """L_PE = (1 - SSIM(final, gt)) + beta * mean_i mean|stage_i - gt|; returns (loss, terms)."""
  l_e = 1.0 - ssim(final, target).mean()
  if intermediates:
    l_ms = torch.stack([torch.mean(torch.abs(s.float() - target.float()))
                        for s in intermediates]).mean()
  else:
    l_ms = torch.zeros((), device=final.device)
  return l_e + beta * l_ms, {'enhancement': l_e, 'mid_step': l_ms}


def multi_consistency_loss(student_final: Tensor, student_intermediates: Sequence[Tensor],
                           teacher_final: Tensor, teacher_intermediates: Sequence[Tensor],
                           gamma: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
  """L_MCR = MSE(final) + gamma * mean_i MSE(stage_i); the teacher's outputs are detached."""
  if len(student_intermediates) != len(teacher_intermediates):
    raise ValueError(f'student has {len(student_intermediates)} intermediate stages, teacher '
                     f'{len(teacher_intermediates)}')
  l_c = _mse(student_final, teacher_final.detach())
  if student_intermediates:
    l_mc = torch.stack([_mse(s, t.detach()) for s, t in
                        zip(student_intermediates, teacher_intermediates)]).mean()
  else:
    l_mc = torch.zeros((), device=student_final.device)
  return l_c + gamma * l_mc, {'consistency': l_c, 'mid_consistency': l_mc}


def semi_supervised_loss(student_final: Tensor, student_intermediates: Sequence[Tensor],
                         teacher_final: Tensor, teacher_intermediates: Sequence[Tensor],
                         target: Tensor, *, beta: float = 1.0, gamma: float = 1.0,
                         lam: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
  """L_SSL = L_PE(the first len(target) images) + lam * L_MCR(all images)."""
  n = target.shape[0]
  l_pe, terms = progressive_enhancement_loss(
      student_final[:n], [s[:n] for s in student_intermediates], target, beta)
  l_mcr, consistency_terms = multi_consistency_loss(
      student_final, student_intermediates, teacher_final, teacher_intermediates, gamma)
  return l_pe + lam * l_mcr, {**terms, **consistency_terms,
                              'progressive': l_pe, 'multi_consistency': l_mcr}


# ---------------------------------------------------------------------------------------------
# Train steps.


def make_optimizer(model: nn.Module, learning_rate: float = 5e-4) -> torch.optim.Optimizer:
  """Adam with default betas (the paper's optimiser); the fused CUDA kernel on a GPU."""
  on_cuda = next(model.parameters()).is_cuda
  return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=on_cuda or None)


def _maybe_compile(fn: Callable, use_compile: bool) -> Callable:
  return torch.compile(fn) if use_compile else fn


def make_supervised_step(model: CRNet, opt: torch.optim.Optimizer, *, beta: float = 1.0,
                         bf16: bool = False, use_compile: bool = False
                         ) -> Callable[[Tensor, Tensor], Tensor]:
  """One supervised CRNet step: forward, L_PE, backward, `opt.step()`.

  Returns `step(low, high) -> loss` (NCHW batches on the model's device; the loss is the detached
  value before the update, not synchronised). With `bf16` the forward pass runs under bfloat16
  autocast (the loss stays float32); with `use_compile` the forward pass and loss are
  `torch.compile`d (the backward graph too, through AOTAutograd), the optimiser step stays eager.
  """

  def loss_fn(low: Tensor, high: Tensor) -> Tensor:
    with torch.autocast(device_type=low.device.type, dtype=torch.bfloat16, enabled=bf16):
      final, intermediates = model(low)
    loss, _ = progressive_enhancement_loss(final, intermediates, high, beta)
    return loss

  loss_fn = _maybe_compile(loss_fn, use_compile)

  def step(low: Tensor, high: Tensor) -> Tensor:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(low, high)
    loss.backward()
    opt.step()
    return loss.detach()

  return step


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float = 0.99) -> None:
  """`teacher = decay * teacher + (1 - decay) * student`, parameter by parameter, in place."""
  teacher_params = list(teacher.parameters())
  student_params = list(student.parameters())
  torch._foreach_lerp_(teacher_params, student_params, 1.0 - decay)


def make_teacher(student: nn.Module) -> nn.Module:
  """The mean teacher: a copy of the student that gradients never reach."""
  teacher = copy.deepcopy(student)
  teacher.requires_grad_(False)
  return teacher


def make_mcmt_step(student: CRNet, teacher: CRNet, opt: torch.optim.Optimizer, *,
                   beta: float = 1.0, gamma: float = 1.0, lam: float = 1.0,
                   noise_std: float = 0.02, ema_decay: float = 0.99, bf16: bool = False,
                   use_compile: bool = False) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
  """One Multi-Consistency Mean Teacher step.

  `step(labeled_low, labeled_high, unlabeled_low) -> loss`: the student runs on
  `x = concat(labeled_low, unlabeled_low)`, the teacher (no gradient) on
  `clip(x + noise_std * N(0, 1), 0, 1)`; loss L_SSL (`semi_supervised_loss`); backward;
  `opt.step()` on the student; then the EMA update of the teacher with `ema_decay`. `bf16` and
  `use_compile` as in `make_supervised_step` (the teacher's forward pass is compiled separately).
  """
  teacher.requires_grad_(False)

  def teacher_fn(x: Tensor) -> tuple[Tensor, list[Tensor]]:
    noisy = torch.clamp(x + noise_std * torch.randn_like(x), 0.0, 1.0)
    with torch.no_grad(), torch.autocast(device_type=x.device.type, dtype=torch.bfloat16,
                                         enabled=bf16):
      return teacher(noisy)

  def loss_fn(x: Tensor, labeled_high: Tensor, teacher_final: Tensor,
              teacher_intermediates: list[Tensor]) -> Tensor:
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
      final, intermediates = student(x)
    loss, _ = semi_supervised_loss(final, intermediates, teacher_final, teacher_intermediates,
                                   labeled_high, beta=beta, gamma=gamma, lam=lam)
    return loss

  teacher_fn = _maybe_compile(teacher_fn, use_compile)
  loss_fn = _maybe_compile(loss_fn, use_compile)

  def step(labeled_low: Tensor, labeled_high: Tensor, unlabeled_low: Tensor) -> Tensor:
    x = torch.cat([labeled_low, unlabeled_low], dim=0)
    teacher_final, teacher_intermediates = teacher_fn(x)
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x, labeled_high, teacher_final, teacher_intermediates)
    loss.backward()
    opt.step()
    ema_update(teacher, student, ema_decay)
    return loss.detach()

  return step
