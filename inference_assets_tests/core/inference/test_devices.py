import pytest
import torch

from inference_assets.core.inference.devices import autocast_dtype, resolve_device
from inference_assets.core.errors import ConfigError


pytestmark = pytest.mark.fast  # the whole module is in `make test-fast`


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("CPU") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_asked_for_without_cuda_is_a_one_line_error():
    with pytest.raises(ConfigError, match="CUDA is not available here: set device to cpu"):
        resolve_device("cuda:0")


def test_unknown_device_and_precision():
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        autocast_dtype("int4")
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp32") is None
