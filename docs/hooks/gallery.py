"""mkdocs hook: the gallery page, a plot of every elementwise transform and its derivative.

Drawn at build time from the installed paramshape, so the pictures always show the code as it is:
the page ``gallery/`` and one SVG per transform (``gallery/<name>.svg``, also shown on the
transforms page). Every registered transform whose elements are single values must have an entry in
``EXAMPLES``; a new one without it is reported as a warning, which fails the strict build.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from torch import nn

import paramshape as ps
from paramshape.transforms.registry import registered_class

log = logging.getLogger("mkdocs.hooks.gallery")


@dataclass
class Entry:
    """One plot: the curves to draw (label, module), the x range, the y range and the bounds."""

    title: str
    curves: list[tuple[str, nn.Module]]
    api: str
    note: str
    x_range: tuple[float, float] = (-6.0, 6.0)
    y_range: tuple[float, float] | None = None
    bounds: tuple[float, ...] = ()
    identity: bool = False
    xlabel: str = "x (unconstrained)"


# Registered elementwise transforms, by registry name.
EXAMPLES: dict[str, Entry] = {
    "box": Entry(
        "Box(-1, 1)",
        [("Box(-1, 1)", ps.Box(-1.0, 1.0))],
        "paramshape.Box",
        "c + r tanh(x / r): slope 1 at the centre, whatever the width, so learning rates carry over; "
        "smooth, never on a bound, flat (saturated) close to either bound.",
        bounds=(-1.0, 1.0),
        y_range=(-1.5, 1.5),
    ),
    "unit_interval": Entry(
        "UnitInterval()",
        [("UnitInterval()", ps.UnitInterval())],
        "paramshape.UnitInterval",
        "Box(0, 1): sigmoid(4x), slope 1 at the centre.",
        bounds=(0.0, 1.0),
        y_range=(-0.25, 1.25),
    ),
    "positive": Entry(
        "Positive()",
        [("softplus (default)", ps.Positive()), ("method='exp'", ps.Positive(method="exp"))],
        "paramshape.Positive",
        "0.25 softplus(4x) grows with slope 1 (0.98 at y = 1), so a step on the stored value moves the "
        "value by about as much; exp multiplies it.",
        bounds=(0.0,),
        y_range=(-0.5, 6.5),
    ),
    "greater_than": Entry(
        "GreaterThan(0.5)",
        [("GreaterThan(0.5)", ps.GreaterThan(0.5))],
        "paramshape.GreaterThan",
        "low + 0.25 softplus(4x): nearly the identity above the bound, multiplicative close to it.",
        bounds=(0.5,),
        y_range=(-0.5, 6.5),
    ),
    "less_than": Entry(
        "LessThan(-1)",
        [("LessThan(-1)", ps.LessThan(-1.0))],
        "paramshape.LessThan",
        "The mirror image: increasing, below the bound.",
        bounds=(-1.0,),
        y_range=(-7.5, 0.5),
    ),
    "soft_clip": Entry(
        "SoftClip(-2, 2)",
        [("softness=0.02 (default)", ps.SoftClip(-2.0, 2.0)), ("softness=0.2", ps.SoftClip(-2.0, 2.0, 0.2))],
        "paramshape.SoftClip",
        "The identity inside the box (slope 1), bending smoothly into each bound.",
        bounds=(-2.0, 2.0),
        y_range=(-3.0, 3.0),
        identity=True,
    ),
    "affine": Entry(
        "Affine(1, 0.5)",
        [("Affine(1, 0.5)", ps.Affine(1.0, 0.5))],
        "paramshape.Affine",
        "A rescaling of the real line, for parameters of very different scales; the set is unchanged.",
        identity=True,
        y_range=(-6.0, 6.0),
    ),
    "compose": Entry(
        "Compose(Box(-1, 1), Affine(0, 3))",
        [("Compose(Box(-1, 1), Affine(0, 3))", ps.Compose(ps.Box(-1.0, 1.0), ps.Affine(0.0, 3.0)))],
        "paramshape.Compose",
        "Transforms applied in order: here a box, then a scale, giving (-3, 3).",
        bounds=(-3.0, 3.0),
        y_range=(-4.0, 4.0),
    ),
}

# Output layers that are not transforms (no inverse), shown for comparison with the smooth maps.
LAYERS: dict[str, Entry] = {
    "hard_clamp": Entry(
        "HardClamp(-1, 1)",
        [
            ("HardClamp(-1, 1)", ps.HardClamp(-1.0, 1.0)),
            ("straight_through=True", ps.HardClamp(-1.0, 1.0, straight_through=True)),
        ],
        "paramshape.HardClamp",
        "torch.clamp as a layer: exact bounds, a zero gradient beyond them. The straight-through "
        "variant has the same values and passes the gradient as if there were no clamp.",
        x_range=(-3.0, 3.0),
        bounds=(-1.0, 1.0),
        y_range=(-1.5, 1.5),
        xlabel="input x",
    ),
    "bounded_relu": Entry(
        "BoundedReLU(6)",
        [("BoundedReLU(6)", ps.BoundedReLU(6.0))],
        "paramshape.BoundedReLU",
        "ReLU6: zero below 0, capped at 6, with a zero gradient outside (0, 6).",
        x_range=(-3.0, 9.0),
        bounds=(0.0, 6.0),
        y_range=(-1.0, 7.0),
        xlabel="input x",
    ),
}

COLOURS = ("#3949ab", "#e65100", "#2e7d32")


def _curve(module: nn.Module, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = xs.clone().requires_grad_(True)
    y = module.double()(x)
    (slope,) = torch.autograd.grad(y.sum(), x)
    return y.detach(), slope.detach()


def draw(entry: Entry) -> bytes:
    """The two panels of one entry (value and derivative) as SVG bytes, deterministic."""
    xs = torch.linspace(*entry.x_range, 601, dtype=torch.float64)
    with plt.rc_context({"svg.hashsalt": "paramshape", "svg.fonttype": "none", "font.size": 9}):
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.2, 2.6), constrained_layout=True)
        for colour, (label, module) in zip(COLOURS, entry.curves, strict=False):
            y, slope = _curve(module, xs)
            style = "--" if len(entry.curves) > 1 and colour != COLOURS[0] else "-"
            left.plot(xs, y, color=colour, linestyle=style, linewidth=1.8, label=label)
            right.plot(xs, slope, color=colour, linestyle=style, linewidth=1.8, label=label)
        for bound in entry.bounds:
            left.axhline(bound, color="#c62828", linestyle=":", linewidth=1.0)
        if entry.identity:
            left.plot(xs, xs, color="#9e9e9e", linestyle=":", linewidth=1.0, label="y = x")
        if entry.y_range is not None:
            left.set_ylim(*entry.y_range)
        left.set_title(f"{entry.title}: value f(x)")
        right.set_title("derivative f'(x)")
        right.set_ylim(bottom=min(-0.05, right.get_ylim()[0]))
        for axes in (left, right):
            axes.set_xlabel(entry.xlabel)
            axes.grid(alpha=0.3)
            axes.set_xlim(*entry.x_range)
        if len(entry.curves) > 1 or entry.identity:
            left.legend(loc="best", fontsize=8, frameon=False)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None})
        plt.close(fig)
    return buffer.getvalue()


def _section(name: str, entry: Entry, registered: bool) -> str:
    kind = f"`{name}` · " if registered else ""
    api_name = entry.api.rsplit(".", 1)[-1]
    return (
        f"## {entry.title}\n\n"
        f"{kind}[`{api_name}`][{entry.api}]: {entry.note}\n\n"
        f"![{entry.title} and its derivative]({name}.svg)\n"
    )


def elementwise_names() -> list[str]:
    return [name for name in ps.available() if registered_class(name).event_dim == 0]


def structured_names() -> list[str]:
    return [name for name in ps.available() if registered_class(name).event_dim != 0]


def page() -> tuple[str, dict[str, bytes]]:
    """The gallery page's Markdown and its pictures."""
    pictures: dict[str, bytes] = {}
    sections = []
    for name in elementwise_names():
        entry = EXAMPLES.get(name)
        if entry is None:
            log.warning(
                "The registered elementwise transform %r has no plot: add an Entry for it to EXAMPLES "
                "in docs/hooks/gallery.py.",
                name,
            )
            continue
        pictures[name] = draw(entry)
        sections.append(_section(name, entry, registered=True))
    layers = []
    for name, entry in LAYERS.items():
        pictures[name] = draw(entry)
        layers.append(_section(name, entry, registered=False))
    others = ", ".join(f"`{name}`" for name in structured_names())
    text = (
        "# Gallery\n\n"
        "Every registered elementwise transform, drawn from the installed code when this site was "
        "built: on the left the value $f(x)$ against the unconstrained $x$ the optimizer moves "
        "(dotted red lines: the bounds), on the right the derivative $f'(x)$, which scales every "
        "gradient step. Where the derivative fades, steps on $x$ barely move the value; where it is "
        "zero, nothing moves it at all.\n\n"
        "Transforms of slices and matrices "
        f"({others}) are described on the [transforms page](../transforms.md) and used in the "
        "tutorial on [structured parameters](../tutorials/06_structured_parameters.py).\n\n"
        + "\n".join(sections)
        + "\n# Output layers\n\n"
        "Layers for bounding what a module returns that are not transforms (they have no inverse). "
        "Compare their derivatives with the smooth maps above; the "
        "[bounded outputs page](../bounded-outputs.md) says when to use which.\n\n" + "\n".join(layers)
    )
    return text, pictures


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    text, pictures = page()
    files.append(File.generated(config, "gallery/index.md", content=text))
    for name, svg in pictures.items():
        files.append(File.generated(config, f"gallery/{name}.svg", content=svg))
    return files
