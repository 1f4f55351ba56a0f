"""Command line: ``python -m paramshape demo`` runs the demo, ``python -m paramshape list`` lists
the registered transforms."""

from __future__ import annotations

import argparse
import sys

from paramshape.transforms.registry import available, registered_class


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m paramshape`` and of the ``paramshape`` script."""
    parser = argparse.ArgumentParser(prog="paramshape", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit a constrained model to built-in data")
    demo.add_argument("--steps", type=int, default=300, help="optimizer steps (default: 300)")
    commands.add_parser("list", help="list the registered transforms")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from paramshape.demo import main as run_demo

        run_demo(steps=args.steps)
    else:
        names = available()
        # Columns as wide as the longest name and class, so long ones (positive_semidefinite) align.
        name_width = max(len(name) for name in names)
        class_width = max(len(registered_class(name).__name__) for name in names)
        for name in names:
            cls = registered_class(name)
            summary = (cls.__doc__ or "").strip().splitlines()[0]
            print(f"{name:<{name_width}} {cls.__name__:<{class_width}} {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
