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
# # Structured parameters
#
# Some constraints tie the entries of a tensor together: cut-points that must increase, a covariance
# matrix that must be symmetric positive definite, rows that must have unit length, a correlation
# matrix with ones on its diagonal. Each is one `ps.constrain` call, and the optimizer sees an
# ordinary unconstrained tensor. This notebook fits one small model for each.
#
# Runs on CPU in about ten seconds; needs `torch`, `paramshape` and `matplotlib`.

# %%
import math
import sys

import matplotlib

if "ipykernel" not in sys.modules:  # run as a script (CI): draw off-screen
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.distributions import MultivariateNormal

import paramshape as ps

torch.manual_seed(0)


def fit(model: nn.Module, loss_fn, steps: int, lr: float, record=None) -> list:
    """Adam on ``loss_fn()``; returns ``record()`` after every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    trace = []
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if record is not None:
            trace.append(record())
    return trace


# %% [markdown]
# ## Ordered cut-points: ordinal regression
#
# Ratings from 0 to 3 come from a latent score $z = x^\top \beta + \varepsilon$ (logistic noise),
# cut at three thresholds $c_0 < c_1 < c_2$: the rating is the number of thresholds below $z$. The
# model gives $P(\text{rating} \le k) = \sigma(c_k - x^\top\beta)$, which is a probability only if
# the thresholds increase; `ps.Ordered()` keeps them so at every step.

# %%
true_beta = torch.tensor([1.0, -2.0])
true_cuts = torch.tensor([-1.5, 0.0, 2.0])
features = torch.randn(3000, 2)
uniform = torch.rand(3000)
latent = features @ true_beta + torch.log(uniform) - torch.log1p(-uniform)  # logistic noise
ratings = (latent[:, None] > true_cuts).sum(-1)


class OrdinalRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(2))
        self.cuts = nn.Parameter(torch.tensor([-0.1, 0.0, 0.1]))
        ps.constrain(self, "cuts", ps.Ordered())

    def log_likelihood(self) -> torch.Tensor:
        below = torch.sigmoid(self.cuts - (features @ self.beta)[:, None])  # P(rating <= k), k = 0..2
        cumulative = torch.cat([torch.zeros(len(features), 1), below, torch.ones(len(features), 1)], -1)
        probabilities = cumulative.diff(dim=-1)  # P(rating = k), k = 0..3
        return probabilities.gather(-1, ratings[:, None]).clamp_min(1e-12).log().mean()


ordinal = OrdinalRegression()
cut_trace = torch.stack(
    fit(ordinal, lambda: -ordinal.log_likelihood(), 500, 0.05, lambda: ordinal.cuts.detach().clone())
)
print("cut-points:", ordinal.cuts.detach(), " true:", true_cuts)
print("beta:      ", ordinal.beta.detach(), " true:", true_beta)

# %% [markdown]
# ## A covariance matrix learned by gradient descent
#
# Fit the mean and covariance of 2-dimensional data by maximum likelihood. The covariance must be
# symmetric positive definite, or `MultivariateNormal` refuses it (and its Cholesky factorisation
# fails). `ps.PositiveDefinite()` maps any stored matrix to one that is, with a margin that keeps the
# factorisation from failing in floating point. The maximum-likelihood answer is known in closed form
# (the sample covariance), so we can check the fit.

# %%
true_cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]])
points = MultivariateNormal(torch.tensor([1.0, -1.0]), true_cov).sample((2000,))


class Gaussian(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(size))
        self.cov = nn.Parameter(torch.eye(size))
        ps.constrain(self, "cov", ps.PositiveDefinite())

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return MultivariateNormal(self.loc, covariance_matrix=self.cov).log_prob(x).mean()


gaussian = Gaussian(2)
eigen_trace = torch.stack(
    fit(
        gaussian,
        lambda: -gaussian.log_likelihood(points),
        600,
        0.05,
        lambda: torch.linalg.eigvalsh(gaussian.cov.detach()),
    )
)
sample_cov = torch.cov(points.T, correction=0)
print("fitted covariance:\n", gaussian.cov.detach())
print("sample covariance:\n", sample_cov)
print("smallest eigenvalue seen during training:", eigen_trace.min().item())


# %%
def ellipse(cov: torch.Tensor, centre: torch.Tensor, scale: float = 2.0) -> torch.Tensor:
    angles = torch.linspace(0, 2 * math.pi, 200)
    circle = torch.stack([angles.cos(), angles.sin()], -1)
    return centre + scale * circle @ torch.linalg.cholesky(cov).T


fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.plot(cut_trace)
for cut in true_cuts:
    left.axhline(cut, color="0.6", linestyle=":")
left.set_xlabel("step")
left.set_title("ordinal cut-points (dotted: true values); they never cross")
right.scatter(*points.T, s=3, color="0.75")
fitted = ellipse(gaussian.cov.detach(), gaussian.loc.detach())
truth = ellipse(true_cov, torch.tensor([1.0, -1.0]))
right.plot(*fitted.T, label="fitted covariance (2 sd)")
right.plot(*truth.T, linestyle="--", label="true covariance")
right.set_aspect("equal")
right.legend(fontsize=8)
right.set_title("covariance learned by gradient descent")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Unit-norm rows: a cosine classifier
#
# In a cosine classifier the logits are the cosines between an input's direction and one prototype
# per class, times a fixed scale; only directions matter. `ps.UnitNorm(dim=-1)` keeps each row of the
# prototype matrix at length one. Here four classes are defined by direction only: their points lie
# at very different distances from the origin.

# %%
class_angles = torch.tensor([0.3, 1.9, 3.4, 4.9])
labels = torch.arange(4).repeat_interleave(250)
radius = 0.5 + 2.5 * torch.rand(1000)
angle = class_angles[labels] + 0.25 * torch.randn(1000)
inputs = radius[:, None] * torch.stack([angle.cos(), angle.sin()], -1)

prototypes = nn.Linear(2, 4, bias=False)
ps.constrain(prototypes, "weight", ps.UnitNorm(dim=-1), init="raw")


def cosine_loss() -> torch.Tensor:
    logits = 10.0 * nn.functional.normalize(inputs, dim=-1) @ prototypes.weight.T
    return nn.functional.cross_entropy(logits, labels)


norm_trace = torch.stack(
    fit(prototypes, cosine_loss, 300, 0.05, lambda: prototypes.weight.detach().norm(dim=-1))
)
with torch.no_grad():
    accuracy = ((inputs @ prototypes.weight.T).argmax(-1) == labels).float().mean().item()
    directions = torch.stack([class_angles.cos(), class_angles.sin()], -1)
    alignment = (prototypes.weight * directions).sum(-1)
print(f"accuracy {accuracy:.1%}; cosine between each prototype and its class direction: {alignment}")

# %% [markdown]
# ## Correlation matrices: `CorrCholesky`
#
# To learn correlations separately from scales, write the covariance as
# $\Sigma = D L L^\top D$ with $D$ the diagonal of standard deviations and $L$ the Cholesky factor of
# a correlation matrix: lower-triangular with unit-length rows, so $L L^\top$ has ones on its
# diagonal. `ps.CorrCholesky()` keeps $L$ in that set; `ps.Positive()` keeps the scales positive.
# (`CorrCholesky` is also the support of torch's `LKJCholesky` prior, whose density can be added to
# the loss.)

# %%
true_corr = torch.tensor([[1.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 1.0]])
true_sd = torch.tensor([0.5, 2.0, 10.0])
samples = MultivariateNormal(torch.zeros(3), true_sd[:, None] * true_corr * true_sd).sample((3000,))


class CorrelatedGaussian(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.corr_factor = nn.Parameter(torch.eye(size))
        ps.constrain(self, "scale", ps.Positive())
        ps.constrain(self, "corr_factor", ps.CorrCholesky())

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        scale_tril = self.scale[:, None] * self.corr_factor
        return MultivariateNormal(torch.zeros(len(self.scale)), scale_tril=scale_tril).log_prob(x).mean()


correlated = CorrelatedGaussian(3)
correlated.scale = samples.std(dim=0)  # start from the data's scales: assignment goes through the inverse
fit(correlated, lambda: -correlated.log_likelihood(samples), 400, 0.05)
factor = correlated.corr_factor.detach()
fitted_corr = factor @ factor.T
sample_corr = torch.corrcoef(samples.T)
print("fitted correlation:\n", fitted_corr)
print("fitted scales:", correlated.scale.detach(), " true:", true_sd)

fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
for axes_, matrix, title in zip(
    axes, (true_corr, sample_corr, fitted_corr), ("true", "sample", "fitted (L Lᵀ)"), strict=True
):
    image = axes_.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(3):
        for j in range(3):
            colour = "white" if abs(matrix[i, j]) > 0.5 else "black"
            axes_.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=9, color=colour)
    axes_.set_title(f"{title} correlation")
    axes_.set_xticks([])
    axes_.set_yticks([])
fig.colorbar(image, ax=axes, shrink=0.8)
plt.show()

# %% [markdown]
# ## Norm balls, spectral bounds and low rank
#
# Three more sets shape whole slices or matrices.
#
# * `ps.MaxNorm(r, dim=...)` keeps the weights into each output unit inside a ball of radius `r`
#   (Keras's `MaxNorm`). A slice may span several dims: `dim=(1, 2, 3)` gives one ball per output
#   channel of a `Conv2d` kernel `(out, in, kh, kw)`.
# * `ps.SpectralBound(c)` keeps the largest singular value of a matrix at most `c`, so the layer is
#   `c`-Lipschitz; `conv=True` bounds a convolution's operator norm, which the spectral norm of its
#   reshaped kernel does not (it can be up to `sqrt(kh kw)` times smaller).
# * `ps.PositiveSemidefinite(rank=r)` stores an `n x r` factor `B` and shows `B Bᵀ`: a positive
#   semi-definite matrix of rank at most `r`, with `n r` numbers instead of `n²`.
#
# Below, a conv layer and a linear layer are asked to amplify their input 3-fold, more than their sets
# allow: both end on the boundary of their set, not beyond. Then a rank-2 Gram matrix is recovered from
# noisy entries.

# %%
torch.manual_seed(1)  # this section's draws do not depend on the sections above
images = torch.randn(64, 2, 8, 8)
conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
ps.constrain(conv, "weight", ps.MaxNorm(1.0, dim=(1, 2, 3)), init="sample")
target_maps = 3 * nn.functional.avg_pool2d(images.sum(1, keepdim=True), 3, 1, 1).expand(-1, 4, -1, -1)
channel_norms = torch.stack(
    fit(conv, lambda: (conv(images) - target_maps).pow(2).mean(), 150, 0.05,
        lambda: conv.weight.detach().flatten(1).norm(dim=1))
)  # fmt: skip

lipschitz = nn.Linear(5, 5, bias=False)
ps.constrain(lipschitz, "weight", ps.SpectralBound(1.0), init="sample")
points = torch.randn(256, 5)
fit(lipschitz, lambda: (lipschitz(points) - 3 * points).pow(2).mean(), 200, 0.05)
singular_values = torch.linalg.svdvals(lipschitz.weight.detach())

torch.manual_seed(0)  # this fit's data and start do not depend on how much randomness the cells above drew
basis = torch.randn(12, 2)
gram_target = basis @ basis.T
noisy = gram_target + 0.05 * torch.randn(12, 12)
kernel = nn.Module()
kernel.matrix = nn.Parameter(torch.zeros(12, 12))
ps.constrain(kernel, "matrix", ps.PositiveSemidefinite(rank=2), init="sample")
fit(kernel, lambda: (kernel.matrix - noisy).pow(2).mean(), 400, 0.05)
kernel_eigenvalues = torch.linalg.eigvalsh(kernel.matrix.detach().double())
print("largest channel norm of the conv kernel:", channel_norms[-1].max().item())
print("singular values of the 1-Lipschitz layer:", singular_values)
print("stored factor:", tuple(kernel.parametrizations.matrix.original.shape),
      "; eigenvalues of B Bᵀ:", kernel_eigenvalues[-4:])  # fmt: skip

fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(channel_norms.numpy())
axes[0].axhline(1.0, color="red", linestyle=":")
axes[0].set(title="MaxNorm(1, dim=(1, 2, 3)): per-channel norms", xlabel="step")
axes[1].bar(range(12), kernel_eigenvalues.flip(0).numpy())
axes[1].set(title="PositiveSemidefinite(rank=2): eigenvalues", xlabel="index")
plt.show()

# %% [markdown]
# ## Complex tensors: a unitary layer and a Hermitian Hamiltonian
#
# `ps.Unitary()` keeps a complex weight unitary (`Uᴴ U = I`: it preserves the norm of every complex
# input, as in unitary RNNs and quantum-circuit layers) and `ps.Hermitian()` keeps a complex matrix
# Hermitian (`Hᴴ = H`: real eigenvalues, a Hamiltonian). Both take `complex64` and `complex128`
# tensors; the sets of real tensors refuse complex ones. The loss is a real number computed from the
# complex values, and the optimizers step the complex stored tensors.
#
# Below, a unitary layer learns an unknown unitary map from input/output pairs, and a Hermitian
# matrix is fitted to noisy measurements of a Hamiltonian's entries.

# %%
torch.manual_seed(2)  # this section's draws do not depend on the sections above
true_unitary = ps.Unitary().sample((4, 4), dtype=torch.complex64)
signals = torch.randn(128, 4, dtype=torch.complex64)
rotated = signals @ true_unitary.mT
unitary_layer = nn.Linear(4, 4, bias=False, dtype=torch.complex64)
ps.constrain(unitary_layer, "weight", ps.Unitary(), init="sample")
unitary_gap = fit(unitary_layer, lambda: (unitary_layer(signals) - rotated).abs().pow(2).mean(), 300, 0.05,
                  lambda: (unitary_layer.weight.detach() - true_unitary).abs().max().item())  # fmt: skip
weight = unitary_layer.weight.detach()
deviation = (weight.mH @ weight - torch.eye(4, dtype=torch.complex64)).abs().max().item()

hamiltonian_true = ps.Hermitian().sample((5, 5), dtype=torch.complex64)
measured = hamiltonian_true + 0.05 * torch.randn(5, 5, dtype=torch.complex64)
system = nn.Module()
system.hamiltonian = nn.Parameter(torch.zeros(5, 5, dtype=torch.complex64))
ps.constrain(system, "hamiltonian", ps.Hermitian(), init="sample")
fit(system, lambda: (system.hamiltonian - measured).abs().pow(2).sum(), 300, 0.05)
fitted_hamiltonian = system.hamiltonian.detach()
print("largest |U - U_true| after training:", unitary_gap[-1], "; |UᴴU - I| =", deviation)
print("Hamiltonian eigenvalues (real):", torch.linalg.eigvalsh(fitted_hamiltonian))

fig, ax = plt.subplots(figsize=(4.5, 3))
ax.semilogy(unitary_gap)
ax.set(title="Unitary layer: distance to the true map", xlabel="step")
plt.show()

# %% [markdown]
# ## Subspaces, low rank, volume and transport
#
# Four more matrix sets, each fitted to a target it can only approach.
#
# * `ps.Grassmannian()` holds a `k`-dimensional subspace as an `n x k` orthonormal basis. With
#   `method="riemannian"` the steps follow the quotient geometry: maximising `tr(Qᵀ A Q)` finds the
#   top-`k` eigenspace of `A` (PCA), whatever rotation of the basis it lands on.
# * `ps.LowRank(rank=r)` stores an `m x n` matrix as two factors `A (m x r)` and `B (n x r)` and shows
#   `A Bᵀ`; fitting a full matrix reaches its best rank-`r` approximation (Eckart-Young).
# * `ps.SpecialLinear()` keeps `det = 1`. Asked for `2 I` (determinant 8), the fit does not land on
#   `I` (squared distance 3) but on `diag(φ, φ, 1/φ²)` with φ the golden ratio (squared distance
#   2.91): the nearest matrix of determinant 1, from the Lagrange condition `d - 2 = λ / d`.
# * `ps.DoublyStochastic()` keeps rows and columns summing to 1 (Sinkhorn): a soft assignment.

# %%
torch.manual_seed(2)
rotation = torch.linalg.qr(torch.randn(6, 6)).Q
spectrum = torch.tensor([5.0, 4.0, 1.0, 0.5, 0.2, 0.1])
covariance = rotation @ torch.diag(spectrum) @ rotation.T
pca = nn.Module()
pca.basis = nn.Parameter(torch.linalg.qr(torch.randn(6, 2)).Q)
ps.constrain(pca, "basis", ps.Grassmannian(), method="riemannian")
fit(pca, lambda: -torch.trace(pca.basis.T @ covariance @ pca.basis), 300, 0.05)
top_projector = rotation[:, :2] @ rotation[:, :2].T
subspace_error = (pca.basis.detach() @ pca.basis.detach().T - top_projector).abs().max().item()

full = torch.randn(8, 10)
compressed = ps.constrain(nn.Linear(10, 8, bias=False), "weight", ps.LowRank(rank=3), init="sample")
fit(compressed, lambda: (compressed.weight - full).pow(2).sum(), 500, 0.1)
best_rank3 = ps.LowRank(rank=3).project(full)

volume = nn.Linear(3, 3, bias=False)
with torch.no_grad():
    volume.weight.copy_(torch.diag(torch.tensor([2.0, 1.0, 0.5])))  # det 1: kept exactly
ps.constrain(volume, "weight", ps.SpecialLinear())
fit(volume, lambda: (volume.weight - 2 * torch.eye(3)).pow(2).sum(), 300, 0.05)
volume_det = torch.linalg.det(volume.weight.detach().double()).item()

scores = torch.randn(5, 5)
assignment = ps.constrain(nn.Linear(5, 5, bias=False), "weight", ps.DoublyStochastic(), init="sample")
fit(
    assignment,
    lambda: (
        -(assignment.weight * scores).sum()
        + 0.1 * (assignment.weight * assignment.weight.clamp_min(1e-12).log()).sum()
    ),
    200,
    0.1,
)
plan = assignment.weight.detach()
print("largest entry of QQᵀ - (top-2 projector):", subspace_error)
print("low-rank fit vs the best rank-3 matrix:", (compressed.weight.detach() - best_rank3).abs().max().item())
print("det of the SL(3) fit to 2 I:", volume_det, "(the fit is", torch.diagonal(volume.weight.detach()), ")")
print("row sums", plan.sum(1), "column sums", plan.sum(0))

# %% [markdown]
# ## Check

# %%
assert bool((cut_trace.diff(dim=-1) > 0).all()), "the cut-points crossed"
assert torch.allclose(ordinal.cuts.detach(), true_cuts, atol=0.2)
assert torch.allclose(ordinal.beta.detach(), true_beta, atol=0.15)
assert bool((eigen_trace > 0).all()), "the covariance left the positive definite matrices"
assert torch.allclose(gaussian.cov.detach(), sample_cov, atol=1e-2)
assert torch.equal(gaussian.cov.detach(), gaussian.cov.detach().T)
assert torch.allclose(norm_trace, torch.ones_like(norm_trace), atol=1e-5)
assert accuracy > 0.9
assert bool((alignment > 0.95).all())
assert torch.allclose(torch.diagonal(fitted_corr), torch.ones(3), atol=1e-5)
assert torch.allclose(fitted_corr, sample_corr, atol=0.02)
assert torch.allclose(correlated.scale.detach(), true_sd, rtol=0.05)
assert bool((channel_norms <= 1.0 + 1e-5).all()), "a conv channel left its ball"
assert channel_norms[-1].min() > 0.9, "the loss pushes every channel to its sphere"
assert singular_values.max() <= 1.0 + 1e-5
assert singular_values.min() > 0.9, "every direction is pushed towards the bound"
assert kernel.parametrizations.matrix.original.shape == (12, 2)
assert kernel_eigenvalues[:-2].abs().max() < 1e-4, "rank at most 2"
# The optimum of a rank-2 PSD fit is the best rank-2 approximation of the symmetric part of the
# target (its two largest eigenpairs, Eckart-Young): the fit must reach it, not the noise-free Gram.
target_values, target_vectors = torch.linalg.eigh((noisy + noisy.T) / 2)
best = target_vectors[:, -2:] @ torch.diag(target_values[-2:].clamp_min(0)) @ target_vectors[:, -2:].T
assert torch.allclose(kernel.matrix.detach(), best, atol=1e-3)
assert deviation < 1e-5, "the layer left the unitary matrices"
assert unitary_gap[-1] < 1e-2, "the unitary layer did not learn the map"
assert torch.equal(fitted_hamiltonian, fitted_hamiltonian.mH), "not exactly Hermitian"
# The nearest Hermitian matrix to the measurements is their Hermitian part.
assert torch.allclose(fitted_hamiltonian, (measured + measured.mH) / 2, atol=1e-4)
assert subspace_error < 1e-3, "PCA by Riemannian steps reaches the top eigenspace"
assert torch.allclose(compressed.weight.detach(), best_rank3, atol=1e-3)
assert abs(volume_det - 1) < 1e-4
golden = (1 + 5**0.5) / 2
nearest = torch.tensor([1 / golden**2, golden, golden])
assert torch.allclose(torch.diagonal(volume.weight.detach()).sort().values, nearest, atol=1e-2)
assert torch.allclose(plan.sum(0), torch.ones(5), atol=1e-5)
assert torch.allclose(plan.sum(1), torch.ones(5), atol=1e-5)
assert bool((plan >= 0).all())
print("all checks passed")
