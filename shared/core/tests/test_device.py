import pytest
import torch

from difflab_core.device import (
    generator,
    generators,
    gpu_info,
    resolve_device,
    resolve_dtype,
    seed_everything,
)
from difflab_core.errors import DifflabError


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DifflabError, match="not a device"):
        resolve_device("toaster")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_missing_is_a_clear_error():
    with pytest.raises(DifflabError, match="CUDA is not available"):
        resolve_device("cuda:0")
    assert gpu_info() == []


def test_dtype_policy():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype(torch.float64) == torch.float64
    with pytest.raises(DifflabError, match="dtype"):
        resolve_dtype("fp13")


def test_generators_are_per_call_and_reproducible():
    a = torch.randn(4, generator=generator(7))
    b = torch.randn(4, generator=generator(7))
    assert torch.equal(a, b)
    g1, g2 = generators([1, 2])
    assert not torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))
    seed_everything(3)
    x = torch.rand(2)
    seed_everything(3)
    assert torch.equal(x, torch.rand(2))


@pytest.mark.gpu
def test_cuda_generator_and_fp16_policy():
    assert resolve_dtype("auto", "cuda") == torch.float16
    assert generator(0, "cuda").device.type == "cuda"
    assert gpu_info()[0].total_memory > 0
