"""The `case` fixture: each tiny model configuration of `model_cases.SPECS` in turn."""

from __future__ import annotations

import pytest
from model_cases import SPECS, Case, get_case


@pytest.fixture(params=list(SPECS))
def case(request) -> Case:
  return get_case(request.param)
