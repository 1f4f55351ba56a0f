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
# # Choosing a technique
#
# Ask how to keep a PyTorch weight in $[-1, 1]$ and you will get five answers: reparametrise it,
# clamp it after every optimizer step (projection), add a penalty to the loss, clamp the model's
# output, or clip the gradients. This notebook runs all five, through paramshape, on one small task,
# and measures what each one guarantees: whether the weights stay in the box, how well the model
# fits, how many weights end up stuck on a bound, and what a step costs.
#
# Runs on CPU in a few seconds; needs `torch`, `paramshape` and `matplotlib`.

# %%
import statistics
import sys
import time
import warnings

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script (CI): draw off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

import paramshape as ps

torch.manual_seed(0)

# %% [markdown]
# ## The task: a fit that wants to leave the box
#
# A linear model fits $y = 3x_1 - 2x_2 + 0.5x_3$, but its weights must lie in $[-1, 1]$. With
# independent inputs the best feasible weights are $(1, -1, 0.5)$: two of them on a bound.

# %%
x = torch.randn(512, 3)
y = x @ torch.tensor([3.0, -2.0, 0.5])
STEPS = 300


def fresh() -> nn.Linear:
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
    return layer


# %% [markdown]
# Each technique is a way to build the model (and, for the penalty, a term to add to the loss). The
# training loop is the same for all of them.

# %%
techniques = {
    "none": lambda: (fresh(), None),
    "reparam (Box)": lambda: (ps.constrain(fresh(), "weight", ps.Box(-1, 1)), None),
    "reparam (SoftClip)": lambda: (ps.constrain(fresh(), "weight", ps.SoftClip(-1, 1)), None),
    "project": lambda: (ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="project"), None),
    "penalty (weight 1)": lambda: (
        ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="penalty", weight=1.0),
        ps.penalty,
    ),
    "penalty (weight 100)": lambda: (
        ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="penalty", weight=100.0),
        ps.penalty,
    ),
    "output clamp": lambda: (ps.bound_output(fresh(), ps.HardClamp(-2, 2)), None),
    "gradient clipping": lambda: (ps.clip_grad(fresh(), "weight", max_norm=0.5), None),
}


def run(build) -> dict:
    model, extra = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, largest, seconds = [], [], []
    with warnings.catch_warnings(record=True) as caught:  # kept to show below
        warnings.simplefilter("always", ps.SaturationWarning)
        train(model, extra, optimizer, losses, largest, seconds)
    weight = model.weight.detach().flatten()
    return {
        "weight": weight,
        "loss": losses,
        "largest": largest,
        "feasible": sum(value <= 1 for value in largest) / STEPS,
        "at bound": ((weight.abs() - 1).abs() <= 1e-3).float().mean().item(),
        "ms": 1e3 * statistics.median(seconds),
        "saturation": ps.saturation(model),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, ps.SaturationWarning)],
    }


def train(model, extra, optimizer, losses, largest, seconds) -> None:
    for _ in range(STEPS):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = (model(x).squeeze(-1) - y).square().mean()
        total = loss if extra is None else loss + extra(model)
        total.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        largest.append(model.weight.detach().abs().max().item())


results = {name: run(build) for name, build in techniques.items()}

print(
    f"{'technique':>21} {'final weight':>26} {'feasible':>9} {'at bound':>9} {'final loss':>11} {'ms/step':>8}"
)
for name, r in results.items():
    weights = ", ".join(f"{w:+.3f}" for w in r["weight"].tolist())
    print(
        f"{name:>21} {weights:>26} {r['feasible']:>9.0%} {r['at bound']:>9.0%} "
        f"{r['loss'][-1]:>11.4f} {r['ms']:>8.3f}"
    )

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 8))
for name, r in results.items():
    style = "--" if name in ("none", "output clamp", "gradient clipping") else "-"
    axes[0, 0].plot(r["largest"], style, label=name)
    axes[0, 1].semilogy(r["loss"], style, label=name)
axes[0, 0].axhline(1, color="k", linestyle=":", linewidth=1)
axes[0, 0].set_ylim(0, 3.5)
axes[0, 0].set_title("largest |weight| (the box ends at 1)")
axes[0, 0].set_xlabel("step")
axes[0, 1].set_ylim(0.5, 20)  # the unconstrained fits go on to 0, off the bottom
axes[0, 1].set_title("task loss (without the penalty)")
axes[0, 1].set_xlabel("step")
axes[0, 1].legend(fontsize=8)
names = list(results)
positions = range(len(names))
axes[1, 0].barh(
    positions, [results[n]["feasible"] for n in names], label="steps with every weight in the box"
)
axes[1, 0].barh(
    positions, [results[n]["at bound"] for n in names], height=0.4, label="weights on a bound at the end"
)
axes[1, 0].set_yticks(list(positions), names)
axes[1, 0].invert_yaxis()
axes[1, 0].set_xlim(0, 1)
axes[1, 0].legend(fontsize=8, loc="lower right")
axes[1, 0].set_title("feasibility")
axes[1, 1].barh(positions, [results[n]["ms"] for n in names], color="C2")
axes[1, 1].set_yticks(list(positions), names)
axes[1, 1].invert_yaxis()
axes[1, 1].set_xlabel("median milliseconds per step (this machine)")
axes[1, 1].set_title("time")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Choose by where the optimum lies
#
# Here the best feasible weights $(1, -1, 0.5)$ put two weights **on** the bound. A smooth map
# approaches a bound but never reaches it, and its slope vanishes on the way: the reparametrised
# weights end *saturated* or nearly so, where a step on the stored value barely moves the value
# (`SoftClip`, whose slope falls faster at its edge, saturates two of its three weights; `Box`
# stops at 1-2% of its centre slope).
# `ps.saturation(model)` measures it (values where the slope is below 1% of its largest), and
# during training a `SaturationWarning` says so once per tensor, when more than half of it is
# saturated or at least a fifth and growing over the last two checks, and points to
# `method="project"`.
#
# | where the optimum lies | use | why | evidence (training-quality benchmark, 3 seeds, full length) |
# |---|---|---|---|
# | inside the set (a scale, a probability, a temperature the data pins down) | `method="reparam"` | every read feasible; unit slope in the middle, so learning rates carry over | GP with L-BFGS, ordinal cutpoints, a policy's log-std (`SoftClip`), CLIP's temperature: within seed noise of the hand-written code, no warning |
# | on the boundary, or exact zeros wanted (clipping, sparse non-negative factors, a cap the data pushes against) | `method="project"` | reaches the bound exactly; trains like the hand-written clamp | WGAN critic: 0.278 against the clamp's 0.297 (reparam: 0.304 with 8x the seed spread, behind all along, warned); sparse NMF: the clamp's error (reparam: 2.8x, no exact zero) |
# | nowhere in particular: a soft preference | `method="penalty"` | violations allowed, priced by the weight | matches where the optimum is inside; worst on the bound |
#
# "Within seed noise" means the mean difference to the hand-written run of the same seed is at most
# twice the larger of its spread and the hand-written code's own spread over the seeds
# ([Strategies](../docs/strategies.md#training-quality-six-real-problems) has the table).

# %%
for name in ("reparam (Box)", "reparam (SoftClip)"):
    print(name, results[name]["saturation"], sep="\n")
    for message in results[name]["warnings"]:
        print("warned:", message[:160], "...")

# %% [markdown]
# What the runs show:
#
# - **reparam** (the default of `ps.constrain`) and **project** keep every weight in the box at
#   every step, and end near the best feasible weights $(1, -1, 0.5)$, whose loss is about 5 (the
#   part of $y$ that weights in the box cannot fit). Projection lands exactly on the bounds and is
#   cheap. `Box` (slope 1 at the centre, like a plain weight) approaches the bounds but never
#   reaches them, ever more slowly as its slope fades: after 300 steps it is still short of them,
#   its slope there down to 1-2% of the centre's. `SoftClip` is the identity inside the box, so it moves
#   as fast as the unconstrained model until it is within a hair of a bound. With the optimum on
#   the bound, projection is the right tool; with an interior optimum reparametrisation trains as
#   well as a plain parameter ([Strategies](../docs/strategies.md) measures six real problems).
# - The **penalty** trades the fit against the violation: the weights leave the box and stay
#   slightly outside. A larger weight shrinks the violation without removing it.
# - **Output clamping** bounds the predictions, not the weights, which grow freely; and where a
#   prediction is clamped its gradient is zero.
# - **Gradient clipping** bounds the size of each step, not where the steps lead: the weights
#   leave the box, only more slowly.
#
# The timings are those of a three-weight model, where Python overhead dominates; on real layers
# the transform's cost grows with the tensor's size. [Strategies](../docs/strategies.md) has the
# same comparison on a network, and [Compile and performance](../docs/performance.md) the costs.
#
# ## The penalty's weight
#
# The violation shrinks roughly in proportion to the penalty's weight, but never reaches zero.

# %%
violations = {}
for weight in (1.0, 10.0, 100.0, 1000.0):
    model = ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="penalty", weight=weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        optimizer.zero_grad()
        ((model(x).squeeze(-1) - y).square().mean() + ps.penalty(model)).backward()
        optimizer.step()
    violations[weight] = model.weight.detach().abs().max().item() - 1
    print(f"penalty weight {weight:>6}: largest violation {violations[weight]:.5f}")
penalized = model

# %% [markdown]
# ## Lagrange multipliers: a penalty that finds its own weight
#
# `method="lagrangian"` adds an augmented Lagrangian term to `ps.penalty(model)` with one multiplier
# per weight. After every optimizer step the multipliers take a dual ascent step: they grow while a
# weight is outside the box and stop when it is back on the bound. The fit ends on the best feasible
# weights, where a fixed penalty of any weight stays outside; the multipliers converge to how hard
# the loss pulls on each bound (the KKT multipliers), readable from `ps.constraint_info`.

# %%
lagrangian = ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="lagrangian")
optimizer = torch.optim.Adam(lagrangian.parameters(), lr=0.05)
for _ in range(3 * STEPS):
    optimizer.zero_grad()
    ((lagrangian(x).squeeze(-1) - y).square().mean() + ps.penalty(lagrangian)).backward()
    optimizer.step()
lagrangian_violation = lagrangian.weight.detach().abs().max().item() - 1
print("final weights:", [round(w, 4) for w in lagrangian.weight.detach().flatten().tolist()])
print(f"largest violation {lagrangian_violation:.1e} (penalty, weight 1000: {violations[1000.0]:.1e})")
print(ps.constraint_info(lagrangian)["weight"])
print(
    "multipliers:",
    [round(m, 2) for m in ps.constraint_info(lagrangian)["weight"].multiplier.flatten().tolist()],
)

# %% [markdown]
# ## Riemannian steps: stay on a manifold without a map
#
# For sets that are manifolds (unit vectors, orthonormal frames, covariance matrices),
# `method="riemannian"` keeps a plain parameter on the manifold: before each step the gradient is
# replaced by its Riemannian version, after it the step is retracted onto the manifold, and the
# optimizer's momentum is carried along. Here an orthonormal frame of two columns learns the top
# two principal directions of some data, with the stock Adam; `reparam` does the same through the
# map of `Orthogonal`.

# %%
data = torch.randn(256, 6) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.3, 0.1])
covariance_matrix = data.T @ data / 256
best = torch.linalg.eigvalsh(covariance_matrix)[-2:].sum().item()  # top-2 explained variance


def frame(method: str) -> tuple[nn.Module, list[float]]:
    holder = nn.Module()
    holder.u = nn.Parameter(torch.linalg.qr(torch.randn(6, 2)).Q)
    ps.constrain(holder, "u", ps.Orthogonal(), method=method)
    optimizer = torch.optim.Adam(holder.parameters(), lr=0.05)
    explained = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = -torch.trace(holder.u.T @ covariance_matrix @ holder.u)
        loss.backward()
        optimizer.step()
        explained.append(-loss.item() / best)
    return holder, explained


riemannian, riemannian_curve = frame("riemannian")
reparam_frame, reparam_curve = frame("reparam")
gram_error = (riemannian.u.detach().T @ riemannian.u.detach() - torch.eye(2)).abs().max().item()
print(f"explained variance / best: riemannian {riemannian_curve[-1]:.5f}, reparam {reparam_curve[-1]:.5f}")
print(f"|U^T U - I| after 200 riemannian steps: {gram_error:.1e}")

# %% [markdown]
# A transform whose set is not a manifold says which strategies remain:

# %%
try:
    ps.constrain(fresh(), "weight", ps.Box(-1, 1), method="riemannian")
except ps.ManifoldUnavailableError as error:
    print(error)

# %% [markdown]
# ## Gradient clipping: per tensor or global
#
# `torch.nn.utils.clip_grad_norm_(params, c)` takes **one** norm over all the tensors it is given,
# so a large gradient in one tensor shrinks the steps of all the others; `ps.clip_grad` clips each
# tensor on its own. With two tensors the difference shows:

# %%
a = nn.Parameter(torch.zeros(2))
b = nn.Parameter(torch.zeros(2))
(torch.tensor([3.0, 4.0]) @ a + torch.tensor([0.3, 0.4]) @ b).backward()
torch.nn.utils.clip_grad_norm_([a, b], max_norm=1.0)
print(f"global norm:     |grad a| = {a.grad.norm():.4f}, |grad b| = {b.grad.norm():.4f}")
holder = nn.Module()
holder.a, holder.b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
ps.clip_grad(holder, "a", max_norm=1.0)
ps.clip_grad(holder, "b", max_norm=1.0)
(torch.tensor([3.0, 4.0]) @ holder.a + torch.tensor([0.3, 0.4]) @ holder.b).backward()
print(f"per-tensor norm: |grad a| = {holder.a.grad.norm():.4f}, |grad b| = {holder.b.grad.norm():.4f}")

# %% [markdown]
# ## A whole model at once
#
# Patterns constrain every matching tensor in one call, with one strategy; a pattern that matches
# nothing is an error that lists the names. Switching strategy later is one argument.

# %%
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
ps.constrain(
    model, {"*.weight": ps.Box(-0.5, 0.5), "4.bias": "box(-0.5, 0.5)"}, method="project", init="project"
)
for name, info in ps.constraint_info(model).items():
    print(f"{name:>10}: {info}")
try:
    ps.constrain(model, {"decoder.*": "positive"})
except ps.TensorNotFoundError as error:
    print(str(error)[:95], "...")
ps.constrain(model, "0.weight", ps.Box(-0.5, 0.5), method="reparam")  # switch one tensor's strategy
print("0.weight is now:", ps.constraint_info(model)["0.weight"])

# %% [markdown]
# For bounded outputs (clamp, straight-through clamp, `Box`, `SoftClip`, a learned temperature), see
# the tutorial [Bounded outputs](03_bounded_outputs.py).
#
# ## Check

# %%
for name in ("reparam (Box)", "reparam (SoftClip)", "project"):
    assert results[name]["feasible"] == 1, f"{name} left the box"
assert torch.equal(results["project"]["weight"][:2], torch.tensor([1.0, -1.0]))  # exactly on the bounds
best_feasible = results["project"]["loss"][-1]
assert 4.9 < best_feasible < 5.2
assert results["reparam (Box)"]["weight"].abs().max() < 1  # approaches, never reaches
assert results["reparam (Box)"]["loss"][-1] > best_feasible
# The two weights whose optimum is on the bound: saturated under SoftClip, nearly so under Box.
assert results["reparam (SoftClip)"]["saturation"]["weight"] == 2 / 3
assert len(results["reparam (SoftClip)"]["warnings"]) == 1
assert results["reparam (Box)"]["saturation"]["weight"] == 0
assert results["reparam (SoftClip)"]["loss"][-1] < 1.001 * best_feasible
for name in ("penalty (weight 1)", "none", "output clamp", "gradient clipping"):
    assert results[name]["feasible"] < 1, f"{name} should not keep the weights in the box"
assert results["output clamp"]["weight"].abs().max() > 1.5
assert violations[1000.0] < violations[100.0] < violations[10.0] < violations[1.0]
assert violations[1000.0] > 0  # the penalty never removes the violation
assert abs(lagrangian_violation) < 1e-4 < violations[1000.0]  # the multipliers do
assert riemannian_curve[-1] > 0.999
assert gram_error < 1e-5
torch.testing.assert_close(holder.a.grad.norm(), torch.tensor(1.0))
assert holder.b.grad.norm() < 1  # untouched by a's large gradient, unlike the global norm
assert list(ps.constraints(model)) == ["0.weight", "2.weight", "4.weight", "4.bias"]
print("all checks passed")
