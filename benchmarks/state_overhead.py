"""What issue 10's state checks cost, as ratios measured side by side in one process.

* ``step``: an Adam step of a small constrained MLP with paramshape's optimizer step hooks (the
  dispatcher's, which run the resume check and the saturation check) installed, against the same
  step with them removed (interleaved rounds, median of each).
* ``plain_model_step``: an Adam step of a model with no constrained tensor while the dispatcher's
  hooks are installed (another model is constrained), against torch alone (the hooks removed).
* ``apply``: ``model.apply(fn)`` on the constrained model (which reads every constrained value once
  to catch init writes) against ``apply`` on the same architecture unconstrained, and against one
  forward pass of the constrained model (for scale).

Run: ``python benchmarks/state_overhead.py [--rounds 30]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings

import torch
import torch.optim.optimizer as optimizer_module
from torch import nn

import paramshape as ps
from paramshape.lookup.modules import fast_read
from paramshape.strategies import dispatch


def small_model(watch_writes: bool) -> nn.Module:
    """Issue 12's small model, with the getters watching for lost writes or not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
    model.append(nn.Linear(64, 64)).append(nn.Tanh()).append(nn.Linear(64, 1))
    with warnings.catch_warnings():  # init="project" says how many values it moved inside
        warnings.simplefilter("ignore", ps.ParamshapeWarning)
        ps.constrain(model, "*", ps.Box(-0.01, 0.01), init="project")
    if not watch_writes:
        for module in model.modules():
            for name in list(getattr(module, "parametrizations", {})):
                prop = type(module).__dict__[name]
                slow = prop.fget._paramshape_slow
                setattr(type(module), name, property(slow, prop.fset, prop.fdel, prop.__doc__))
                fast_read(module, name, watch_writes=False)
    return model


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

    hooks = list(dispatch._HOOKS)  # the step dispatcher's two global hooks (resume check, saturation)
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
    # A model with no constrained tensor, stepped while the constrained one above keeps the
    # dispatcher's hooks installed: what paramshape costs an optimizer it has nothing to do with.
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def plain_step() -> None:
        plain_opt.zero_grad()
        plain(x).square().mean().backward()
        plain_opt.step()

    def plain_without_hooks() -> None:
        for h in hooks:
            pre.pop(h.id, None)
            post.pop(h.id, None)
        plain_step()
        for hid, (a, b) in saved.items():
            if a is not None:
                pre[hid] = a
            if b is not None:
                post[hid] = b

    plain_step()
    plain_ratios = []
    noop = lambda module: None
    for round_index in range(args.rounds):
        with_times.append(timed(step, args.repeat))
        without_times.append(timed(without_hooks, args.repeat))
        pair = (
            (plain_step, plain_without_hooks) if round_index % 2 == 0 else (plain_without_hooks, plain_step)
        )
        first, second = timed(pair[0], args.repeat), timed(pair[1], args.repeat)
        plain_ratios.append(first / second if pair[0] is plain_step else second / first)
        apply_times.append(timed(lambda: model.apply(noop), args.repeat))
        plain_apply_times.append(timed(lambda: plain.apply(noop), args.repeat))
        forward_times.append(timed(lambda: model(x), args.repeat))
    watched, unwatched = small_model(True), small_model(False)
    small_x = torch.randn(64, 2)
    small_steps = {}
    for label, net in (("watched", watched), ("unwatched", unwatched)):
        small_opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def small_step(net: nn.Module = net, small_opt: torch.optim.Optimizer = small_opt) -> None:
            small_opt.zero_grad()
            net(small_x).square().mean().backward()
            small_opt.step()

        small_steps[label] = small_step
    read_times: dict[str, list[float]] = {
        "watched": [],
        "unwatched": [],
        "step_watched": [],
        "step_unwatched": [],
    }
    for round_index in range(args.rounds):
        order = ("watched", "unwatched") if round_index % 2 == 0 else ("unwatched", "watched")
        for label in order:
            layer = (watched if label == "watched" else unwatched)[0]
            read_times["step_" + label].append(timed(small_steps[label], args.repeat))
            read_times[label].append(timed(lambda layer=layer: layer.weight, args.repeat * 20))
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
                "plain_model_step_with_hooks_over_without": statistics.median(plain_ratios),
                "load_average": os.getloadavg()[0],
                "apply_over_plain_apply": statistics.median(apply_times)
                / statistics.median(plain_apply_times),
                "apply_us": statistics.median(apply_times) * 1e6,
                "apply_over_one_forward": statistics.median(apply_times) / statistics.median(forward_times),
                "small_model_step_watched_over_unwatched": statistics.median(read_times["step_watched"])
                / statistics.median(read_times["step_unwatched"]),
                "small_model_step_ms": statistics.median(read_times["step_watched"]) * 1e3,
                "read_watched_over_unwatched": statistics.median(read_times["watched"])
                / statistics.median(read_times["unwatched"]),
                "read_us": statistics.median(read_times["watched"]) * 1e6,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
