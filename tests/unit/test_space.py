"""Space admission: what a step needs, with its margin, against a file system's free space."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageport.config import Settings
from imageport.errors import NoSpace
from imageport.pipeline.data.space import SpaceWait, admit, required

MIB = 1024 * 1024


def _settings(**overrides) -> Settings:
    return Settings(space_margin_ratio=0.1, space_margin_bytes=8 * MIB, **overrides)


def test_the_margin_is_a_share_plus_a_fixed_amount():
    assert required(100 * MIB, _settings()) == 100 * MIB + 10 * MIB + 8 * MIB


def test_a_step_that_fits_is_admitted():
    admit(Path("/x"), 100 * MIB, _settings(), "convert", free=lambda _where: 118 * MIB)


def test_an_unknown_size_is_admitted():
    admit(Path("/x"), None, _settings(), "staging", free=lambda _where: 0)


def test_a_step_that_does_not_fit_waits_and_names_the_size():
    with pytest.raises(SpaceWait) as raised:
        admit(Path("/scratch"), 100 * MIB, _settings(), "convert", free=lambda _where: 50 * MIB)
    wait = raised.value
    assert isinstance(wait, NoSpace)  # a transient no-space error where it cannot be handed back
    assert wait.code == "waiting_for_space"
    assert wait.needed == 118 * MIB
    assert wait.where == Path("/scratch")
    assert "convert needs 118.0 MiB" in str(wait)
    assert "50.0 MiB free" in str(wait)
