"""Peak memory of the ways a value enters a constrained tensor, as a multiple of the tensor's size.

Three operations on a float32 ``Linear`` weight of each size: ``constrain`` (``init="keep"``: the
membership check of the current values, the inverse, the registration), an assignment
(``layer.weight = value``) and ``load_state_dict`` of a plain-key checkpoint (saved before
constraining). Each (operation, size) runs in a fresh subprocess, so allocator caches of one cannot
hide the peak of another: the child builds the module and the incoming value, runs the operation
once on a tiny module (imports and first-call caches), resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``, Linux) and reads the peak after the operation (``VmHWM``) against the
resident size before it; glibc's mmap threshold is fixed at 128 kB, so every large block is
returned to the system when freed and no reuse of resident memory hides a peak. The figure is that difference divided by the tensor's size: the memory
the operation needs beyond the tensor itself (the new stored tensor included). Target: at most 2.

Run from the repository root (about a minute on 2 CPU cores)::

    python benchmarks/memory.py                        # 16, 64 and 256 MB
    python benchmarks/memory.py --sizes 8 32 --spec "greater_than(0)" --json memory.json
    python benchmarks/memory.py --sizes 16 --spec positive_definite --matrix 32x32  # matrix sets
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys

OPERATIONS = ("constrain", "assign", "load")


def _status(key: str) -> int:
    """A ``/proc/self/status`` entry, in bytes."""
    with open("/proc/self/status") as status:
        return int(re.search(key + r":\s+(\d+)", status.read()).group(1)) * 1024


def _child(operation: str, megabytes: int, spec: str, matrix: str | None = None) -> dict[str, float]:
    """Run one operation in this (fresh) process and return its peak beyond the resident size."""
    import torch
    from torch import nn

    import paramshape as ps

    torch.set_num_threads(1)

    class Batch(nn.Module):
        """A batch of matrices, ``(batch, rows, cols)``: what matrix sets are checked over."""

        def __init__(self, batch: int, rows: int, cols: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.empty(batch, rows, cols))

    def build(rows: int, cols: int) -> nn.Module:
        layer: nn.Module = nn.Linear(cols, rows, bias=False)
        if matrix is not None:
            layer = Batch(max(1, rows * cols // (m_rows * m_cols)), m_rows, m_cols)
        with torch.no_grad():
            layer.weight.uniform_(-0.5, 0.5)
            # A value inside the set (init="keep" checks it): vector sets need more than a box.
            layer.weight.copy_(ps.resolve(spec).to_interior(layer.weight))
        return layer

    def run(layer: nn.Module, incoming: torch.Tensor, plain: dict[str, torch.Tensor]) -> None:
        if operation == "constrain":
            ps.constrain(layer, "weight", spec)
        elif operation == "assign":
            layer.weight = incoming
        else:
            layer.load_state_dict(plain)

    m_rows, m_cols = (int(n) for n in (matrix or "0x0").split("x"))
    rows = 1024
    cols = megabytes * 2**20 // (4 * rows)
    for size in ((8, 16), (rows, cols)):  # the tiny one first: imports and first-call caches
        layer = build(*size)
        plain = {"weight": layer.weight.detach().clone()}
        incoming = ps.resolve(spec).to_interior(layer.weight.detach() * 0.5)
        if operation != "constrain":
            ps.constrain(layer, "weight", spec)
        if size != (rows, cols):
            run(layer, incoming, plain)
    nbytes = layer.weight.numel() * layer.weight.element_size()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status("VmRSS")
    run(layer, incoming, plain)
    peak = _status("VmHWM")
    return {"operation": operation, "megabytes": megabytes, "ratio": (peak - before) / nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256], help="tensor sizes in MB")
    parser.add_argument("--spec", default="box(-1, 1)", help="the constraint (a spec string)")
    parser.add_argument(
        "--matrix",
        help="ROWSxCOLS: a batch of matrices of this shape instead of a Linear weight (matrix sets)",
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.spec, args.matrix)))
        return
    results = []
    for megabytes in args.sizes:
        for operation in OPERATIONS:
            command = [sys.executable, __file__, "--spec", args.spec, "--child", operation, str(megabytes)]
            if args.matrix:
                command[2:2] = ["--matrix", args.matrix]
            # A fixed mmap threshold: glibc otherwise raises it after the first large free (up to
            # 32 MB), and freed blocks below it stay resident, hiding later peaks from VmHWM.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
            output = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    shape = f"batch of {args.matrix} matrices" if args.matrix else "Linear weight of 1024 rows"
    print(f"Peak memory beyond the tensor, in tensor sizes ({args.spec}, float32 {shape}, {cpu}):")
    print(f"{'size':>8} " + " ".join(f"{operation:>10}" for operation in OPERATIONS))
    for megabytes in args.sizes:
        row = {r["operation"]: r["ratio"] for r in results if r["megabytes"] == megabytes}
        print(f"{megabytes:>5} MB " + " ".join(f"{row[operation]:>10.2f}" for operation in OPERATIONS))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"spec": args.spec, "matrix": args.matrix, "cpu": cpu, "results": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
