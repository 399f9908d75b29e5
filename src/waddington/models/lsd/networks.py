"""The neural networks of LSD: encoders, decoders, the potential V(z) and the RNN prior of the differentiation state.

Three builders, as in the reference: Linear→BatchNorm→Softplus blocks (``batch_norm=True``, BatchNorm kept after the
last Linear, last activation dropped), Linear→Softplus blocks (last activation dropped) and Linear→activation
after *every* layer (the potential). Unlike the reference, every network uses its own configured hidden sizes
(``z_encoder`` for q(B|z) and ``xl_encoder`` for q(ℓ|x) are honoured).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from waddington.models._activations import activation_and_slope, curvature

__all__ = [
    "LogCosh",
    "PotentialGradient",
    "GaussianMLP",
    "ZDecoder",
    "PotentialNet",
    "PriorRNN",
    "make_activation",
    "mlp",
    "weighted_batch_norm",
]

_EPS = 1e-5


class LogCosh(nn.Module):
    """``log(cosh(u))``, computed stably as ``|u| + softplus(−2|u|) − log 2``."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # noqa: D102
        a = u.abs()
        return a + F.softplus(-2.0 * a) - 0.6931471805599453


def make_activation(name: str) -> nn.Module:
    """Activation by name: ``"logcosh"``, ``"relu"``, ``"softplus"``, ``"tanh"`` or ``"identity"``."""
    table = {
        "logcosh": LogCosh,
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "sp": nn.Softplus,
        "tanh": nn.Tanh,
        "identity": nn.Identity,
        "id": nn.Identity,
    }
    key = str(name).lower()
    if key not in table:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(table)}.")
    return table[key]()


def mlp(
    dims: list[int], *, batch_norm: bool, activation: str = "softplus", last_activation: bool = False
) -> nn.Sequential:
    """Stack ``Linear`` (→ ``BatchNorm1d``) → activation over consecutive ``dims``."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(d_in, d_out))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        if i < len(dims) - 2 or last_activation:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class GaussianMLP(nn.Module):
    """MLP whose output is split in half into a location and a softplus scale of a diagonal Gaussian."""

    def __init__(self, d_in: int, hidden: list[int], d_out: int, *, batch_norm: bool):
        super().__init__()
        self.d_out = d_out
        self.net = mlp([d_in, *hidden, 2 * d_out], batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)``.

        ``counts`` (n,) gives each row's multiplicity in the batch it stands for: in training mode BatchNorm then
        takes its statistics over that multiset (see :func:`weighted_batch_norm`), so encoding each distinct cell
        once gives the same outputs and gradients as encoding every copy.
        """
        h = x
        for layer in self.net:
            if counts is not None and isinstance(layer, nn.BatchNorm1d):
                h = weighted_batch_norm(layer, h, counts)
            else:
                h = layer(h)
        loc, raw = h.split(self.d_out, dim=-1)
        return loc, F.softplus(raw) + _EPS


def weighted_batch_norm(bn: nn.BatchNorm1d, h: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``bn`` applied to the multiset in which row ``i`` of ``h`` occurs ``counts[i]`` times, returned per row.

    In training mode the batch mean and (biased) variance are the count-weighted ones, and the running
    statistics are updated with them (unbiased variance over the multiset size), exactly as ``bn`` would on the
    repeated rows; in evaluation mode rows are independent and ``bn`` is applied as is.
    """
    if not bn.training or not bn.track_running_stats:
        return bn(h)
    w = (counts.to(h.dtype) / counts.sum()).unsqueeze(-1)
    mean = (w * h).sum(0)
    centred = h - mean
    var = (w * centred * centred).sum(0)
    with torch.no_grad():
        total = float(counts.sum())
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
        bn.running_mean.mul_(1.0 - m).add_(mean.detach(), alpha=m)
        bn.running_var.mul_(1.0 - m).add_(var.detach() * (total / max(total - 1.0, 1.0)), alpha=m)
        bn.num_batches_tracked.add_(1)
    out = centred * torch.rsqrt(var + bn.eps)
    if bn.affine:
        out = out * bn.weight + bn.bias
    return out


class ZDecoder(nn.Module):
    """p(x|z): zero-inflation gate logits and softmax expression proportions over genes."""

    def __init__(self, z_dim: int, hidden: list[int], n_genes: int):
        super().__init__()
        self.n_genes = n_genes
        self.net = mlp([z_dim, *hidden, 2 * n_genes], batch_norm=True)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Gate logits and expression logits side by side, shape (n, 2·genes) (``softmax`` of the second half is ρ)."""
        return self.net(z)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(gate_logits, rho)``."""
        gate_logits, expr_logits = self.logits(z).split(self.n_genes, dim=-1)
        return gate_logits, torch.softmax(expr_logits, dim=-1)


class PotentialNet(nn.Module):
    """Scalar potential ``V(z) = sigmoid(g) · f(z)``.

    ``f`` applies the activation after every layer (so V ≥ 0 with log-cosh, as in the reference) and ``g`` is a
    learnable scalar starting at 0.
    """

    def __init__(self, z_dim: int, hidden: list[int], activation: str = "logcosh"):
        super().__init__()
        self.net = mlp([z_dim, *hidden, 1], batch_norm=False, activation=activation, last_activation=True)
        self.g = nn.Parameter(torch.zeros(1))
        self._act_name = str(activation).lower()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """V(z), shape (n,)."""
        return (torch.sigmoid(self.g) * self.net(z)).squeeze(-1)

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        """∇V(z), by an explicit chain rule with a hand-written backward (:class:`PotentialGradient`).

        The flow evaluates ∇V 4 × (L − 1) times per training step on a few hundred 10-dimensional states, so the
        cost is per-operation overhead, not arithmetic. The chain rule recorded op by op puts about 20 autograd
        nodes per evaluation into the graph (``torch.autograd.grad(..., create_graph=True)`` more);
        :class:`PotentialGradient` is one node whose backward is the written-out Hessian-vector product and
        parameter gradient. On the default flow (256 walks × 9 RK4 steps) it takes 40–44 ms per training step,
        forward and backward, against 43–51 ms for the recorded chain rule.
        """
        linears = [m for m in self.net if isinstance(m, nn.Linear)]
        params: list[torch.Tensor] = []
        for lin in linears:
            params += [lin.weight, lin.bias]
        return PotentialGradient.apply(z, self._act_name, self.g, *params)


class PotentialGradient(torch.autograd.Function):
    """``∇_z [sigmoid(g) · φ(W_L … φ(W_1 z + b_1) … + b_L)]`` for an MLP with activation φ after every layer.

    ``apply(z, activation, g, W_1, b_1, …, W_L, b_L)``. The backward returns the gradients with respect to ``z``
    (the Hessian-vector product), ``g`` and every weight and bias; it is not itself differentiable (the loss
    needs first derivatives of the flow only). Checked against autograd with ``torch.autograd.gradcheck`` in the
    tests.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, act: str, g: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:  # noqa: D102
        weights, biases = params[0::2], params[1::2]
        inputs, pre, slopes = [z], [], []
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            a = torch.addmm(b, inputs[-1], w.t())
            value, slope = activation_and_slope(act, a, value=i < len(weights) - 1)
            pre.append(a)
            slopes.append(slope)
            if value is not None:
                inputs.append(value)
        s = torch.sigmoid(g)
        deltas = [None] * len(weights)
        partial = [None] * len(weights)  # partial[i] = deltas[i + 1] @ W_{i+1}
        deltas[-1] = slopes[-1] * s
        for i in range(len(weights) - 2, -1, -1):
            partial[i] = deltas[i + 1] @ weights[i + 1]
            deltas[i] = partial[i] * slopes[i]
        ctx.act = act
        ctx.n_layers = len(weights)
        ctx.save_for_backward(s, *weights, *inputs, *pre, *slopes, *deltas, *partial[:-1])
        return deltas[0] @ weights[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        n_layers, act = ctx.n_layers, ctx.act
        saved = list(ctx.saved_tensors)
        s = saved.pop(0)
        weights = saved[:n_layers]
        inputs = saved[n_layers : 2 * n_layers]
        pre = saved[2 * n_layers : 3 * n_layers]
        slopes = saved[3 * n_layers : 4 * n_layers]
        deltas = saved[4 * n_layers : 5 * n_layers]
        partial = saved[5 * n_layers :]
        grad_w = [None] * n_layers
        grad_b = [None] * n_layers
        # backward through the explicit chain rule: deltas → out
        grad_w[0] = deltas[0].t() @ grad_out
        grad_delta = grad_out @ weights[0].t()
        grad_slope = [None] * n_layers
        for i in range(n_layers - 1):
            grad_partial = grad_delta * slopes[i]
            grad_slope[i] = grad_delta * partial[i]
            grad_w[i + 1] = deltas[i + 1].t() @ grad_partial
            grad_delta = grad_partial @ weights[i + 1].t()
        grad_s = (grad_delta * slopes[-1]).sum()
        grad_slope[-1] = grad_delta * s
        # backward through the forward pass: pre-activations → inputs
        grad_input = None
        for i in range(n_layers - 1, -1, -1):
            grad_pre = grad_slope[i] * curvature(act, pre[i], slopes[i])
            if grad_input is not None:
                grad_pre = grad_pre + grad_input * slopes[i]
            grad_w[i] = grad_w[i] + grad_pre.t() @ inputs[i]
            grad_b[i] = grad_pre.sum(0)
            grad_input = grad_pre @ weights[i]
        grad_g = (grad_s * s * (1.0 - s)).reshape(1)
        grads: list[torch.Tensor | None] = [grad_input, None, grad_g]
        for gw, gb in zip(grad_w, grad_b, strict=True):
            grads += [gw, gb]
        return tuple(grads)


class PriorRNN(nn.Module):
    """p(B | walk): a 2-layer ReLU RNN over the log-expression of the cells of each walk, from a learned h0.

    The parameters are those of :class:`torch.nn.RNN` (``self.rnn``), but the recurrence is unrolled here so that
    the first layer's input projection runs once per *distinct* cell of a batch and is then gathered by
    ``rows``: ``nn.RNN`` would need (and keep for its backward) the (walks × length × genes) input, about
    5 MiB per batch at 256 × 10 × 500, and projects every position. The outputs are those of ``self.rnn`` (a
    test checks this); the unrolled loop over ten positions also takes less than half of ``nn.RNN``'s time.
    """

    def __init__(self, n_genes: int, B_dim: int, num_layers: int = 2):
        super().__init__()
        self.rnn = nn.RNN(n_genes, B_dim, num_layers=num_layers, nonlinearity="relu", batch_first=True)
        self.h0 = nn.Parameter(torch.zeros(num_layers, 1, B_dim))

    def forward(self, x: torch.Tensor, n_walks: int, length: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """B prior mean (W·L, B_dim) of walks whose walk-major log-expression is ``x`` (or ``x[rows]``)."""
        rnn = self.rnn
        seq = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
        if rows is not None:
            seq = seq[rows]
        seq = seq.view(n_walks, length, -1)
        for layer in range(rnn.num_layers):
            if layer:
                seq = F.linear(seq, getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"))
            w, b = getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
            h = self.h0[layer].expand(n_walks, -1)
            steps = []
            for t in range(length):
                h = torch.relu(torch.addmm(b, h, w.t()) + seq[:, t])
                steps.append(h)
            seq = torch.stack(steps, 1)
        return seq.reshape(-1, seq.shape[-1])
