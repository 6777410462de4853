"""The world a run joined must be the one its launch script asked for.

A DeepSpeed launch whose hostfile went missing falls back to "local resources only" and would train a
2-node job on one node with exit 0. The generated scripts export what the config asked for, and every
rank compares it with the world it actually joined, on every launcher:
  XGEN_EXPECT_NNODES       node count (cluster.nodes), always
  XGEN_EXPECT_WORLD_SIZE   total processes, when cluster.devices_per_node pins the count
"""

from __future__ import annotations

import os

EXIT_WRONG_WORLD = 2


def world_problem(world_size: int, hosts: list[str], env: dict[str, str] | None = None) -> str | None:
    """One line saying how the joined world differs from the expected one, or None when it matches."""
    env = dict(os.environ) if env is None else env
    nodes = sorted(set(hosts))
    joined = f"joined {len(nodes)} node(s) ({', '.join(nodes)}) with world size {world_size}"
    want_nodes = env.get("XGEN_EXPECT_NNODES", "")
    if want_nodes.isdigit() and int(want_nodes) != len(nodes):
        return (
            f"world: {joined}, but cluster.nodes is {want_nodes}; the launcher did not start every node "
            "(a DeepSpeed hostfile missing on the launching node? hosts with the same hostname?)"
        )
    want_size = env.get("XGEN_EXPECT_WORLD_SIZE", "")
    if want_size.isdigit() and int(want_size) != world_size:
        return (
            f"world: {joined}, but cluster.nodes x cluster.devices_per_node is {want_size}; "
            "check the devices visible on each node"
        )
    return None
