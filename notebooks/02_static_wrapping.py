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
# # The static-wrapping bug
#
# A probability must stay in $(0, 1)$, so a common first attempt stores an unconstrained parameter
# and squashes it once, in `__init__`:
#
# ```python
# self.p_raw = nn.Parameter(torch.tensor(0.0))
# self.p = torch.sigmoid(self.p_raw)
# ```
#
# It looks right, and the first training step even runs. This notebook shows the error it raises on
# the second step, why silencing that error leaves a model that never learns, and how
# `ps.constrain` does the job instead.
#
# Runs on CPU in a few seconds; needs `torch`, `paramshape` and `matplotlib`.

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
# ## The task
#
# Estimate the probability of heads from 1000 flips of a biased coin by maximum likelihood. The
# answer is known in closed form (the fraction of heads), so we can check what training finds.

# %%
flips = (torch.rand(1000) < 0.8).float()
best = flips.mean().item()
print(f"fraction of heads: {best:.3f}")


def negative_log_likelihood(p: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy(p.expand_as(flips), flips)


# %% [markdown]
# ## The static version


# %%
class StaticCoin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p_raw = nn.Parameter(torch.tensor(0.0))
        self.p = torch.sigmoid(self.p_raw)  # computed once, here

    def forward(self) -> torch.Tensor:
        return self.p


static = StaticCoin()
optimizer = torch.optim.SGD(static.parameters(), lr=1.0)
error_message = None
for step in range(2):
    loss = negative_log_likelihood(static())
    optimizer.zero_grad()
    try:
        loss.backward()
    except RuntimeError as error:
        error_message = str(error)
        print(f"step {step}: RuntimeError: {error_message[:110]}...")
        break
    optimizer.step()
    print(
        f"step {step}: loss {loss.item():.4f}, p = {static.p.item():.4f}, p_raw = {static.p_raw.item():.4f}"
    )

# %% [markdown]
# The first step went through; the second failed. `self.p` is not a parameter: it is the *output* of
# a small graph, `p_raw -> sigmoid -> p`, built once when the module was created. The first
# `backward()` walks that graph and frees the intermediate values it saved, so the second one has
# nothing to walk.
#
# The message suggests `retain_graph=True`. That silences the error, and shows the deeper problem:
# notice that after the first step `p_raw` had moved but `p` had not. `self.p` was computed from
# the *old* `p_raw` and is never computed again.

# %%
static = StaticCoin()
optimizer = torch.optim.SGD(static.parameters(), lr=1.0)
static_losses, static_p, static_raw = [], [], []
for _ in range(200):
    loss = negative_log_likelihood(static())
    optimizer.zero_grad()
    loss.backward(retain_graph=True)  # no error any more...
    optimizer.step()
    static_losses.append(loss.item())
    static_p.append(static.p.item())
    static_raw.append(static.p_raw.item())
print(f"after 200 steps: p = {static.p.item():.4f}, p_raw = {static.p_raw.item():.2f}")
print("p in state_dict:", "p" in static.state_dict())

# %% [markdown]
# ... but the model never learns: `p` stays at $\sigma(0) = 0.5$ while `p_raw` is pushed further and
# further, because the same stale gradient is applied at every step. `p` is not in the `state_dict`
# either, so a checkpoint would not hold it.
#
# ## The hand-written fix
#
# Recompute the value at every use, in `forward`:
#
# ```python
# def forward(self):
#     return torch.sigmoid(self.p_raw)
# ```
#
# That trains correctly. Its remaining costs are on the people reading the code: every place that
# needs `p` has to remember to apply the sigmoid, setting `p = 0.3` means writing the inverse by
# hand (`p_raw = log(0.3 / 0.7)`), and nothing stops a value outside $(0, 1)$ from turning into NaN.
#
# ## With `ps.constrain`
#
# Declare `p` as what it is, a parameter, and constrain it. Every read of `self.p` recomputes
# `sigmoid` of a stored tensor, so each step builds a fresh graph and the value follows the
# optimizer.


# %%
class Coin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(0.5))
        ps.constrain(self, "p", "unit_interval")

    def forward(self) -> torch.Tensor:
        return self.p


coin = Coin()
# UnitInterval's map has slope 1 at p = 0.5, so a step moves p about as far as it would move a plain
# parameter: the learning rate is one for p itself (the hand-written sigmoid above has slope 1/4).
optimizer = torch.optim.SGD(coin.parameters(), lr=0.1)
losses, values = [], []
for _ in range(200):
    loss = negative_log_likelihood(coin())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    values.append(coin.p.item())
print(f"learned p = {coin.p.item():.4f} (fraction of heads {best:.4f})")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(static_losses, label="static (retain_graph=True)")
left.plot(losses, label="ps.constrain")
left.set_xlabel("step")
left.set_ylabel("negative log-likelihood")
left.legend()
right.plot(static_p, label="static: p")
right.plot(values, label="ps.constrain: p")
right.axhline(best, color="C3", linestyle=":", label="maximum-likelihood estimate")
right.set_xlabel("step")
right.set_ylabel("p")
right.set_ylim(0, 1)
right.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# The constrained module also takes care of the rest of the list above: assignment goes through the
# inverse (and refuses values outside the set), and the value is checkpointed as its stored
# unconstrained tensor.

# %%
coin.p = torch.tensor(0.3)
print("after assignment:", coin.p.item(), "stored:", coin.parametrizations.p.original.item())
try:
    coin.p = torch.tensor(1.2)
except ps.InfeasibleValueError as error:
    print("refused:", error)
print("state_dict keys:", list(coin.state_dict()))

# %% [markdown]
# ## Check

# %%
assert error_message is not None
assert "backward through the graph a second time" in error_message
assert all(value == 0.5 for value in static_p), "the static value moved"
assert abs(static_raw[-1]) > 10, "the raw parameter should have drifted"
assert max(static_losses) - min(static_losses) < 1e-6, "the static loss should be flat"
assert abs(values[-1] - best) < 1e-3, "ps.constrain should reach the maximum-likelihood estimate"
assert all(0 < value < 1 for value in values)
assert abs(coin.p.item() - 0.3) < 1e-6
print("all checks passed")
