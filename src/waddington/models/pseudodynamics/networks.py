"""The four networks of pseudodynamics+: the density surrogate and the growth, drift and diffusion fields.

Every network sees standardised inputs (a fixed affine map of state and time stored as buffers) and returns its
field in the user's units: states in the units of the embedding, time in the units of the time column. Because the
standardisation happens inside ``forward``, autograd derivatives with respect to the raw inputs carry the right
chain-rule factors, so every loss works in one time unit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from waddington.models._activations import activation_and_slope

_ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "silu": nn.SiLU, "mish": nn.Mish, "elu": nn.ELU}


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str = "tanh") -> nn.Sequential:
    """Build ``Linear → act → … → Linear`` (no activation on the output), as the reference's ``MLP_surrogate``."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
    sizes = [n_in, *map(int, hidden), n_out]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class PseudodynamicsNet(nn.Module):
    """Density surrogate ``log u(s, t)`` and fields ``g(s, t)``, ``v(s, t)``, ``D(s, t)``.

    Parameters
    ----------
    n_dims
        Dimension ``d`` of the state space.
    hidden
        Hidden layer widths shared by the four MLPs.
    activation
        Hidden activation (``"tanh"`` as the reference).
    time_dependent
        Whether ``g``, ``v`` and ``D`` take the time as input (the surrogate always does).
    state_center, state_scale
        Affine standardisation of the states (length ``d``).
    time_center, time_scale
        Affine standardisation of the time.
    log_density_offset
        Initial bias of the surrogate's output (mean observed log density), so training starts near the data.
    growth_init
        Growth warm start (the reference's ``g_init_rate``), in rate per time unit, or ``None``. The last layer of
        the growth network is scaled by 0.01 and its bias set so that ``g ≈ growth_init`` everywhere at start.
    diffusion_init
        Initial diffusion (state units² per time unit); ``None`` gives 1% of the natural scale
        ``mean(state_scale²)/time_scale``. The diffusion network's output bias is set to reach it.
    diffusion_positive
        Parametrise ``D = softplus(·)`` (non-negative, the default) instead of the reference's raw linear output.
    diffusion_clip
        Optional ``(lo, hi)`` clamp applied wherever ``D`` is used (the reference's ``D_clip``).
    zero_growth
        Replace ``g`` by zero (the reference's ablation).
    """

    def __init__(
        self,
        n_dims: int,
        *,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        time_dependent: bool = True,
        state_center: Sequence[float] | None = None,
        state_scale: Sequence[float] | None = None,
        time_center: float = 0.0,
        time_scale: float = 1.0,
        log_density_offset: float = 0.0,
        growth_init: float | None = None,
        diffusion_init: float | None = None,
        diffusion_positive: bool = True,
        diffusion_clip: Sequence[float] | None = None,
        zero_growth: bool = False,
    ):
        super().__init__()
        self._arch = {
            "n_dims": int(n_dims),
            "hidden": [int(h) for h in hidden],
            "activation": str(activation),
            "time_dependent": bool(time_dependent),
            "diffusion_positive": bool(diffusion_positive),
            "zero_growth": bool(zero_growth),
        }
        if diffusion_clip is not None:
            self._arch["diffusion_clip"] = [float(diffusion_clip[0]), float(diffusion_clip[1])]
        d = int(n_dims)
        self.n_dims = d
        self.time_dependent = bool(time_dependent)
        self.diffusion_positive = bool(diffusion_positive)
        self.zero_growth = bool(zero_growth)
        self.diffusion_clip = None if diffusion_clip is None else (float(diffusion_clip[0]), float(diffusion_clip[1]))
        center = torch.zeros(d) if state_center is None else torch.as_tensor(state_center, dtype=torch.float32)
        scale = torch.ones(d) if state_scale is None else torch.as_tensor(state_scale, dtype=torch.float32)
        self.register_buffer("state_center", center.reshape(d).clone())
        self.register_buffer("state_scale", scale.reshape(d).clone())
        self.register_buffer("time_center", torch.tensor(float(time_center)))
        self.register_buffer("time_scale", torch.tensor(float(time_scale)))
        # outputs are in natural units of the data: v in state_scale/time_scale, g in 1/time_scale,
        # D in state_scale²/time_scale, so every network's raw output is O(1) whatever the embedding's units
        self.register_buffer("velocity_scale", self.state_scale / self.time_scale)
        self.register_buffer("growth_scale", 1.0 / self.time_scale)
        self.register_buffer("diffusion_scale", (self.state_scale**2).mean() / self.time_scale)
        n_field_in = d + 1 if self.time_dependent else d
        self.u = mlp(d + 1, hidden, 1, activation)
        self.g = mlp(n_field_in, hidden, 1, activation)
        self.v = mlp(n_field_in, hidden, d, activation)
        self.D = mlp(n_field_in, hidden, 1, activation)
        with torch.no_grad():
            self.u[-1].bias.fill_(float(log_density_offset))
            if growth_init is not None:
                self.g[-1].weight.mul_(0.01)
                self.g[-1].bias.fill_(float(growth_init) / float(self.growth_scale))
            last = self.D[-1]
            last.weight.mul_(0.1)
            d0 = 0.01 if diffusion_init is None else float(diffusion_init) / float(self.diffusion_scale)
            d0 = max(d0, 1e-12)
            # inverse softplus, so that D starts at diffusion_init
            last.bias.fill_(d0 + math.log(-math.expm1(-d0)) if self.diffusion_positive else d0)

    def _inputs(self, s: torch.Tensor, t: torch.Tensor, with_time: bool) -> torch.Tensor:
        z = (s - self.state_center) / self.state_scale
        if not with_time:
            return z
        tt = (t.reshape(-1, 1) - self.time_center) / self.time_scale
        return torch.cat([z, tt.expand(z.shape[0], 1)], dim=1)

    def log_density(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log u(s, t)``, shape ``(B,)``."""
        return self.u(self._inputs(s, t, True)).squeeze(-1)

    def growth(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Net proliferation rate ``g(s, t)`` per time unit, shape ``(B,)``."""
        if self.zero_growth:
            return s.sum(-1) * 0.0
        return self.g(self._inputs(s, t, self.time_dependent)).squeeze(-1) * self.growth_scale

    def velocity(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Drift ``v(s, t)`` in state units per time unit, shape ``(B, d)``."""
        return self.v(self._inputs(s, t, self.time_dependent)) * self.velocity_scale

    def diffusion(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Isotropic diffusion ``D(s, t)`` in state units² per time unit, shape ``(B,)``."""
        return self.diffusion_head(self.D(self._inputs(s, t, self.time_dependent)).squeeze(-1))[0]

    def diffusion_head(self, raw: torch.Tensor, *, slope: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``D`` from the diffusion network's raw output and, with ``slope``, ``dD/d raw`` (``None`` otherwise).

        The one place that applies the positivity, the unit scale and the clip, for the field and for the
        forward-mode jets of the PDE terms.
        """
        if self.diffusion_positive:
            out, d1 = activation_and_slope("softplus", raw) if slope else (nn.functional.softplus(raw), None)
        else:
            out, d1 = raw, (torch.ones_like(raw) if slope else None)
        out = out * self.diffusion_scale
        if d1 is not None:
            d1 = d1 * self.diffusion_scale
        if self.diffusion_clip is not None:
            lo, hi = self.diffusion_clip
            if d1 is not None:  # zero slope outside the clip, as torch's clamp backward
                d1 = d1 * ((out >= lo) & (out <= hi)).to(out.dtype)
            out = out.clamp(lo, hi)
        return out, d1

    def architecture(self) -> dict:
        """The constructor arguments that rebuild this network (h5ad-writable; buffers travel in the weights)."""
        return dict(self._arch)

    @classmethod
    def from_weights(cls, architecture: dict, weights: dict) -> PseudodynamicsNet:
        """Rebuild a network from :meth:`architecture` and a ``{name: array}`` state dict."""
        arch = dict(architecture)
        clip = arch.pop("diffusion_clip", None)
        net = cls(**arch, diffusion_clip=clip)
        state = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in weights.items()}
        net.load_state_dict(state)
        return net
