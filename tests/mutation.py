"""Mutation testing of paramshape's core modules: does the suite notice a wrong operator?

``make mutation`` (or ``python -m tests.mutation``) generates small AST mutations of the core
modules, one at a time (``+`` for ``-``, ``<`` for ``<=``, a constant moved, ``maximum`` for
``minimum``, a negation dropped, ...), applies each to a private copy of the repository and runs a
focused, fast subset of the tests against it with a timeout. A mutant is *killed* when the subset
fails, *survives* when it passes; one that runs past the timeout is reported apart and left
out of the rate (a slow survivor is not a kill). The kill rate and every survivor go to
``mutation-report.txt`` (gitignored) and the kill rate is printed. Not part of CI: a full run takes
an hour on 16 cores. Options (or the Makefile variables in capitals):

* ``--jobs`` (``JOBS``): mutants run in parallel, each in its own copy (default 2);
* ``--sample`` (``SAMPLE``): test a random sample of that many mutants (default: all);
* ``--seed``: the sample's seed; ``--timeout`` (seconds per mutant);
* ``--modules``: paths under ``paramshape/`` (default :data:`DEFAULT`; ``--all``: every module of :data:`CORE`).

Survivors are triaged in ``CONTRIBUTING.md`` ("Mutation testing"): a test is added, or the mutant is
shown to be equivalent (it changes no behaviour the documentation promises).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: The core modules and the tests that must notice a change in each (``-k`` narrows the contract
#: suite to the module's transforms, to keep a mutant's run short).
CORE: dict[str, tuple[list[str], str]] = {
    "paramshape/numerics/precision.py": (["tests/test_membership.py", "tests/test_references.py"], ""),
    "paramshape/numerics/maps.py": (["tests/test_references.py", "tests/test_membership.py"], ""),
    "paramshape/numerics/slopes.py": (["tests/test_contract.py"], "log_abs_det_jacobian_matches"),
    "paramshape/transforms/elementwise/interval.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "box or unit_interval",
    ),
    "paramshape/transforms/elementwise/positive.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "positive or greater or less",
    ),
    "paramshape/transforms/elementwise/softclip.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "soft_clip",
    ),
    "paramshape/transforms/vector/simplex.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "simplex",
    ),
    "paramshape/transforms/vector/sumtozero.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "sum_to_zero",
    ),
    "paramshape/transforms/vector/ordered.py": (
        [
            "tests/test_references.py",
            "tests/test_membership.py",
            "tests/test_integration.py",
            "tests/test_contract.py",
        ],
        "ordered",
    ),
    "paramshape/transforms/sets.py": (
        ["tests/test_membership.py", "tests/test_contract.py"],
        "ordered or norm or zero",
    ),
    # The project step hook (every parameter group, every optimizer), the penalty's squared distance
    # and the gradient clip.
    "paramshape/strategies/state.py": (
        ["tests/test_integration.py", "tests/test_strategies.py", "tests/test_grad.py"],
        "",
    ),
    # The augmented Lagrangian's term goes through penalty() too: its formula test (3 s), not the
    # training runs of its file.
    "paramshape/strategies/methods.py": (
        [
            "tests/test_integration.py",
            "tests/test_strategies.py",
            "tests/test_lagrangian.py::test_term_and_dual_step_follow_the_formulas",
        ],
        "",
    ),
    # Checkpoint loading (validation before any tensor changes, all-or-nothing) and the rollback
    # that puts a module back after a failed call.
    "paramshape/attach/checkpoint.py": (
        [
            "tests/test_integration.py",
            "tests/test_trust_state.py",
            "tests/test_safetensors.py",
            "tests/test_trust_round2.py::test_a_complex_checkpoint_entry_for_a_real_constrained_tensor_loads_nothing",
        ],
        "",
    ),
    "paramshape/attach/rollback.py": (["tests/test_integration.py", "tests/test_trust_state.py"], ""),
    # The shortcuts taken for speed (issue 12), where a slip is a silent wrong value: fold=True's
    # cached values and their gradient hooks, the flat check of many tensors' values in one pass,
    # and the registration built without register_parametrization's generic work.
    "paramshape/strategies/folded.py": (
        [
            "tests/test_fold.py",
            "tests/test_trust_round2.py",
            "tests/test_trust_round3.py",
            "tests/test_fuzz_state.py",
            "tests/test_learnable_bounds.py",
            "tests/test_sparse_gradients.py",
        ],
        "fold",
    ),
    # The hand-fused Box arithmetic the default mode and fold=True run (values, slopes, the kept
    # constants), against the independent references and the fusion tests' bit-for-bit checks.
    "paramshape/fusion/handfused.py": (
        [
            "tests/test_references.py",
            "tests/test_fusion.py",
            "tests/test_fold.py",
            "tests/test_membership.py",
        ],
        "box",
    ),
    "paramshape/attach/batched.py": (["tests/test_registration_batched.py", "tests/test_integration.py"], ""),
    "paramshape/attach/registration.py": (
        [
            "tests/test_registration_build.py",
            "tests/test_integration.py",
            "tests/test_registration_batched.py",
        ],
        "",
    ),
}

#: What ``make mutation`` runs by default: every mutant of the strategies' and loading's modules,
#: whose subsets are quick (about an hour at one job on a shared, loaded two-core machine). The
#: numerics' and the transform families' subsets hold the reference and contract suites (one to two
#: minutes per mutant there, on such a machine): ``--all`` runs every module of :data:`CORE`,
#: ``--modules`` any list.
DEFAULT = [
    "paramshape/strategies/state.py",
    "paramshape/strategies/methods.py",
    "paramshape/attach/checkpoint.py",
    "paramshape/attach/rollback.py",
]


#: Swapped operators: a binary operator, a comparison, a call by name.
BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult}
COMPARE = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
}
CALLS = {
    "maximum": "minimum",
    "minimum": "maximum",
    "clamp_min": "clamp_max",
    "clamp_max": "clamp_min",
    "amax": "amin",
    "amin": "amax",
    "log1p": "log",
    "expm1": "exp",
    "any": "all",
    "all": "any",
}


@dataclass(frozen=True)
class Mutant:
    module: str
    index: int  # which mutation site of the module, in AST walk order
    line: int
    column: int  # of the mutated node: two sites on one line are told apart
    description: str


def _is_docstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    parent = parents.get(node)
    return isinstance(parent, ast.Expr) and isinstance(node, ast.Constant) and isinstance(node.value, str)


def _sites(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    """Every mutable node inside a function body, with a description of its mutation."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for statement in function.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
                    yield node, f"{type(node.op).__name__} -> {BINARY[type(node.op)].__name__}"
                elif isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE:
                    yield node, f"{type(node.ops[0]).__name__} -> {COMPARE[type(node.ops[0])].__name__}"
                elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
                    yield node, f"drop {type(node.op).__name__}"
                elif isinstance(node, ast.BoolOp):
                    yield (
                        node,
                        f"{type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'}",
                    )
                elif (
                    isinstance(node, ast.Constant)
                    and type(node.value) in (int, float)
                    and not isinstance(node.value, bool)
                ):
                    yield node, f"constant {node.value!r} -> {_moved(node.value)!r}"
                elif isinstance(node, ast.Call):
                    name = _call_name(node)
                    if name in CALLS:
                        yield node, f"{name} -> {CALLS[name]}"


def _moved(value: float) -> float:
    if isinstance(value, int):
        return value + 1
    return 1.0 if value == 0 else value * 1.5


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _mutate(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp):
        node.op = BINARY[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = COMPARE[type(node.ops[0])]()
    elif isinstance(node, ast.UnaryOp):
        node.op = ast.UAdd() if isinstance(node.op, ast.USub) else node.op
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.Constant):
        node.value = _moved(node.value)
    elif isinstance(node, ast.Call):
        name = _call_name(node)
        if isinstance(node.func, ast.Attribute):
            node.func.attr = CALLS[name]
        else:
            node.func.id = CALLS[name]


def mutants_of(module: str) -> list[Mutant]:
    tree = ast.parse((ROOT / module).read_text())
    return [
        Mutant(module, index, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), description)
        for index, (node, description) in enumerate(_sites(tree))
    ]


def mutated_source(mutant: Mutant, source: str | None = None) -> str:
    """The module's ``source`` (default: the checkout's) with ``mutant`` applied."""
    tree = ast.parse((ROOT / mutant.module).read_text() if source is None else source)
    for index, (node, _) in enumerate(_sites(tree)):
        if index == mutant.index:
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                # "not x" -> "x": replace the node in its parent.
                _replace(tree, node, node.operand)
            else:
                _mutate(node)
            break
    return ast.unparse(tree)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new


def _workspace() -> Path:
    """A private copy of what the tests import: the package, the tests, conftest and pyproject."""
    target = Path(tempfile.mkdtemp(prefix="paramshape-mutant-"))
    for name in ("paramshape", "tests", "docs"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("conftest.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    return target


def _subset(module: str) -> tuple[list[str], str]:
    return CORE.get(module, (["tests/test_references.py"], ""))


def _base_arguments() -> list[str]:
    # -x: a mutant's run stops at its first failure; no cache provider (the copies are thrown away)
    # and no xdist (the mutants are the parallel unit: workers inside one would fight over 2 cores).
    return ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "tests._mutation_plugin"]


def _pytest_arguments(module: str) -> list[str]:
    tests, keyword = _subset(module)
    arguments = [*_base_arguments(), "-m", "not slow", *tests]
    # Compiling, 20 Adam steps and gradcheck take seconds per case and add little on arithmetic
    # that the references and the other properties do not already pin down: left out.
    quick = "not compiles and not optimizer and not gradcheck"
    return [*arguments, "-k", f"({keyword}) and {quick}" if keyword else quick]


@dataclass(frozen=True)
class Outcome:
    status: str  # killed, survived or timeout
    seconds: float
    #: What killed it: the first failing test, "collection: ..." for a module that failed to
    #: import or collect, or "exit N" for a run that ended before pytest could say (conftest's
    #: import of the mutated package failed, a crash).
    killer: str = ""


def _outcome(returncode: int | None, result: Path, seconds: float) -> Outcome:
    if returncode is None:
        return Outcome("timeout", seconds)
    data = json.loads(result.read_text()) if result.exists() else {}
    killer = data.get("killer") or ""
    if data.get("collection"):
        killer = f"collection: {killer}"
    if returncode == 0:
        return Outcome("survived", seconds)
    # 1: a test failed. Anything else (2: collection errors, 3: an internal error, 4: a usage
    # error such as a conftest that cannot import the mutated package, a negative code: a crash)
    # means the mutant broke the import or the run: killed too, and said so.
    if returncode != 1 and not data.get("collection"):
        killer = f"exit {returncode} (import or run broken){': ' + killer if killer else ''}"
    return Outcome("killed", seconds, killer)


def _environment(workspace: Path, order: Path | None) -> dict[str, str]:
    environment = {
        "PYTHONPATH": str(workspace),
        "OMP_NUM_THREADS": "1",
        "PARAMSHAPE_MUTATION_RESULT": str(workspace / ".mutation-result.json"),
    }
    if order is not None:
        environment["PARAMSHAPE_MUTATION_ORDER"] = str(order)
    return environment


def run_tests(workspace: Path, module: str, timeout: float, fork: bool, order: Path | None = None) -> Outcome:
    """Run ``module``'s test subset in ``workspace`` as it stands (mutated or not)."""
    return _run(workspace, _pytest_arguments(module), timeout, fork, order)


def _run(workspace: Path, arguments: list[str], timeout: float, fork: bool, order: Path | None) -> Outcome:
    result = workspace / ".mutation-result.json"
    result.unlink(missing_ok=True)
    environment = _environment(workspace, order)
    start = time.perf_counter()
    if fork:
        returncode = _run_forked(workspace, arguments, timeout, environment)
    else:
        returncode = _run_subprocess(workspace, arguments, timeout, environment)
    return _outcome(returncode, result, time.perf_counter() - start)


def run_mutant(
    mutant: Mutant, workspace: Path, timeout: float, fork: bool = False, order: Path | None = None
) -> Outcome:
    path = workspace / mutant.module
    original = path.read_text()
    # From the workspace's copy, made with the mutant list: the checkout may change during a run.
    path.write_text(mutated_source(mutant, original))
    try:
        outcome = run_tests(workspace, mutant.module, timeout, fork, order)
        if order is None or outcome.status != "killed" or not _is_test(outcome.killer):
            return outcome
        # The kill came in a reordered run: confirm it with the killing test alone, so that a test
        # that fails only after another one (shared state) cannot count as a kill.
        alone = _run(workspace, [*_base_arguments(), outcome.killer], timeout, fork, None)
        if alone.status == "killed":
            return Outcome("killed", outcome.seconds + alone.seconds, outcome.killer)
        # Not alone: the subset in pytest's own order decides, as the unmutated run passed it.
        plain = run_tests(workspace, mutant.module, timeout, fork, None)
        seconds = outcome.seconds + alone.seconds + plain.seconds
        return Outcome(plain.status, seconds, f"{plain.killer} (pytest's order)" if plain.killer else "")
    finally:
        path.write_text(original)


def _is_test(killer: str) -> bool:
    return "::" in killer and not killer.startswith(("exit ", "collection: "))


def _run_subprocess(
    workspace: Path, arguments: list[str], timeout: float, environment: dict[str, str]
) -> int | None:
    command = [sys.executable, "-m", "pytest", *arguments]
    try:
        result = subprocess.run(
            command,
            check=False,
            cwd=workspace,
            env=dict(os.environ, **environment),
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None
    return result.returncode


def _preload() -> None:
    """Import what every mutant's run needs and no mutant changes, once, before forking.

    torch alone takes seconds to import on a loaded machine, more than many mutants' tests: each
    forked child starts with it in memory and imports only paramshape, from
    its own copy. paramshape itself must not be imported here.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    # Not pytest's plugins (hypothesis): pytest must import those itself, to rewrite their asserts.
    import torch

    torch.set_num_threads(1)

    assert "paramshape" not in sys.modules, "the parent must not import paramshape: children would share it"


def _run_forked(
    workspace: Path, arguments: list[str], timeout: float, environment: dict[str, str]
) -> int | None:
    pid = os.fork()
    if pid == 0:  # the child: pytest on the workspace's copy, output discarded
        code = 3
        try:
            os.chdir(workspace)
            root = str(ROOT)
            sys.path[:] = [str(workspace)] + [p for p in sys.path if p not in ("", ".", root)]
            os.environ.update(environment)
            for name in [name for name in sys.modules if name == "tests" or name.startswith("tests.")]:
                del sys.modules[name]
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = int(pytest.main(arguments))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.2)


#: The killer cache (gitignored): which tests killed which mutants last time, and every test's
#: duration in the unmutated run. Only an order: a stale or missing cache makes a run slower,
#: never different.
CACHE = ROOT / ".mutation-killers.json"


def _site(mutant: Mutant) -> str:
    return f"{mutant.module}:{mutant.line}:{mutant.column}:{mutant.description}"


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    cache.setdefault("sites", {})  # site -> the test that killed its mutant
    cache.setdefault("modules", {})  # module -> {test: how many of its mutants it killed}
    cache.setdefault("durations", {})  # test -> seconds in the unmutated run
    return dict(cache)


def _first(cache: dict[str, Any], mutant: Mutant) -> list[str]:
    """The tests to run first for ``mutant``: its site's killer, then its module's, most kills first."""
    first = []
    site = cache["sites"].get(_site(mutant))
    if site:
        first.append(site)
    kills: dict[str, int] = cache["modules"].get(mutant.module, {})
    first += [test for test in sorted(kills, key=lambda t: -kills[t]) if test not in first]
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    parser.add_argument("--sample", type=int, default=int(os.environ.get("SAMPLE", "0")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--modules", nargs="*", default=DEFAULT)
    parser.add_argument("--all", action="store_true", help="every module of CORE")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="run only the mutants whose 'module:line description' contains one of these strings",
    )
    parser.add_argument(
        "--no-fork",
        action="store_true",
        help="a fresh interpreter per mutant (slower: torch is imported each time) instead of a fork",
    )
    parser.add_argument("--report", default=str(ROOT / "mutation-report.txt"))
    parser.add_argument("--cache", default=str(CACHE), help="the killer cache (an order only)")
    args = parser.parse_args(argv)
    if args.all:
        args.modules = list(CORE)
    fork = not args.no_fork and hasattr(os, "fork")
    if fork:
        _preload()

    mutants = [mutant for module in args.modules for mutant in mutants_of(module)]
    total = len(mutants)
    if args.only:
        # As the report writes them, with or without the column: a report's survivors rerun as listed.
        def names(m: Mutant) -> tuple[str, str]:
            return f"{m.module}:{m.line}:{m.column} {m.description}", f"{m.module}:{m.line} {m.description}"

        mutants = [m for m in mutants if any(o in name for o in args.only for name in names(m))]
    if args.sample and args.sample < len(mutants):
        mutants = sorted(
            random.Random(args.seed).sample(mutants, args.sample), key=lambda m: (m.module, m.index)
        )
    print(f"{len(mutants)} of {total} mutants, {args.jobs} at a time", flush=True)

    cache_path = Path(args.cache)
    cache = _load_cache(cache_path)
    workspaces = [_workspace() for _ in range(max(1, args.jobs))]
    free = list(workspaces)
    results: list[tuple[Mutant, Outcome]] = []

    def baseline(module: str) -> tuple[str, Outcome]:
        workspace = free.pop()
        try:
            return module, run_tests(workspace, module, args.timeout, fork)
        finally:
            durations = workspace / ".mutation-result.json"
            if durations.exists():
                cache["durations"].update(json.loads(durations.read_text())["durations"])
            free.append(workspace)

    def work(mutant: Mutant) -> tuple[Mutant, Outcome]:
        workspace = free.pop()
        try:
            order = workspace / ".mutation-order.json"
            order.write_text(json.dumps({"first": _first(cache, mutant), "durations": cache["durations"]}))
            outcome = run_mutant(mutant, workspace, args.timeout, fork, order)
        finally:
            free.append(workspace)
        if outcome.status == "killed" and _is_test(outcome.killer):
            cache["sites"][_site(mutant)] = outcome.killer
            kills = cache["modules"].setdefault(mutant.module, {})
            kills[outcome.killer] = kills.get(outcome.killer, 0) + 1
        print(_line(mutant, outcome), flush=True)
        return mutant, outcome

    try:
        with ThreadPoolExecutor(max_workers=len(workspaces)) as pool:
            # The unmutated package must pass every subset: otherwise each mutant of that module
            # would count as killed by a test that fails anyway. Its run also times every test,
            # the order of the fastest first.
            modules = sorted({mutant.module for mutant in mutants})
            for module, outcome in pool.map(baseline, modules):
                print(
                    f"baseline  {outcome.seconds:6.1f}s {module}: unmutated, {'passed' if outcome.status == 'survived' else outcome.status}",
                    flush=True,
                )
                if outcome.status != "survived":
                    print(
                        f"the unmutated package fails {module}'s subset ({outcome.killer or outcome.status})"
                    )
                    return 1
            results = list(pool.map(work, mutants))
    finally:
        for workspace in workspaces:
            shutil.rmtree(workspace, ignore_errors=True)
        cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))

    counts = {
        status: sum(outcome.status == status for _, outcome in results)
        for status in ("killed", "survived", "timeout")
    }
    broken = sum(outcome.killer.startswith(("exit", "collection")) for _, outcome in results)
    decided = counts["killed"] + counts["survived"]
    rate = counts["killed"] / decided if decided else 1.0
    minutes = sum(outcome.seconds for _, outcome in results) / 60
    lines = [
        (
            f"mutation testing: {counts['killed']} of {decided} mutants killed ({rate:.1%}; "
            f"{broken} of them broke the import or the run); "
            f"{counts['timeout']} timed out (not counted: raise --timeout); "
            f"{len(results)} run of {total} generated over {len(args.modules)} modules; "
            f"{minutes:.0f} mutant-minutes at {args.jobs} jobs"
        ),
        "",
        *(
            _line(mutant, outcome)
            for mutant, outcome in sorted(
                results, key=lambda r: (r[1].status != "survived", r[0].module, r[0].line)
            )
        ),
    ]
    Path(args.report).write_text("\n".join(lines) + "\n")
    print(lines[0])
    print(f"report: {args.report}")
    return 0


def _line(mutant: Mutant, outcome: Outcome) -> str:
    killer = f"  <- {outcome.killer}" if outcome.killer else ""
    return (
        f"{outcome.status:9s} {outcome.seconds:6.1f}s {mutant.module}:{mutant.line}:{mutant.column} "
        f"{mutant.description}{killer}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
