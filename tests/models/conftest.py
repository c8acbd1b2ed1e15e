"""Per-architecture cases for the generic checks of :class:`tests.models.base.ModelTester`."""

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise a tester's ``variant`` / ``fit`` / ``invalid`` arguments with its class's lists."""
    for argument, cases in (("variant", "variants"), ("fit", "fits"), ("invalid", "invalid_options")):
        if argument in metafunc.fixturenames:
            values = getattr(metafunc.cls, cases)
            metafunc.parametrize(argument, values, ids=[_case_id(value) for value in values])


def _case_id(case: dict | tuple) -> str:
    options = case[0] if isinstance(case, tuple) else case
    return "-".join(f"{key}={value}" for key, value in options.items()) or "tiny"
