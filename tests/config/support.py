"""What the config tests share: the problems a YAML text produces, the settings a valid one
gives, and where the shipped files are."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from sidecar.config import ConfigError, Settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "config" / "sidecar.yaml"
SCHEMA = ROOT / "config" / "sidecar.schema.json"

UNKNOWN = "unknown key (check the spelling against config/sidecar.yaml)"
MISSING = "required key is missing"


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problem lines a user reads for this YAML text (which must be invalid)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env=env or {})
    return caught.value.problems


def settings_of(text: str, env: dict[str, str] | None = None) -> Settings:
    """Settings from this YAML text (which must be valid)."""
    return parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env=env or {})
