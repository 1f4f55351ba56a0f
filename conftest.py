"""Shared pytest set-up for the test suite and the doctests in paramshape/."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


#: The devices that tests running kernels are parametrized over: the CPU always, CUDA when a GPU is
#: present, so ``pytest -k cuda`` selects the GPU runs. Without a GPU the CUDA variants are not
#: collected at all (collecting and skipping them one by one, about 3,800 in the contract suite alone,
#: cost seconds and buried the report); ``test_contract.py`` says so in one skip.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    *([pytest.param("cuda", id="cuda")] if torch.cuda.is_available() else []),
]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each device of :data:`DEVICES` in turn."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    import paramshape

    doctest_namespace["torch"] = torch
    doctest_namespace["ps"] = paramshape
