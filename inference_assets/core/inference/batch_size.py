"""The automatic batch size on a GPU: the largest power of two that fits, with headroom.

On CUDA, ``batch_size: 0`` probes the model once per run: forward passes on zero tensors at
32, 64, 128, ... images (up to ``cap``), recording each one's peak memory; it stops at the
first out-of-memory error or when a pass would use more than ``headroom`` of the device's
memory, and picks the largest size below that. Out-of-memory back-off during the run (see
``inference.classify``) still covers what the probe could not foresee (other processes).
On CPU the automatic size is fixed (``devices.default_batch_size``): bigger batches are not
faster there.
"""

from __future__ import annotations

from collections.abc import Callable


def pick_batch_size(
    peak_bytes: Callable[[int], int | None],
    total_bytes: int,
    headroom: float = 0.8,
    start: int = 32,
    cap: int = 1024,
) -> int:
    """Largest ``start * 2**k <= cap`` whose ``peak_bytes`` fits in ``headroom * total_bytes``.

    ``peak_bytes(n)`` runs one forward pass of ``n`` images and returns its peak memory, or
    None when it ran out of memory. Below ``start``, halves until one fits (at least 1).
    """
    budget = headroom * total_bytes
    best = 0
    size = start
    while size <= cap:
        peak = peak_bytes(size)
        if peak is None or peak > budget:
            break
        best = size
        # the next doubling would roughly double the activations: stop early when it cannot fit
        if peak * 2 > budget:
            break
        size *= 2
    if best:
        return best
    size = start // 2
    while size >= 1:
        peak = peak_bytes(size)
        if peak is not None and peak <= budget:
            return size
        size //= 2
    return 1


def forward_peak_bytes(module, normalize, input_size: tuple[int, int], device, n: int, dtype=None) -> int | None:
    """Peak CUDA memory of one forward pass of ``module`` on ``n`` zero images, or None when it ran out."""
    import torch

    height, width = input_size
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.inference_mode():
            x = normalize(torch.zeros((n, 3, height, width), dtype=torch.uint8, device=device))
            with torch.autocast(device_type="cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                module(x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        torch.cuda.empty_cache()


def probe_cuda_batch_size(module, normalize, input_size: tuple[int, int], device, dtype=None, cap: int = 1024) -> int:
    """``pick_batch_size`` with real forward passes of ``module`` on zeros on the CUDA ``device``."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    total = free + torch.cuda.memory_reserved(device)  # what this process may use: free + what it holds
    return pick_batch_size(lambda n: forward_peak_bytes(module, normalize, input_size, device, n, dtype), total, cap=cap)
