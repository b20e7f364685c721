"""The package as installed: its version and its typing marker."""

from __future__ import annotations

import re
from importlib import metadata, resources

import lablink

from conftest import REPO


def test_the_version_is_the_servers():
    cargo = (REPO / "Cargo.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M)
    assert version is not None
    assert lablink.__version__ == metadata.version("lablink-client") == version.group(1)


def test_it_ships_its_typing_marker():
    assert resources.files("lablink").joinpath("py.typed").is_file()
