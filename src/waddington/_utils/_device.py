"""Device selection for torch models and Lightning trainers."""

from __future__ import annotations

from typing import Literal

Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]


def resolve_accelerator(accelerator: str = "auto") -> str:
    """Map ``accelerator`` to the Lightning accelerator name that is available here.

    ``"auto"`` picks ``"gpu"`` when CUDA is available and ``"cpu"`` otherwise; an explicit ``"gpu"`` or
    ``"cuda"`` without CUDA raises an error instead of silently running on the CPU.
    """
    import torch

    acc = str(accelerator).lower()
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"accelerator={accelerator!r} was requested but torch sees no CUDA device; "
                "use accelerator='cpu' or install a CUDA build of torch."
            )
        return "gpu"
    if acc == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise RuntimeError("accelerator='mps' was requested but MPS is not available; use accelerator='cpu'.")
        return "mps"
    if acc == "cpu":
        return "cpu"
    raise ValueError(f"`accelerator` must be one of 'auto', 'cpu', 'gpu', 'cuda', 'mps', got {accelerator!r}.")


def resolve_device(accelerator: str = "auto"):
    """Return the :class:`torch.device` that ``accelerator`` selects (first device of its kind)."""
    import torch

    acc = resolve_accelerator(accelerator)
    if acc == "gpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(acc)
