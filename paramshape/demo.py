"""The demo behind ``python -m paramshape demo``: fit a constrained model to built-in data.

A three-component Gaussian mixture is fitted by maximum likelihood to 2,000 points drawn (with a
fixed seed) from a known mixture. Every parameter has a constraint: the mixture weights lie on the
simplex, the scales are positive, the locations stay in a box. Adam moves the unconstrained tensors
freely; the table shows the constrained values staying in their sets while the loss falls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from paramshape.attach.constrain import constrain, constraints

__all__ = ["GaussianMixture", "main", "make_data"]

TRUE_WEIGHTS = (0.5, 0.3, 0.2)
TRUE_LOCATIONS = (-2.0, 0.5, 3.0)
TRUE_SCALES = (0.6, 0.3, 0.9)


class GaussianMixture(nn.Module):
    """A one-dimensional mixture of ``components`` Gaussians with plain parameters."""

    def __init__(self, components: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((components,), 1.0 / components))
        self.locations = nn.Parameter(torch.linspace(-1.0, 1.0, components))
        self.scales = nn.Parameter(torch.ones(components))

    def forward(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood of the points ``x``."""
        z = (x[:, None] - self.locations) / self.scales
        log_density = -0.5 * z.square() - torch.log(self.scales) - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(log_density + torch.log(self.weights), dim=1).mean()


def make_data(count: int = 2000, seed: int = 0) -> Tensor:
    """Points drawn from the true mixture, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    components = torch.multinomial(torch.tensor(TRUE_WEIGHTS), count, replacement=True, generator=generator)
    noise = torch.randn(count, generator=generator)
    return torch.tensor(TRUE_LOCATIONS)[components] + torch.tensor(TRUE_SCALES)[components] * noise


def main(steps: int = 300, report_every: int = 50) -> GaussianMixture:
    """Fit the mixture and print a table; return the fitted model."""
    torch.manual_seed(0)
    data = make_data()
    model = GaussianMixture(components=3)
    constrain(model, "weights", "simplex")
    constrain(model, "scales", "positive")
    constrain(model, "locations", "box(-5, 5)")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    print("paramshape demo: fitting a 3-component Gaussian mixture to 2,000 built-in points")
    for name, transform in constraints(model).items():
        print(f"  {name:<10} {transform!r}")
    header = (
        f"{'step':>5} {'loss':>8} {'sum(weights)':>13} {'min weight':>11} {'min scale':>10} "
        f"{'max |loc|':>10} {'in sets':>8}"
    )
    print(header)
    print("-" * len(header))
    for step in range(steps + 1):
        loss = model(data)
        if step % report_every == 0:
            _print_row(step, loss, model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _print_fit(model)
    return model


def _print_row(step: int, loss: Tensor, model: GaussianMixture) -> None:
    with torch.no_grad():
        weights, scales, locations = model.weights, model.scales, model.locations
        feasible = all(
            bool(transform.contains(getattr(model, name)).all())
            for name, transform in constraints(model).items()
        )
        print(
            f"{step:>5} {loss.item():>8.4f} {weights.sum().item():>13.6f} "
            f"{weights.min().item():>11.4f} {scales.min().item():>10.4f} "
            f"{locations.abs().max().item():>10.4f} {'yes' if feasible else 'NO':>8}"
        )


def _print_fit(model: GaussianMixture) -> None:
    order = torch.argsort(model.locations.detach())
    print("\nfitted vs true (components sorted by location):")
    for label, fitted, true in (
        ("weights", model.weights, TRUE_WEIGHTS),
        ("locations", model.locations, TRUE_LOCATIONS),
        ("scales", model.scales, TRUE_SCALES),
    ):
        values = ", ".join(f"{v:6.3f}" for v in fitted.detach()[order].tolist())
        truth = ", ".join(f"{v:6.3f}" for v in true)
        print(f"  {label:<10} fitted [{values}]  true [{truth}]")
