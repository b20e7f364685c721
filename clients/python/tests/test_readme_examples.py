"""The five-line examples of the READMEs (top-level "Python client" and the
package's quick start) run against the test server, their URL swapped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lablink import Lab

from conftest import REPO

README_URL = '"http://127.0.0.1:8000"'


def example(readme: Path, heading: str) -> str:
    section = readme.read_text().split(heading, 1)[1]
    found = re.search(r"```python\n(from lablink import Lab\n.*?)```", section, re.S)
    assert found is not None, f"no example under {heading} in {readme}"
    return found.group(1)


@pytest.mark.parametrize(
    ("readme", "heading"),
    [(REPO / "README.md", "## Python client"), (REPO / "clients" / "python" / "README.md", "# lablink-client")],
)
def test_the_readme_example_runs(server, readme, heading):
    code = example(readme, heading)
    assert len(code.strip().splitlines()) <= 6
    exec(compile(code.replace(README_URL, repr(server.url)), str(readme), "exec"), {})
    with Lab(server.url) as lab:
        assert [e["event"] for e in lab.events(equipment="ps_abc123")] == ["lock_acquired", "lock_released"]


def test_the_live_events_example_runs_up_to_its_endless_loop(server, capsys):
    section = (REPO / "README.md").read_text().split("## Be told, don't poll", 1)[1]
    found = re.search(r"```python\n(from lablink import Lab\n.*?)```", section, re.S)
    assert found is not None
    code = found.group(1).split("\nfor ev in lab.events(")[0]  # it follows forever
    exec(compile(code.replace(README_URL, repr(server.url)), "README.md", "exec"), {})
    assert "our turn, fencing token 1" in capsys.readouterr().out
