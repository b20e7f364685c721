"""Typed errors: the server's code and detail in one class per code."""

from __future__ import annotations

import re
import socket

import pytest

from lablink import Lab, LabLinkError, ServerUnreachable, StaleFencingToken
from lablink.errors import (
    BY_CODE,
    EquipmentNotFound,
    InvalidParameter,
    InvalidTimeout,
    NotLockHolder,
    UnknownAction,
    error_from_body,
)

from conftest import REPO

EQ = "ps_abc123"


def readme_error_codes() -> set[str]:
    """The codes in the top-level README's error table."""
    text = (REPO / "README.md").read_text()
    table = text.split("| status | codes |", 1)[1].split("\n\n", 1)[0]
    codes = set()
    for row in table.splitlines()[2:]:
        listed = row.split("|")[2]
        while re.search(r"\([^()]*\)", listed):  # drop the explanations
            listed = re.sub(r"\([^()]*\)", "", listed)
        codes.update(re.findall(r"`([a-z_]+)`", listed))
    return codes


def test_there_is_one_class_per_code_of_the_readme_table():
    codes = readme_error_codes()
    assert "equipment_locked" in codes and "stale_fencing_token" in codes
    assert sorted(BY_CODE) == sorted(codes)
    for code, cls in BY_CODE.items():
        assert issubclass(cls, LabLinkError) and cls.code == code


def test_an_unknown_code_or_a_foreign_body_still_raises_a_lablink_error():
    future = error_from_body(418, '{"code": "brand_new", "detail": "from a newer server"}')
    assert (type(future), future.code, future.detail, future.status) == (
        LabLinkError,
        "brand_new",
        "from a newer server",
        418,
    )
    proxy = error_from_body(502, "<html>Bad Gateway</html>")
    assert proxy.code == "unexpected_response" and "Bad Gateway" in proxy.detail


def test_server_errors_arrive_as_their_classes(server):
    with Lab(server.url) as lab:
        with lab.session("errors") as s:
            with pytest.raises(EquipmentNotFound) as caught:
                with s.lock("no_such_thing"):
                    pass
            assert (caught.value.status, caught.value.code) == (404, "equipment_not_found")
            assert "no_such_thing" in caught.value.detail

            with s.lock(EQ) as lk:
                with pytest.raises(UnknownAction) as unknown:
                    lk.command("fly")
                assert "set_voltage" in unknown.value.detail  # lists the valid ones
                with pytest.raises(InvalidParameter) as bad:
                    lk.command("set_voltage", voltage=1000.0)
                assert "voltage" in bad.value.detail and bad.value.status == 422
                first_token = lk.fencing_token

            # A later grant makes the first token stale.
            with s.lock(EQ) as lk:
                assert lk.fencing_token > first_token
                with pytest.raises(StaleFencingToken) as stale:
                    lab.command(EQ, "get_status", session_id=s.id, fencing_token=first_token)
                assert (stale.value.status, stale.value.code) == (409, "stale_fencing_token")

                with lab.session("other") as other, pytest.raises(NotLockHolder) as foreign:
                    lab.request("POST", "/api/locks/release", json={"equipment_id": EQ, "session_id": other.id})
                assert s.id in foreign.value.detail

            with pytest.raises(InvalidTimeout):
                with s.lock(EQ, timeout=-1):
                    pass


def test_an_unreachable_server_says_so():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Lab(f"http://127.0.0.1:{port}") as lab:
        with pytest.raises(ServerUnreachable) as caught:
            with lab.session("nobody home"):
                pass
        assert f"127.0.0.1:{port}" in caught.value.detail
