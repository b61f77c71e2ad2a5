"""Informer cold start at scale: N services x M endpoints listed from the fake API server.

The fake API server runs as its own process, as a real one would, loaded from a JSON
file with N Services (one TCP port each) and one EndpointSlice of M ready endpoints per
Service, plus a Node. The informers of ``proxyd.sources.kube`` (the real ``kubernetes``
client) then list everything in pages and translate it into a ``ClusterState``.

Figures (one JSON line):

- ``seconds``: ``KubeSources.start()`` → ``has_synced()`` (goal < 10 s);
- ``cpu_s``: CPU this process (the informers) used in that time; the rest of the wall
  clock is the fake server serializing pages on the other core;
- ``services``/``slices``/``endpoints``: what reached the store (checked, not assumed).

    python bench/bench_informer.py [--services 10000] [--endpoints 10] [--page-size 500]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from proxyd.sources.kube import InformerOptions, KubeSources, api_client
from proxyd.store import ClusterState


def _pod_ip(n: int) -> str:
    return f"10.{128 + n // 62_500}.{n // 250 % 250}.{n % 250 + 1}"


def objects(services: int, endpoints: int) -> Iterator[dict[str, Any]]:
    yield {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]},
    }
    for i in range(services):
        name, ns = f"svc-{i:05d}", f"ns-{i % 50}"
        yield {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "clusterIP": f"10.96.{i // 250}.{i % 250 + 1}",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            },
        }
        yield {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-abcde",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [_pod_ip(i * endpoints + e)],
                    "conditions": {"ready": True},
                    "nodeName": "n1",
                    "zone": "z1",
                }
                for e in range(endpoints)
            ],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--page-size", type=int, default=InformerOptions().page_size)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pxk-bench-") as tmp:
        work = Path(tmp)
        data = work / "objects.json"
        items = list(objects(args.services, args.endpoints))
        data.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        kubeconfig = work / "kubeconfig"
        argv = [
            sys.executable,
            "-m",
            "proxyd.sandbox.fakeapi",
            "--objects",
            str(data),
            "--kubeconfig",
            str(kubeconfig),
        ]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as server:
            try:
                assert server.stdout is not None
                loaded = json.loads(server.stdout.readline())["objects"]
                state = ClusterState()
                client = api_client(str(kubeconfig))
                options = replace(InformerOptions(), page_size=args.page_size)
                sources = KubeSources(client, state, options=options)
                cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
                started = time.monotonic()
                sources.start()
                while not sources.has_synced():
                    time.sleep(0.005)
                seconds = time.monotonic() - started
                cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu
                sources.stop()
                client.close()
            finally:
                server.terminate()
    snapshot = state.snapshot()
    endpoints = sum(len(s.endpoints) for s in snapshot.slices.values())
    assert len(snapshot.services) == args.services and len(snapshot.slices) == args.services
    assert endpoints == args.services * args.endpoints
    print(
        json.dumps(
            {
                "bench": "informer",
                "services": len(snapshot.services),
                "slices": len(snapshot.slices),
                "endpoints": endpoints,
                "objects_served": loaded,
                "page_size": args.page_size,
                "seconds": round(seconds, 3),
                "cpu_s": round(cpu, 3),
                "goal_s": 10.0,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
