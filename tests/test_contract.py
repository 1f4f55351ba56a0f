"""The contract suite: every registered transform goes through the same checks.

The checks themselves live in :mod:`paramshape.testing` (users run them on their own transforms with
``check_transform``); here each property is one test per case (and per dtype where it depends on
it). The cases come from ``transform_cases.CASES``; a meta-test fails when a registered name has
none, so a new transform is covered as soon as it is registered and given an example.
"""

from __future__ import annotations

import pytest
import torch

import paramshape as ps
from paramshape import testing
from paramshape.transforms.registry import registered_class

from .transform_cases import CASES, COMPLEX_CASES, Case, case_dtype_params, case_params


def run(check, case: Case, *args, device: torch.device | str = "cpu") -> None:
    """Run ``check`` with ``device`` as the default device: the transform's settings and every
    tensor the check makes live there (the ``device`` fixture: CPU, and CUDA when present). The CPU
    runs without the device context, whose per-operation dispatch would slow the suite down."""
    if torch.device(device).type == "cpu":
        check(case.build(), case.shape, *args)
        return
    with torch.device(device):
        check(case.build(), case.shape, *args)


def test_the_cuda_variants_are_collected_where_there_is_a_gpu(request):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA variants of the device-parametrized tests are not collected")
    conftest = request.config.pluginmanager.get_plugin(str(request.config.rootpath / "conftest.py"))
    assert [param.id for param in conftest.DEVICES] == ["cpu", "cuda"]


def test_every_registered_transform_has_a_case():
    covered = {case.name for case in CASES + COMPLEX_CASES if case.registered}
    missing = sorted(set(ps.available()) - covered)
    assert not missing, f"registered transforms without a contract case in transform_cases.py: {missing}"


@pytest.mark.parametrize("case", case_params())
def test_cases_build_the_registered_class(case):
    if not case.registered:
        assert case.name not in ps.available(), f"{case.name!r} is registered; mark the case registered"
        return
    assert type(case.build()) is registered_class(case.name)


@pytest.mark.parametrize(("case", "dtype"), case_dtype_params())
class TestContract:
    def test_extreme_inputs_land_in_the_set_with_finite_values(self, case, dtype, device):
        run(testing.check_extreme_inputs, case, dtype, device=device)

    def test_gradients_are_finite_for_extreme_inputs(self, case, dtype, device):
        run(testing.check_extreme_gradients, case, dtype, device=device)

    def test_round_trip_keeps_feasible_values(self, case, dtype, device):
        run(testing.check_round_trip, case, dtype, device=device)

    def test_values_on_the_boundary_have_a_finite_inverse(self, case, dtype, device):
        run(testing.check_boundary_inverse, case, dtype, device=device)

    def test_to_interior_is_strictly_inside_and_keeps_gradients_alive(self, case, dtype, device):
        run(testing.check_to_interior, case, dtype, device=device)

    def test_sample_lies_in_the_set(self, case, dtype, device):
        run(testing.check_sample, case, dtype, device=device)

    def test_nan_and_inf_are_never_members(self, case, dtype, device):
        run(testing.check_nan_and_inf_are_never_members, case, dtype, device=device)

    def test_settings_follow_the_dtype(self, case, dtype, device):
        run(testing.check_settings_follow_dtype, case, dtype, device=device)

    def test_state_dict_round_trip(self, case, dtype, device):
        run(testing.check_state_dict_round_trip, case, dtype, device=device)

    def test_optimizer_steps_pushing_outward_stay_feasible(self, case, dtype, device):
        run(testing.check_optimizer_steps, case, dtype, device=device)

    def test_log_abs_det_jacobian_is_finite_for_extreme_inputs(self, case, dtype, device):
        run(testing.check_log_abs_det_jacobian_extremes, case, dtype, device=device)


@pytest.mark.parametrize("case", case_params())
def test_gradcheck_float64(case, device):
    run(testing.check_gradcheck, case, device=device)


@pytest.mark.parametrize("case", case_params())
def test_torch_codomain_accepts_interior_values(case, device):
    run(testing.check_torch_codomain, case, device=device)


@pytest.mark.parametrize("case", case_params())
def test_log_abs_det_jacobian_matches_autograd(case, device):
    run(testing.check_log_abs_det_jacobian, case, device=device)


@pytest.mark.parametrize("case", case_params())
def test_repr_names_settings_without_dumping_tensors(case):
    run(testing.check_repr, case)


@pytest.mark.parametrize("case", case_params())
def test_compiles_with_no_graph_break(case, device):
    run(testing.check_compiles, case, device=device)


def test_the_suite_runs_every_property():
    """Each property of paramshape.testing has a test above, so nothing is checked only by users."""
    tested = {
        "extreme_inputs", "extreme_gradients", "round_trip", "boundary_inverse", "to_interior", "sample",
        "nan_and_inf_are_never_members", "settings_follow_dtype", "state_dict_round_trip",
        "optimizer_steps", "log_abs_det_jacobian_extremes", "gradcheck", "torch_codomain",
        "log_abs_det_jacobian", "repr", "compiles",
    }  # fmt: skip
    assert tested == set(testing.PROPERTIES)
