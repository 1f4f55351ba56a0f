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
# # Bounded outputs
#
# Sometimes the thing that must stay in a range is not a parameter but what a module *returns*: the
# logits of a classifier that should not become arbitrarily confident, the actions of a policy that
# an actuator accepts only within limits, the probabilities of a softmax. Any paramshape transform is
# also a layer, and `ps.bound_output` attaches one to an existing module. The layers differ in one
# thing that matters for training: the gradient they pass back near and beyond the bounds.
#
# Runs on CPU in about ten seconds; needs `torch`, `paramshape` and `matplotlib`.

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
# ## Clamp, smooth, soft clip: values and gradients
#
# Four ways to keep an output in $[-1, 1]$, applied to pre-activations from $-3$ to $3$:
#
# - `ps.HardClamp(-1, 1)` is `torch.clamp`: exact bounds, and a gradient of **zero** beyond them;
# - `ps.HardClamp(-1, 1, straight_through=True)`: the same values, with the gradient passed through
#   as if there were no clamp;
# - `ps.Box(-1, 1)`: a scaled sigmoid, smooth everywhere, never reaching the bounds, with a gradient
#   that fades as it approaches them;
# - `ps.SoftClip(-1, 1)`: the identity (slope 1) in the middle, bending smoothly into each bound.

# %%
layers = {
    "HardClamp": ps.HardClamp(-1, 1),
    "HardClamp (straight-through)": ps.HardClamp(-1, 1, straight_through=True),
    "Box (smooth)": ps.Box(-1, 1),
    "SoftClip": ps.SoftClip(-1, 1, softness=0.1),
}
pre = torch.linspace(-3, 3, 601)
curves = {}
for name, layer in layers.items():
    x = pre.clone().requires_grad_(True)
    out = layer(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    curves[name] = (out.detach(), grad)

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, (out, grad)), style in zip(curves.items(), ["-", "--", "-", "-."], strict=True):
    left.plot(pre, out, style, label=name)
    right.plot(pre, grad, style, label=name)
for axes in (left, right):
    axes.axvspan(-3, -1, color="0.92")
    axes.axvspan(1, 3, color="0.92")
    axes.set_xlabel("pre-activation")
left.set_ylabel("output")
left.set_title("outputs (grey: beyond the bounds)")
right.set_ylabel("d output / d pre-activation")
right.set_title("gradients")
right.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Beyond a bound the plain clamp's gradient is exactly zero: an output that lands there sends nothing
# back, so nothing will ever pull it in again. The next section shows what that does to training.
#
# ## A policy head whose actions stay in bounds
#
# A small policy maps a 4-dimensional state to a 2-dimensional action that must lie in $[-1, 1]$.
# It imitates an expert whose actions are often saturated (on the bounds). We train the same
# network, from the same initial weights, with each output layer. To make the difference visible,
# the last layer's bias starts at 3: every initial action is pushed past the upper bound, as happens
# when a policy drifts during training.

# %%
states = torch.randn(1024, 4)
expert = torch.tensor([[1.5, -0.8], [0.4, 1.2], [-1.0, 0.6], [0.3, -0.9]])
expert_actions = (states @ expert).clamp(-1, 1)
print(f"expert actions on a bound: {(expert_actions.abs() == 1).float().mean():.0%}")

trunk = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
with torch.no_grad():
    trunk[2].bias.fill_(3.0)
initial = {name: value.clone() for name, value in trunk.state_dict().items()}


def train_policy(head: nn.Module, steps: int = 400) -> tuple[nn.Module, list[float]]:
    policy = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    policy.load_state_dict(initial)
    ps.bound_output(policy, head)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    history = []
    for _ in range(steps):
        loss = (policy(states) - expert_actions).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return policy, history


policies, histories = {}, {}
for name, head in layers.items():
    policies[name], histories[name] = train_policy(head)
    print(f"{name:>29}: loss {histories[name][0]:.4f} -> {histories[name][-1]:.4f}")

# %%
plt.figure(figsize=(6, 3.8))
for name, history in histories.items():
    plt.semilogy(history, label=name)
plt.xlabel("step")
plt.ylabel("imitation loss")
plt.title("same network, same start, different output layer")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# With the plain clamp the loss never moves: all actions start beyond the bound, every gradient is
# zero, and the policy is stuck for good. The straight-through clamp and the smooth layers recover.
# `Box` recovers most slowly here: over half of the expert's actions lie exactly on a bound, which a
# sigmoid only approaches, with a fading slope. Every layer keeps every action in bounds, even for
# states far outside the training data:

# %%
wild_states = 100 * torch.randn(256, 4)
for name, policy in policies.items():
    with torch.no_grad():
        actions = policy(wild_states)
    print(f"{name:>29}: actions in [{actions.min():+.4f}, {actions.max():+.4f}]")

# %% [markdown]
# Which to choose: `Box` is the smooth default (it approaches the bounds but never reaches them);
# `SoftClip` keeps a slope of 1 inside, so the layer is transparent there; the straight-through clamp
# lands exactly on the bounds, which suits targets that sit on them. The plain clamp is fine only if
# outputs rarely cross a bound.
#
# ## A classifier head bounded in a box
#
# A classifier's logits can grow without limit, and with them its confidence, far from the data
# more than anywhere. Bounding the logits in $(-B, B)$ caps the top probability of a $K$-class
# softmax at $e^{B} / (e^{B} + (K - 1)e^{-B})$, whatever the input.

# %%
centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
labels = torch.arange(3).repeat_interleave(200)
points = centres[labels] + 0.9 * torch.randn(600, 2)

bound = 2.0
classifiers = {
    "bounded": nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3), ps.Box(-bound, bound)),
    "unbounded": nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 3)),
}
for classifier in classifiers.values():
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-2)
    for _ in range(300):
        loss = nn.functional.cross_entropy(classifier(points), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

cap = torch.tensor(bound).exp() / (torch.tensor(bound).exp() + 2 * torch.tensor(-bound).exp())
far = 50 * torch.randn(500, 2)
confidence = {}
for name, classifier in classifiers.items():
    with torch.no_grad():
        accuracy = (classifier(points).argmax(-1) == labels).float().mean().item()
        confidence[name] = classifier(far).softmax(-1).max(-1).values
    print(
        f"{name:>9}: training accuracy {accuracy:.1%}, "
        f"median top probability far from the data {confidence[name].median():.4f}"
    )
print(f"cap for B = {bound}: {cap:.4f}")

# %% [markdown]
# The bounded head classifies as well as the unbounded one, but far from the data its confidence
# stays under the cap, while the unbounded head becomes certain about inputs it has never seen.
#
# ## A softmax with a learnable temperature
#
# `ps.TemperatureSoftmax` divides the logits by a temperature $T$ that is itself a constrained
# parameter, here kept in $(0.05, 20)$: it can neither collapse to 0 nor become negative. A classic
# use is calibration: a trained classifier is often over-confident, and one learned scalar fixes
# that. Below, the "classifier" produces logits four times too large, so the best temperature is
# about 4.

# %%
true_logits = 1.5 * torch.randn(2000, 5)
targets = torch.distributions.Categorical(logits=true_logits).sample()
overconfident = 4.0 * true_logits

head = ps.TemperatureSoftmax(init=1.0, bounds=(0.05, 20.0), log=True)
optimizer = torch.optim.Adam(
    head.parameters(), lr=0.2
)  # the box (0.05, 20) is wide: at T = 1 its slope is 0.18
temperatures = []
for _ in range(300):
    loss = nn.functional.nll_loss(head(overconfident), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    temperatures.append(head.temperature.item())

grid = torch.linspace(0.5, 10, 200)
nll = torch.stack([nn.functional.cross_entropy(overconfident / t, targets) for t in grid])
best_t = grid[nll.argmin()].item()
print(f"learned temperature {head.temperature.item():.3f}; grid minimum at {best_t:.3f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(grid, nll)
left.axvline(head.temperature.item(), color="C1", linestyle="--", label="learned T")
left.set_xlabel("temperature T")
left.set_ylabel("negative log-likelihood")
left.legend()
right.plot(temperatures)
right.set_xlabel("step")
right.set_ylabel("T during training")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Check

# %%
clamp_history = histories["HardClamp"]
assert max(clamp_history) - min(clamp_history) < 1e-6, "the plain clamp should be stuck"
for name in ("HardClamp (straight-through)", "Box (smooth)", "SoftClip"):
    assert histories[name][-1] < 0.25 * histories[name][0], f"{name} should have learned"
for policy in policies.values():
    with torch.no_grad():
        assert bool((policy(wild_states).abs() <= 1).all())
assert bool((confidence["bounded"] <= cap + 1e-6).all())
assert confidence["unbounded"].median() > cap
bounded_head = classifiers["bounded"]
with torch.no_grad():
    assert bool((bounded_head(far).abs() <= bound).all())
    assert (bounded_head(points).argmax(-1) == labels).float().mean() > 0.85
assert abs(head.temperature.item() - best_t) < 0.1
assert all(0.05 < t < 20 for t in temperatures)
print("all checks passed")
