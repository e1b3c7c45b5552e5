"""Device names checked up front, so a wrong one is a clear error rather than a failure deep inside torch."""

from __future__ import annotations

from geoarray.errors import GeoArrayError


def resolve_device(device: str, error: type[GeoArrayError], *, check_cuda: bool = True) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other names are validated.

    ``check_cuda=False`` skips the is-there-a-GPU check (the devices of remote workers are theirs to know).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise error(
            f"device={device!r} is not a torch device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise error(
            f"device={device!r}; expected 'cpu', 'cuda' (or 'mps' on Apple silicon). Pass one of those."
        )
    if dev.type == "mps" and check_cuda and not torch.backends.mps.is_available():
        raise error(f"device={device!r}, but torch has no MPS backend here; use device='cpu' or 'auto'.")
    if dev.type == "cuda" and check_cuda and not torch.cuda.is_available():
        raise error(
            f"device={device!r}, but torch sees no CUDA GPU here (torch {torch.__version__}); "
            "use device='cpu', or 'auto' to take a GPU only when there is one."
        )
    return device


def cuda_count() -> int:
    """CUDA devices torch can use here (0 without a CUDA build). A broken CUDA setup is logged, not hidden."""
    import logging

    import torch

    if not torch.backends.cuda.is_built():
        return 0
    try:
        return int(torch.cuda.device_count())
    except RuntimeError as e:  # a driver/runtime mismatch: say so rather than silently fall back to gloo
        logging.getLogger(__name__).warning("CUDA is built into torch but unusable here (%s); using the CPU", e)
        return 0
