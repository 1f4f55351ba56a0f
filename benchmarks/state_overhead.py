"""What issue 10's state checks cost, as ratios measured side by side in one process.

* ``step``: an Adam step of a small constrained MLP with paramshape's optimizer-resume hooks
  installed, against the same step with them removed (interleaved rounds, median of each).
* ``apply``: ``model.apply(fn)`` on the constrained model (which reads every constrained value once
  to catch init writes) against ``apply`` on the same architecture unconstrained, and against one
  forward pass of the constrained model (for scale).

Run: ``python benchmarks/state_overhead.py [--rounds 30]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.optim.optimizer as optimizer_module
from torch import nn

import paramshape as ps
from paramshape.attach import resume


def timed(call, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(args.width, args.width) for _ in range(4)))
    ps.constrain(model, "*.weight", ps.Box(-1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(32, args.width)

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    hooks = list(resume._HOOKS)
    pre, post = optimizer_module._global_optimizer_pre_hooks, optimizer_module._global_optimizer_post_hooks
    saved = {h.id: (pre.get(h.id), post.get(h.id)) for h in hooks}

    def without_hooks() -> None:
        for h in hooks:
            pre.pop(h.id, None)
            post.pop(h.id, None)
        step()
        for hid, (a, b) in saved.items():
            if a is not None:
                pre[hid] = a
            if b is not None:
                post[hid] = b

    step()
    with_times, without_times, apply_times, plain_apply_times, forward_times = [], [], [], [], []
    plain = nn.Sequential(*(nn.Linear(args.width, args.width) for _ in range(4)))
    noop = lambda module: None
    for _ in range(args.rounds):
        with_times.append(timed(step, args.repeat))
        without_times.append(timed(without_hooks, args.repeat))
        apply_times.append(timed(lambda: model.apply(noop), args.repeat))
        plain_apply_times.append(timed(lambda: plain.apply(noop), args.repeat))
        forward_times.append(timed(lambda: model(x), args.repeat))
    with open("/proc/cpuinfo") as info:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in info if "model name" in line), platform.processor()
        )
    print(
        json.dumps(
            {
                "cpu": cpu,
                "threads": torch.get_num_threads(),
                "step_with_hooks_over_without": statistics.median(with_times)
                / statistics.median(without_times),
                "step_ms": statistics.median(with_times) * 1e3,
                "apply_over_plain_apply": statistics.median(apply_times)
                / statistics.median(plain_apply_times),
                "apply_us": statistics.median(apply_times) * 1e6,
                "apply_over_one_forward": statistics.median(apply_times) / statistics.median(forward_times),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
