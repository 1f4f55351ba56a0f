# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Speed: eager, fused, compiled
#
# A reparametrised tensor is recomputed from its stored values at every forward, and its map is
# differentiated at every backward. For `Box` that is a handful of elementwise operations over the
# whole weight, each reading and writing it once. There are three ways to run them:
#
# - **eager**: one PyTorch operation after another, as written;
# - **fused**: `ps.set_fusion("on")` runs each transform's map as one compiled kernel (one pass over
#   the weight forward, one backward); the default, `"auto"`, does this by itself for large tensors
#   once compiling has paid for itself;
# - **whole-model compile**: `torch.compile(model)` traces the model, the constraint maps included,
#   and fuses them with the code around them.
#
# This notebook checks that all three compute the same thing and times a training step of a small
# MLP in each, at two sizes. The sizes are tiny on purpose, so the notebook runs in well under a
# minute on a laptop CPU, compiles included. The benchmark behind the documentation,
# `python benchmarks/run.py` in the repository, measures the same variants at realistic sizes and
# against hand-written alternatives; its numbers are in
# [Compile and performance](../docs/performance.md).
#
# Needs `torch`, `paramshape`, `matplotlib`, and a working `torch.compile` (a C++ compiler on CPU).

# %%
import statistics
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script (CI): draw off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

import paramshape as ps

torch.manual_seed(0)
torch.set_num_threads(1)  # steadier timings on a shared machine


def build(width: int, constrained: bool) -> nn.Sequential:
    torch.manual_seed(1)  # the same initial weights for every variant of one width
    model = nn.Sequential(
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    )
    if constrained:
        ps.constrain(model, "*.weight", ps.Box(-0.1, 0.1), init="project")
    return model


# %% [markdown]
# `init="project"` moves the few initial weights that lie outside $(-0.1, 0.1)$ inside, and says so
# with a warning.
#
# ## Same values in every mode
#
# Fusion and compilation change how the map is computed, not what it computes: the outputs and
# gradients agree to rounding. The first fused and compiled calls include compiling, which takes
# seconds on a CPU (later processes reuse torch's compile cache).

# %%
x = torch.randn(64, 256)
model = build(256, constrained=True)
compiled = torch.compile(model, fullgraph=True)  # fullgraph: fails on any graph break
results, first_call = {}, {}
for name, mode, forward in (
    ("eager", "off", model),
    ("fused", "on", model),
    ("compiled model", "off", compiled),
):
    model.zero_grad()
    start = time.perf_counter()
    with ps.fusion(mode):
        out = forward(x)
        out.square().mean().backward()
    first_call[name] = time.perf_counter() - start
    results[name] = (out.detach(), model[0].parametrizations.weight.original.grad.clone())
for name, (value, grad) in results.items():
    print(
        f"{name:>14}: max |output - eager| = {(value - results['eager'][0]).abs().max():.1e}, "
        f"max |grad - eager| = {(grad - results['eager'][1]).abs().max():.1e}; "
        f"first call {first_call[name]:.2f} s"
    )

# %% [markdown]
# ## Timing a training step
#
# For each width, four variants train in turn, one step each per round, so they share the machine's
# state: the plain model without constraints, and the constrained model eager, fused, and compiled as
# a whole. A few warm-up steps (compiling for the new shapes) are left out of the timings.


# %%
def trainer(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


timings, models = {}, {}
for width in (256, 1024):
    x, y = torch.randn(64, width), torch.randn(64, 1)
    models[width] = {
        name: build(width, name != "plain (no constraint)")
        for name in ("plain (no constraint)", "eager", "fused", "compiled model")
    }
    modes = {"plain (no constraint)": "off", "eager": "off", "fused": "on", "compiled model": "off"}
    steps = {
        name: (trainer(torch.compile(model) if name == "compiled model" else model, x, y), modes[name])
        for name, model in models[width].items()
    }
    for step, mode in steps.values():
        with ps.fusion(mode):
            step(), step()
    seconds = {name: [] for name in steps}
    for _ in range(25):
        for name, (step, mode) in steps.items():
            with ps.fusion(mode):
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
    timings[width] = {name: 1e3 * statistics.median(values) for name, values in seconds.items()}

for width, row in timings.items():
    base = row["plain (no constraint)"]
    constrained = sum(
        layer.weight.numel() for layer in models[width]["eager"] if isinstance(layer, nn.Linear)
    )
    print(f"width {width}: {constrained:,} constrained weights")
    for name, ms in row.items():
        print(f"  {name:>22}: {ms:7.2f} ms/step  {ms / base:5.2f}x")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
for axes_, (width, row) in zip(axes, timings.items(), strict=True):
    base = row["plain (no constraint)"]
    names = list(row)
    axes_.barh(names, [row[name] / base for name in names], color=["0.6", "C0", "C1", "C2"])
    axes_.axvline(1, color="k", linewidth=0.8)
    axes_.set_title(f"width {width}: time per step / plain model")
    axes_.invert_yaxis()
plt.tight_layout()
plt.show()

# %% [markdown]
# What to take from it (your numbers will differ; the shape of the result is what carries over):
#
# - The constraint's cost is the map over every constrained weight at every step, so it grows with
#   the weights, not with the batch; relative to the whole step it is largest for big weights and
#   small batches.
# - Fusing pays only for large tensors: a compiled kernel has a fixed call overhead that a
#   256 x 256 weight does not recover. That is why the default, `"auto"`, fuses only tensors above a
#   per-transform size measured on a 2-core CPU (524 288 elements for a box; see
#   docs/performance.md), and only once the eager maps have cost as much time as a compile.
# - Compiling the whole model is usually the fastest, because the compiler fuses the map with the
#   surrounding code; constrained modules compile with `fullgraph=True` (no graph breaks). Its
#   price is the first call.
# - The first call of a fused or compiled variant includes compilation, seconds on a CPU; later
#   processes reuse torch's compile cache and start faster.
#
# ## Check

# %%
for value, grad in results.values():
    torch.testing.assert_close(value, results["eager"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, results["eager"][1], rtol=1e-4, atol=1e-6)
for width, variants in models.items():
    for name, model in variants.items():
        if name != "plain (no constraint)":
            for weight in (model[0].weight, model[2].weight, model[4].weight):
                assert bool((weight.abs() <= 0.1).all()), f"{name} at width {width} left the box"
assert ps.get_fusion() == "auto"  # the context manager restored the default
print("all checks passed")
