"""The per-rank body of tests/test_distributed.py (spawned: must be importable, not a test)."""

from __future__ import annotations

import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

import paramshape as ps


def build_model() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights on every rank
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    ps.constrain(model, "0.weight", ps.Box(-0.5, 0.5), init="project")
    ps.constrain(model, "2.weight", ps.Box(-0.3, 0.3), init="project")
    ps.constrain(model, "4.bias", "positive", init="raw")
    return model


def build_strategies_model() -> nn.Module:
    """The Riemannian and Lagrangian strategies, whose optimizer hooks must act alike on every rank."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.ParamshapeWarning)  # init="project" moves the values
        ps.constrain(model, "0.weight", ps.UnitNorm(), method="riemannian", init="project")
        ps.constrain(model, "2.weight", ps.Orthogonal(), method="riemannian", init="project")
        ps.constrain(model, "4.weight", ps.Box(-0.1, 0.1), method="lagrangian", init="project")
    return model


def build_learnable_model() -> nn.Module:
    """Learnable bounds: parameters of the transforms, whose gradients DDP must reduce like any other."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))
    ps.constrain(model, "0.weight", ps.Box(-0.5, 0.5, learnable=True))
    ps.constrain(model, "4.bias", ps.GreaterThan(-1.0, learnable=True))
    return model


def train(model: nn.Module, rank: int, steps: int = 5) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(100 + rank)  # different data per rank
    for _ in range(steps):
        x = torch.randn(16, 8, generator=generator)
        loss = (model(x) - 3.0).square().mean() + ps.penalty(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def report(inner: nn.Module) -> dict:
    """Feasibility and a fingerprint of the stored tensors, to compare across ranks."""
    with torch.no_grad():
        # A Lagrangian constraint holds at convergence only, not after five steps.
        feasible = all(
            bool(info.transform.contains(_read(inner, n)).all())
            for n, info in ps.constraint_info(inner).items()
            if info.method != "lagrangian"
        )
        params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in inner.parameters()]
        multipliers = [i.multiplier for i in ps.constraint_info(inner).values() if i.multiplier is not None]
        fingerprint = torch.cat([p.detach().flatten() for p in [*params, *multipliers]])
    return {"feasible": feasible, "fingerprint": fingerprint}


def _read(inner: nn.Module, name: str) -> torch.Tensor:
    owner, _, attribute = name.rpartition(".")
    return getattr(inner.get_submodule(owner), attribute)


def run(rank: int, world_size: int, init_file: str, results_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    results = {}
    for mode in ("ddp", "ddp_compiled", "fsdp2", "fsdp2_compiled"):
        model = build_model()
        if mode.startswith("ddp"):
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world_size,))
            for layer in (model[0], model[2], model[4]):
                fully_shard(layer, mesh=mesh)
            wrapped = fully_shard(model, mesh=mesh)
        if mode.endswith("compiled"):
            wrapped = torch.compile(wrapped, backend="aot_eager")
        train(wrapped, rank)
        results[mode] = report(model)
    model = build_strategies_model()
    train(nn.parallel.DistributedDataParallel(model), rank)
    results["ddp_strategies"] = report(model)
    model = build_learnable_model()
    train(nn.parallel.DistributedDataParallel(model), rank)
    results["ddp_learnable"] = report(model)
    results["ddp_learnable"]["bounds"] = torch.stack(
        [model[0].parametrizations.weight[0].low.detach(), model[4].parametrizations.bias[0].low.detach()]
    )
    torch.save(results, os.path.join(results_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
