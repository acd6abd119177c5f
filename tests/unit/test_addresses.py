"""Addresses as text in either family, and endpoints with RFC 3986's brackets."""

import pytest

from ustack.addresses import endpoint, ntop, pton
from ustack.probe import Endpoint


@pytest.mark.parametrize("text", ["10.77.0.2", "fd77::2", "fe80::2", "::ffff:10.0.0.1"])
def test_ntop_and_pton_agree(text: str) -> None:
    assert ntop(pton(text)) == text


def test_pton_refuses_what_is_no_address() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        pton("fd77::2%ustack0")


def test_an_ipv6_endpoint_is_bracketed() -> None:
    assert endpoint("10.77.0.2", 80) == "10.77.0.2:80"
    assert endpoint("fd77::2", 80) == "[fd77::2]:80"
    assert str(Endpoint("fd77::1", 40000)) == "[fd77::1]:40000"
