"""kernel.netns.subnet and ifname: pure address and name arithmetic."""
from __future__ import annotations

import ipaddress

import pytest

from kernel.netns import IFNAME_MAX, ifname, subnet

NET = ipaddress.IPv4Network("10.213.0.0/16")
A = ipaddress.IPv4Address


def test_first_subnets():
    assert subnet(NET, 0) == (A("10.213.0.1"), A("10.213.0.2"), 30)
    assert subnet(NET, 1) == (A("10.213.0.5"), A("10.213.0.6"), 30)
    assert subnet(NET, 64) == (A("10.213.1.1"), A("10.213.1.2"), 30)


def test_last_subnet_and_out_of_range():
    assert subnet(NET, 16383) == (A("10.213.255.253"), A("10.213.255.254"), 30)
    with pytest.raises(ValueError, match=r"10\.213\.0\.0/16"):
        subnet(NET, 16384)
    with pytest.raises(ValueError, match=r"10\.213\.0\.0/16"):
        subnet(NET, -1)


def test_every_subnet_is_inside_and_distinct():
    net = ipaddress.IPv4Network("192.168.4.0/24")
    seen = set()
    for k in range(64):
        host, ns, prefixlen = subnet(net, k)
        link = ipaddress.IPv4Network(f"{host}/{prefixlen}", strict=False)
        assert link.subnet_of(net)
        assert link not in seen
        seen.add(link)
        assert host == link.network_address + 1 and ns == link.network_address + 2
        assert ns != link.broadcast_address
    with pytest.raises(ValueError, match="192.168.4.0/24"):
        subnet(net, 64)


def test_smallest_networks():
    assert subnet(ipaddress.IPv4Network("10.0.0.8/30"), 0) == (A("10.0.0.9"), A("10.0.0.10"), 30)
    with pytest.raises(ValueError, match=r"10\.0\.0\.8/30"):
        subnet(ipaddress.IPv4Network("10.0.0.8/30"), 1)
    with pytest.raises(ValueError, match=r"10\.0\.0\.8/31"):
        subnet(ipaddress.IPv4Network("10.0.0.8/31"), 0)


def test_wrong_types():
    with pytest.raises(TypeError):
        subnet("10.213.0.0/16", 0)
    with pytest.raises(TypeError):
        subnet(ipaddress.IPv6Network("fd00::/64"), 0)
    with pytest.raises(TypeError):
        subnet(NET, True)


def test_ifname():
    assert ifname("web", 3) == "hd3-web"
    long = "a-very-long-pool-name"
    names = {ifname(long, k) for k in range(200)}
    assert len(names) == 200  # the index comes first, so cutting keeps them distinct
    assert all(len(n.encode()) <= IFNAME_MAX for n in names)
    assert ifname(long, 12) == "hd12-a-very-lon"
    with pytest.raises(ValueError):
        ifname("a/b", 0)
    with pytest.raises(ValueError):
        ifname("web", 10**13)
