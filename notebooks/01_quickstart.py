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
# # Quickstart
#
# Constrain a layer's weight to a box, look at the values and at the map that keeps them there,
# train a small regression with the constraint in place, and check that it held at every step.
#
# Runs on CPU in a few seconds; needs `torch`, `paramshape` and `matplotlib`
# (`pip install -e ".[docs]"`).

# %%
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script (CI): draw off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn

import paramshape as ps

torch.manual_seed(0)

# %% [markdown]
# ## Constrain a layer
#
# `ps.constrain(module, name, spec)` attaches a transform to one tensor of a module. From then on
# every read of `layer.weight` is computed from a stored, unconstrained tensor, so it always lies in
# the set: here the open box $(-1, 1)$.

# %%
layer = nn.Linear(3, 2)
ps.constrain(layer, "weight", ps.Box(-1, 1))
print(ps.constraints(layer))
print("weight:", layer.weight.detach())
print("stored:", layer.parametrizations.weight.original.detach())

# %% [markdown]
# The default `init="keep"` kept the weight's values: `nn.Linear(3, 2)` draws them from
# $(-1/\sqrt{3}, 1/\sqrt{3})$, inside the box. What the module stores now are their preimages under
# the map, and those are what the optimizer will update. The `Parameter` object is the same one as
# before, so an optimizer built earlier keeps working.
#
# ## The transform's curve
#
# `Box(-1, 1)` maps any real number $x$ to $f(x) = -1 + 2\,\sigma(x)$, with $\sigma$ the logistic
# sigmoid. The plot shows the map, its slope $f'(x)$, and the layer's six weights sitting on the
# curve at their stored values.

# %%
box = ps.Box(-1, 1)
xs = torch.linspace(-8, 8, 401, requires_grad=True)
ys = box(xs)
(slopes,) = torch.autograd.grad(ys.sum(), xs)
stored = layer.parametrizations.weight.original.detach().flatten()

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(xs.detach(), ys.detach(), label="f(x) = Box(-1, 1)(x)")
left.scatter(stored, box(stored), color="C1", zorder=3, label="the layer's weights")
for bound in (-1, 1):
    left.axhline(bound, color="C3", linestyle=":")
left.set_xlabel("stored (unconstrained) value x")
left.set_ylabel("weight f(x)")
left.legend()
right.plot(xs.detach(), slopes, color="C2")
right.set_xlabel("x")
right.set_ylabel("f'(x)")
right.set_title("slope: how far a step on x moves the weight")
plt.tight_layout()
plt.show()

# %% [markdown]
# Near the middle a step of size $\delta$ on $x$ moves the weight by about $\delta/2$; far out the
# slope fades, so the weight approaches a bound ever more slowly and no step, however large, can
# cross it. Every finite $x$ gives a weight in the box. In float32, $x = 20$ already rounds onto the
# bound, which is why membership (`contains`) is tested on the closed box, with a tolerance of a few
# ulps:

# %%
extreme = box(torch.tensor([-1e4, -20.0, 0.0, 20.0, 1e4]))
print(extreme)
print("inside the (closed) box:", box.contains(extreme))

# %% [markdown]
# ## Assigning values
#
# Assigning to a constrained tensor stores the value through the inverse map, after checking it. A
# value outside the box is refused and the layer is left as it was.

# %%
layer.weight = torch.tensor([[0.5, -0.25, 0.0], [0.9, 0.1, -0.9]])
print(layer.weight.detach())
try:
    layer.weight = torch.tensor([[0.5, 1.5, 0.0], [0.0, 0.0, 0.0]])
except ps.InfeasibleValueError as error:
    print("refused:", error)
print("unchanged:", layer.weight.detach()[0])

# %% [markdown]
# ## Train with the constraint in place
#
# The data come from $y = X w + 0.1\,\varepsilon$ with $w = (0.7, -0.4, 1.6)$. The third true
# coefficient lies outside the box, so the best the constrained model can do is press that weight
# against the upper bound and fit the other two. The training loop is ordinary PyTorch.

# %%
generator = torch.Generator().manual_seed(1)
true_weight = torch.tensor([0.7, -0.4, 1.6])
inputs = torch.randn(512, 3, generator=generator)
targets = inputs @ true_weight + 0.1 * torch.randn(512, generator=generator)

model = nn.Linear(3, 1)
ps.constrain(model, "weight", ps.Box(-1, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

losses, weights = [], []
for _ in range(400):
    loss = (model(inputs).squeeze(-1) - targets).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    weights.append(model.weight.detach().flatten().clone())
weights = torch.stack(weights)

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.semilogy(losses)
left.set_xlabel("step")
left.set_ylabel("training loss")
for k in range(3):
    right.plot(weights[:, k], label=f"w{k} (true {true_weight[k]:.1f})")
right.axhline(1, color="C3", linestyle=":", label="bound")
right.set_xlabel("step")
right.set_ylabel("weight")
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The third weight climbs towards 1 and stays below it; the other two settle near their true values.

# %%
fitted = model.weight.detach().flatten()
print("fitted weight:", fitted)

# %% [markdown]
# ## Check
#
# The claims of this notebook, as assertions: every weight seen during training was inside the box,
# the free coefficients were recovered, and the constrained one sits just below its bound.

# %%
assert bool((weights.abs() < 1).all()), "a weight left the box during training"
assert bool(ps.constraints(model)["weight"].contains(model.weight).all())
assert torch.allclose(fitted[:2], true_weight[:2], atol=0.1)
assert 0.95 < fitted[2] < 1
assert bool(box.contains(extreme).all())
assert losses[-1] < losses[0]
print("all checks passed")
