"""Device names checked up front, so a wrong one is a clear error rather than a failure deep inside torch."""

from __future__ import annotations

from typing import Any

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


def run_device(device: str, precision: str, error: type[GeoArrayError]) -> tuple[str, str]:
    """The device and precision a run is planned with. Under a distributed client the workers' devices count:
    ``"auto"`` stays ``"auto"`` (each worker takes its GPU when it has one: ``_inference.on_device``), and
    ``"cuda"`` is not checked against this process's torch."""
    local = not remote_client()
    if device == "auto" and not local:
        return device, check_precision(precision, device, error, check_cuda=False)
    device = resolve_device(device, error, check_cuda=local)
    return device, check_precision(precision, device, error, check_cuda=local)


def remote_client() -> bool:
    """A distributed client is active: its workers, not this process, decide which devices exist."""
    try:
        from distributed import get_client

        get_client()
        return True
    except (ImportError, ValueError):
        return False


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


PRECISIONS = ("32", "bf16", "16")


def native_bf16() -> bool:
    """The CPU has bf16 instructions (AVX512-BF16 or AMX); without them oneDNN emulates bf16, slower than f32."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def check_precision(precision: str, device: str, error: type[GeoArrayError], *, check_cuda: bool = True) -> str:
    """Refuse a precision the device cannot run (fp16 on CPU, bf16 without oneDNN bf16); warn when bf16 is emulated."""
    import torch

    if precision not in PRECISIONS:
        raise error(f"precision={precision!r}; expected '32', 'bf16' or '16' (autocast to bfloat16 / float16).")
    on_cpu = not device.startswith("cuda")
    if precision == "16" and on_cpu:
        raise error(
            f"precision='16' (float16 autocast) needs a CUDA GPU; device is {device!r}. On CPU use "
            "precision='bf16' (CPUs with AVX512-BF16 or AMX) or '32'."
        )
    if precision == "bf16" and on_cpu:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise error(
                "precision='bf16' needs a CPU with AVX-512 (bf16 in oneDNN); this one has "
                f"{torch.backends.cpu.get_cpu_capability()}. Use precision='32'."
            )
        if not native_bf16():
            import warnings

            from geoarray.errors import GeoArrayWarning

            warnings.warn(
                GeoArrayWarning(
                    "precision='bf16': this CPU lacks AVX512-BF16 and AMX (see `lscpu` flags avx512_bf16, "
                    "amx_bf16), so oneDNN emulates bf16, about 2x slower than float32 (measured on an Ice Lake "
                    "Xeon). Use precision='32' here; bf16 pays off on Sapphire Rapids / Zen 4 CPUs and GPUs."
                ),
                stacklevel=3,
            )
    if precision == "bf16" and not on_cpu and check_cuda:
        # not torch.cuda.is_bf16_supported(): by default it also says True for GPUs that only emulate bf16
        # (including_emulation=True: Turing, Volta), and it asks about the current device, not `device`
        cap = torch.cuda.get_device_capability(torch.device(device).index)
        if not gpu_has_bf16(cap):
            raise error(
                f"precision='bf16' needs a GPU with bfloat16 (Ampere or newer, compute capability 8.0+); "
                f"{device!r} is {cap[0]}.{cap[1]}. Use precision='16' (float16) there."
            )
    return precision


def gpu_has_bf16(capability: tuple[int, int]) -> bool:
    """A CUDA GPU of this compute capability computes in bfloat16 natively (Ampere, 8.0, or newer)."""
    return capability[0] >= 8


def autocast(device: str, precision: str) -> Any:
    """The autocast context of a precision (a no-op for '32'); model outputs are cast back to float32 after."""
    import contextlib

    import torch

    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cpu" if not device.startswith("cuda") else "cuda", dtype=dtype)
