"""The doctor's slow-link warning without `cluster.nic`: the interface the route to MASTER_ADDR leaves by,
its speed from /sys/class/net, and the threshold (against the link and against intra-node busbw). No
process group, no cluster: `ip` is faked, the numbers are the ones measured on the test cluster."""

from __future__ import annotations

import pytest

from runtime.doctor import facts, report

# `ip -o …` as iproute2 prints it on node1 (10.201.7.11) for the master node0 (10.201.7.10), and on node0.
ROUTE_REMOTE = "10.201.7.10 dev eth0 src 10.201.7.11 uid 0 \\    cache \n"
ROUTE_LOCAL = "local 10.201.7.10 dev lo src 10.201.7.10 uid 0 \\    cache <local> \n"
ADDR_OWNER = (
    "2: eth0    inet 10.201.7.10/24 scope global eth0\\       valid_lft forever preferred_lft forever\n"
)


def fake_ip(monkeypatch: pytest.MonkeyPatch, route: str | None, owner: str | None = ADDR_OWNER) -> list:
    calls: list[list[str]] = []

    def run(argv: list[str], timeout: float = 10.0) -> str | None:
        calls.append(argv)
        return route if argv[:3] == ["ip", "-o", "route"] else owner

    monkeypatch.setattr(facts, "_run", run)
    monkeypatch.setattr(facts, "resolve", lambda host: {"node0": "10.201.7.10"}.get(host, host))
    return calls


def test_route_to_master_names_the_interface(monkeypatch):
    calls = fake_ip(monkeypatch, ROUTE_REMOTE)
    assert facts.routed_nic("node0") == "eth0"
    assert calls == [["ip", "-o", "route", "get", "10.201.7.10"]]
    # On the master its own address is routed over lo: the interface holding the address stands in.
    calls = fake_ip(monkeypatch, ROUTE_LOCAL)
    assert facts.routed_nic("node0") == "eth0"
    assert calls[-1] == ["ip", "-o", "addr", "show", "to", "10.201.7.10"]
    fake_ip(monkeypatch, "10.0.1.5 via 10.0.0.1 dev bond0.12 src 10.0.0.7 uid 0 \\    cache \n")
    assert facts.routed_nic("10.0.1.5") == "bond0.12"
    fake_ip(monkeypatch, None)  # no `ip`, or it failed
    assert facts.routed_nic("node0") is None
    calls = fake_ip(monkeypatch, ROUTE_LOCAL)
    assert facts.routed_nic("127.0.1.1") is None and calls == []  # loopback master: nothing to measure


def test_nic_setting_wins_over_the_route(monkeypatch):
    fake_ip(monkeypatch, "10.201.7.10 dev ens5 src 10.201.7.11\n")
    monkeypatch.setattr(facts, "interfaces", lambda: ["eth0", "ens5", "lo"])
    for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "node0")
    assert facts.which_nic("eth") == ("eth0", "cluster.nic")
    assert facts.which_nic(None) == ("ens5", facts.ROUTED)
    assert facts.which_nic("^docker,lo") == ("ens5", facts.ROUTED)  # an exclusion names no one interface
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "=eth0")
    assert facts.which_nic(None) == ("eth0", "NCCL_SOCKET_IFNAME")
    monkeypatch.delenv("NCCL_SOCKET_IFNAME")
    monkeypatch.delenv("MASTER_ADDR")
    assert facts.which_nic(None) == (None, None)


def test_link_speed_from_sysfs(tmp_path):
    for name, text in (("veth", "10000\n"), ("tun0", "-1\n"), ("odd", "?\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(text)
    assert facts.link_speed_mbps("veth", str(tmp_path)) == 10000
    assert facts.link_speed_mbps("tun0", str(tmp_path)) is None
    assert facts.link_speed_mbps("odd", str(tmp_path)) is None
    assert facts.link_speed_mbps("gone", str(tmp_path)) is None


def node(host: str, **kw) -> dict:
    base = {
        "host": host,
        "nic": "eth0",
        "nic_from": facts.ROUTED,
        "link_mbps": 10000,
        "intra_busbw_gbps": 0.64,
        "ib": None,
        "ib_disabled": False,
    }
    return {**base, **kw}


def slow(cross: float, **kw) -> list[str]:
    return report.warnings(
        {"nodes": [node("node0", **kw), node("node1", **kw)], "cross_node_busbw_gbps": cross}, None
    )


def test_shaped_link_named_in_one_line_without_nic_or_min_bandwidth():
    (line,) = slow(0.004)
    assert line == (
        "node0, node1: cross-node busbw 0.004 GB/s (0.03 Gbit/s) is under a tenth of eth0's link speed "
        "(10 Gbit/s, the route to MASTER_ADDR) and a twentieth of the intra-node 0.640 GB/s; a slow or "
        "shaped link, or TCP where InfiniBand was meant (ibstat, NCCL_IB_DISABLE): check eth0 (ethtool, "
        "tc qdisc), or set cluster.nic to the fast interface (NCCL_DEBUG=INFO names it)"
    )
    (line,) = slow(0.011, ib_disabled=True)  # the field trap: NCCL_IB_DISABLE=1 "runs, but slowly"
    assert "0.011 GB/s" in line and "NCCL_IB_DISABLE=1 is set, so NCCL uses TCP sockets" in line


@pytest.mark.parametrize(
    ("cross", "changes"),
    [
        (0.167, {}),  # the test cluster, clean: gloo on CPU across veths
        (0.05, {"intra_busbw_gbps": 0.9}),  # under a tenth of the link but gloo cannot do more
        (0.05, {"link_mbps": 100000, "intra_busbw_gbps": 0.9}),  # gloo on a 100 Gbit/s NIC
        (2.5, {"link_mbps": 25000, "intra_busbw_gbps": 400.0}),  # NCCL over 25 GbE beside NVLink
        (0.011, {"link_mbps": None}),  # speed unknown: 1/58 of intra-node is not enough
        (0.004, {"nic": None, "link_mbps": None}),  # no interface found: nothing to name
    ],
)
def test_no_warning_where_the_link_is_not_the_bottleneck(cross, changes):
    assert slow(cross, **changes) == []


def test_unknown_speed_and_one_rank_per_node():
    (line,) = slow(0.004, link_mbps=None)
    assert (
        "under a hundredth of the intra-node 0.640 GB/s (eth0, the route to MASTER_ADDR: link speed" in line
    )
    (line,) = slow(0.004, intra_busbw_gbps=None)  # one rank per node: the link speed alone decides
    assert "under a tenth of eth0's link speed (10 Gbit/s, the route to MASTER_ADDR); a slow" in line
    assert slow(0.004, link_mbps=None, intra_busbw_gbps=None) == []
