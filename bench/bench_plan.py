"""Time ``build_plan`` on a generated cluster: 10,000 services x 10 endpoints.

The services mix every topology mode (none, OpenYurt node pool, zone hints,
topologyKeys, internalTrafficPolicy=Local) over 100 nodes in 4 pools and 2 zones, so the
figure covers the real decision paths, not only the unfiltered one. Prints one JSON line;
``cpu_seconds`` is the planner's CPU time, which stays meaningful on a busy machine.

    python bench/bench_plan.py [--services N] [--endpoints M]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

# run as a script: import proxyd and tests.builders from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxyd.model import ClusterSnapshot, EndpointSlice, NodeInfo, Service, TrafficPolicy
from proxyd.plan import build_plan
from tests.builders import eps, node, pool, sep, snapshot, svc

NODES = 100
POOLS = 4


def _node(i: int) -> NodeInfo:
    return node(
        f"node-{i}",
        pool=f"pool-{i % POOLS}",
        zone=f"zone-{i % 2}",
        addresses=(f"192.168.{i // 250}.{i % 250 + 1}",),
    )


def _service(i: int) -> Service:
    kind = i % 5
    return svc(
        f"svc-{i}",
        f"ns-{i % 50}",
        cluster_ips=(f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",),
        openyurt_scopes=("openyurt.io/nodepool",) if kind == 1 else (),
        topology_keys=("kubernetes.io/hostname", "topology.kubernetes.io/zone", "*")
        if kind == 3
        else (),
        internal_traffic_policy=TrafficPolicy.LOCAL if kind == 4 else TrafficPolicy.CLUSTER,
    )


def _slice(service: Service, i: int, per_service: int) -> EndpointSlice:
    hinted = i % 5 == 2
    endpoints = [
        sep(
            f"10.{(i * per_service + j) // 65536 + 128}.{(i * per_service + j) // 256 % 256}"
            f".{(i * per_service + j) % 256}",
            node_name=f"node-{(i + j) % NODES}",
            zone=f"zone-{(i + j) % NODES % 2}",
            hints_zones=frozenset({f"zone-{(i + j) % NODES % 2}"}) if hinted else None,
        )
        for j in range(per_service)
    ]
    return eps(
        service.ref.name,
        endpoints,
        namespace=service.ref.namespace,
        trigger_time=1_700_000_000.0 + i,
    )


def generate(services: int, per_service: int) -> ClusterSnapshot:
    pools = [
        pool(f"pool-{p}", *(f"node-{i}" for i in range(p, NODES, POOLS))) for p in range(POOLS)
    ]
    svcs = [_service(i) for i in range(services)]
    slices = [_slice(service, i, per_service) for i, service in enumerate(svcs)]
    return snapshot(*map(_node, range(NODES)), *pools, *svcs, *slices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    args = parser.parse_args()
    snapshot = generate(args.services, args.endpoints)

    gc.collect()  # time the planner, not the collection of the generator's garbage
    start, cpu_start = time.perf_counter(), time.process_time()
    full = build_plan(snapshot, "node-0")
    full_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start  # robust to a busy shared machine

    # One service loses an endpoint; re-plan only that service.
    key, eps = next(iter(snapshot.slices.items()))
    shrunk = replace(eps, endpoints=eps.endpoints[1:])
    after = replace(snapshot, slices={**snapshot.slices, key: shrunk})
    gc.collect()
    start = time.perf_counter()
    partial = build_plan(after, "node-0", previous=full, changed=frozenset({eps.service}))
    partial_seconds = time.perf_counter() - start
    if partial != build_plan(after, "node-0"):
        raise SystemExit("incremental plan differs from the full plan")

    print(
        json.dumps(
            {
                "bench": "plan",
                "services": args.services,
                "endpoints_per_service": args.endpoints,
                "service_ports": len(full.services),
                "seconds": round(full_seconds, 3),
                "cpu_seconds": round(cpu_seconds, 3),
                "incremental_one_service_seconds": round(partial_seconds, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
