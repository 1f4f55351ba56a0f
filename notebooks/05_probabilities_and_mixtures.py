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
# # Probabilities and mixtures
#
# A Gaussian mixture has three kinds of parameters with three different sets: mixture weights that
# are non-negative and sum to one (the probability simplex), scales that are positive, and means
# that are free (here we will also keep them in increasing order). Fitting it by gradient descent on
# the likelihood is a classic way to see why those sets matter: leave one of them unconstrained and
# a single step can produce a negative weight, whose logarithm is NaN.
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
from torch.distributions import Normal

import paramshape as ps

torch.manual_seed(0)

# %% [markdown]
# ## Data
#
# 2000 draws from a mixture of three Gaussians.

# %%
true_weights = torch.tensor([0.5, 0.3, 0.2])
true_means = torch.tensor([-2.0, 0.5, 3.0])
true_scales = torch.tensor([0.5, 0.8, 0.4])
component = torch.multinomial(true_weights, 2000, replacement=True)
data = true_means[component] + true_scales[component] * torch.randn(2000)


def log_likelihood(weights: torch.Tensor, means: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Mean log-density of the data under the mixture."""
    per_component = weights.log() + Normal(means, scales).log_prob(data[:, None])
    return torch.logsumexp(per_component, dim=-1).mean()


# %% [markdown]
# ## Without constraints
#
# Plain parameters, with the weights normalised by their sum (a common shortcut). Normalising
# rescales the weights, but it cannot make a negative one positive.

# %%
weights = nn.Parameter(torch.full((3,), 1 / 3))
means = nn.Parameter(torch.tensor([-1.0, 0.0, 1.0]))
scales = nn.Parameter(torch.ones(3))
optimizer = torch.optim.Adam([weights, means, scales], lr=0.05)
failed_at = None
for step in range(600):
    loss = -log_likelihood(weights / weights.sum(), means, scales)
    if not torch.isfinite(loss):
        failed_at = step
        break
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"the loss became {loss.item()} at step {failed_at}; weights: {weights.detach()}")

# %% [markdown]
# After a handful of steps a weight crossed zero and the log-likelihood became NaN, and so would every
# gradient from there on. A scale could cross zero just as well (`Normal` then refuses it).
#
# ## With constraints
#
# Each parameter is declared with its set, in `__init__`:
#
# - `ps.Simplex()`: the weights are a softmax of stored logits, so they are positive and sum to one
#   at every step;
# - `ps.Positive()`: the scales are a softplus of stored values;
# - `ps.Ordered()`: the means increase. The likelihood does not care about the order of the
#   components, so without it the optimizer may swap them ("label switching"); ordered, component
#   $k$ is always the $k$-th from the left.


# %%
class GaussianMixture(nn.Module):
    def __init__(self, components: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((components,), 1 / components))
        self.means = nn.Parameter(torch.linspace(-1, 1, components))
        self.scales = nn.Parameter(torch.ones(components))
        ps.constrain(self, "weights", ps.Simplex())
        ps.constrain(self, "means", ps.Ordered())
        ps.constrain(self, "scales", ps.Positive())

    def forward(self) -> torch.Tensor:
        return log_likelihood(self.weights, self.means, self.scales)


mixture = GaussianMixture(3)
print(ps.constraints(mixture))
optimizer = torch.optim.Adam(mixture.parameters(), lr=0.05)
history = {"loss": [], "weights": [], "scales": [], "means": []}
for _ in range(600):
    loss = -mixture()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    history["loss"].append(loss.item())
    for name in ("weights", "scales", "means"):
        history[name].append(getattr(mixture, name).detach().clone())
for name in ("weights", "scales", "means"):
    history[name] = torch.stack(history[name])

print("weights:", mixture.weights.detach(), " true:", true_weights)
print("means:  ", mixture.means.detach(), " true:", true_means)
print("scales: ", mixture.scales.detach(), " true:", true_scales)

# %%
grid = torch.linspace(-4.5, 5, 400)
with torch.no_grad():
    parts = mixture.weights * Normal(mixture.means, mixture.scales).log_prob(grid[:, None]).exp()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
left.hist(data, bins=60, density=True, color="0.8", label="data")
left.plot(grid, parts.sum(-1), color="k", label="fitted mixture")
for k in range(3):
    left.plot(grid, parts[:, k], linestyle="--", label=f"component {k}")
left.legend(fontsize=8)
left.set_title("fitted density")
right.stackplot(range(600), history["weights"].T, labels=[f"weight {k}" for k in range(3)])
right.set_ylim(0, 1)
right.set_xlabel("step")
right.set_title("mixture weights during training (they always sum to 1)")
right.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# The fit recovers the three components. Because the weights are a softmax, they sum to one at every
# step, not just at the end, and no scale ever reached zero.
#
# ## Setting values
#
# Assigning a constrained parameter stores it through the inverse map, after checking it: a
# starting point from another estimate (say, k-means) is one assignment, and a bad one is refused.

# %%
restart = GaussianMixture(3)
restart.weights = torch.tensor([0.4, 0.4, 0.2])
restart.means = torch.tensor([-2.5, 0.0, 2.5])
print("assigned:", restart.weights.detach(), restart.means.detach())
try:
    restart.weights = torch.tensor([0.7, 0.4, -0.1])
except ps.InfeasibleValueError as error:
    print("refused:", error)
try:
    restart.means = torch.tensor([0.0, -1.0, 1.0])
except ps.InfeasibleValueError as error:
    print("refused:", error)

# %% [markdown]
# ## Learned weights that sum to one, inside a model
#
# The same constraint serves any learned convex combination: here, the weights of an ensemble of
# three fixed predictors of different quality. The best combination puts most weight on the best
# predictor, without any weight going negative or the total drifting away from one.

# %%
inputs = torch.randn(500, 1)
truth = torch.sin(2 * inputs)
predictors = torch.cat(
    [truth + 0.1 * torch.randn_like(truth), truth + 0.5 * torch.randn_like(truth), -truth], dim=1
)

ensemble = nn.Module()
ensemble.mix = nn.Parameter(torch.full((3,), 1 / 3))
ps.constrain(ensemble, "mix", "simplex")
optimizer = torch.optim.Adam(ensemble.parameters(), lr=0.05)
for _ in range(300):
    loss = (predictors @ ensemble.mix - truth.squeeze(-1)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("ensemble weights:", ensemble.mix.detach())

# %% [markdown]
# ## Check

# %%
assert failed_at is not None, "the unconstrained fit should have failed"
assert torch.allclose(history["weights"].sum(-1), torch.ones(600), atol=1e-5)
assert bool((history["weights"] > 0).all())
assert bool((history["scales"] > 0).all())
assert bool((history["means"].diff(dim=-1) > 0).all()), "the means should stay ordered"
assert torch.allclose(mixture.weights.detach(), true_weights, atol=0.05)
assert torch.allclose(mixture.means.detach(), true_means, atol=0.15)
assert torch.allclose(mixture.scales.detach(), true_scales, atol=0.1)
assert -history["loss"][-1] >= log_likelihood(true_weights, true_means, true_scales).item() - 1e-3
assert torch.allclose(restart.weights.detach(), torch.tensor([0.4, 0.4, 0.2]))
assert ensemble.mix.argmax().item() == 0
assert ensemble.mix[2].item() < 0.05
assert abs(ensemble.mix.sum().item() - 1) < 1e-5
print("all checks passed")
