"""The automatic CUDA batch size (core/inference/batch_size.py): the largest power of two that fits,
with headroom. On a real GPU: test_cuda.py; the size a run reports: assets/test_reported_batch_size.py."""

import pytest


@pytest.mark.fast
def test_automatic_batch_size_is_the_largest_power_of_two_that_fits_with_headroom():
    from inference_assets.core.inference.batch_size import pick_batch_size

    gib = 1 << 30
    # a model whose forward pass needs 1 GiB + 50 MiB per image, on a 40 GiB device: 80 % is 32 GiB
    asked: list[int] = []

    def peak(n: int) -> int | None:
        asked.append(n)
        need = gib + n * (50 << 20)
        return None if need > 40 * gib else need

    assert pick_batch_size(peak, 40 * gib) == 512  # 512 needs 26 GiB; 1024 would need 51 GiB
    assert asked == [32, 64, 128, 256, 512]  # stops before trying a size that cannot fit
    assert pick_batch_size(peak, 400 * gib, cap=256) == 256
    # out of memory already at the start: halves down until one fits
    assert pick_batch_size(lambda n: None if n > 6 else n * gib, 10 * gib) == 4
    assert pick_batch_size(lambda n: None, 10 * gib) == 1
