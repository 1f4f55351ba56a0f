"""Constrained models under DistributedDataParallel and FSDP2, eager and compiled: 2 processes,
gloo backend, CPU. Ranks must end with identical parameters, and every constraint must hold."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from . import _distributed_worker

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_distributed_worker.run, args=(2, str(folder / "init"), str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


@pytest.mark.parametrize(
    "mode", ["ddp", "ddp_compiled", "fsdp2", "fsdp2_compiled", "ddp_strategies", "ddp_learnable"]
)
def test_ranks_agree_and_constraints_hold(results, mode):
    first, second = (rank[mode] for rank in results)
    assert first["feasible"]
    assert second["feasible"]
    torch.testing.assert_close(first["fingerprint"], second["fingerprint"], rtol=0, atol=0)


def test_training_moved_the_parameters(results):
    untrained = _distributed_worker.report(_distributed_worker.build_model())["fingerprint"]
    assert not torch.equal(results[0]["ddp"]["fingerprint"], untrained)


def test_learnable_bounds_were_trained_alike_on_every_rank(results):
    first, second = (rank["ddp_learnable"]["bounds"] for rank in results)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert abs(float(first[0]) + 0.5) > 1e-3, "the Box's lower bound did not move"
    assert abs(float(first[1]) + 1.0) > 1e-3, "the floor did not move"


def test_riemannian_and_lagrangian_steps_ran_under_ddp(results):
    untrained = _distributed_worker.report(_distributed_worker.build_strategies_model())["fingerprint"]
    trained = results[0]["ddp_strategies"]["fingerprint"]
    assert trained.shape == untrained.shape
    assert not torch.equal(trained, untrained)
