"""GPU readiness without a GPU: forwards that read no value back to the host off the CPU.

A read back (``bool(t)``, ``t.item()``) waits for the device. Off the CPU, Sinkhorn runs its fixed
iteration count and learnable bounds are checked on the device; on the CPU both keep their host
checks. Tested by running the forward on the ``meta`` device (where any read back raises), and by
counting the reads while the device path is taken on CPU tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramshape as ps
from paramshape.transforms.elementwise import bounds as _bounds
from paramshape.transforms.matrix import stochastic as _stochastic


@pytest.fixture
def host_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``bool()`` and ``.item()`` of a tensor while the test runs."""
    seen: list[str] = []
    as_bool, item = torch.Tensor.__bool__, torch.Tensor.item

    def counted_bool(self: torch.Tensor) -> bool:
        seen.append("bool")
        return as_bool(self)

    def counted_item(self: torch.Tensor) -> object:
        seen.append("item")
        return item(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counted_bool)
    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    return seen


def test_sinkhorn_reads_nothing_back_off_the_cpu() -> None:
    x = torch.randn(3, 5, 5, device="meta")  # a read back of a meta tensor raises
    y = ps.DoublyStochastic()(x)
    assert y.shape == x.shape
    assert y.device.type == "meta"


def test_sinkhorn_stops_early_on_the_cpu(monkeypatch: pytest.MonkeyPatch, host_reads: list[str]) -> None:
    transform = ps.DoublyStochastic(max_iterations=100)
    x = torch.randn(5, 5, dtype=torch.float64)
    calls = []
    logsumexp = torch.logsumexp
    monkeypatch.setattr(torch, "logsumexp", lambda *a, **k: calls.append(1) or logsumexp(*a, **k))
    early = transform(x)
    assert host_reads
    assert len(calls) < 2 * 100 + 1
    calls.clear()
    host_reads.clear()
    monkeypatch.setattr(_stochastic, "host_reads_free", lambda tensor: False)  # a GPU's path
    full = transform(x)
    assert host_reads == []
    assert len(calls) == 2 * 100 + 1
    # Both are in the set; the extra iterations move the value by at most the tolerance.
    assert bool(transform.contains(early).all())
    assert bool(transform.contains(full).all())


def _stepped_learnable_box() -> tuple[nn.Linear, torch.Tensor]:
    layer = ps.constrain(nn.Linear(3, 3), "weight", ps.Box(-1.0, 1.0, learnable=True), init="sample")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    layer(x).square().sum().backward()
    optimizer.step()  # the bounds' parameters changed: the next read re-checks them
    return layer, x


def test_learnable_bounds_are_checked_on_the_device_off_the_cpu(
    monkeypatch: pytest.MonkeyPatch, host_reads: list[str]
) -> None:
    monkeypatch.setattr(_bounds, "host_reads_free", lambda tensor: False)
    layer, x = _stepped_learnable_box()
    asserted = []
    assert_async = torch._assert_async
    monkeypatch.setattr(
        torch, "_assert_async", lambda flag, message: asserted.append(message) or assert_async(flag, message)
    )
    host_reads.clear()
    layer(x)
    assert host_reads == []
    assert asserted
    assert "learnable bound" in asserted[0]
    transform = layer.parametrizations.weight[0]
    with torch.no_grad():
        next(transform.parameters()).fill_(float("inf"))
    with pytest.raises(RuntimeError, match="is no longer finite"):
        layer(x)


def test_learnable_bounds_keep_their_host_check_on_the_cpu(host_reads: list[str]) -> None:
    layer, x = _stepped_learnable_box()
    host_reads.clear()
    layer(x)
    assert host_reads  # the CPU path reads the check back (and names the tensor on failure)
    transform = layer.parametrizations.weight[0]
    with torch.no_grad():
        next(transform.parameters()).fill_(float("inf"))
    with pytest.raises(ps.SpecError, match="learnable bounds must stay finite"):
        layer(x)
