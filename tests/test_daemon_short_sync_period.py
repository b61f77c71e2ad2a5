"""A sync period under one second is a valid configuration (it only has to be > 0 and
not below minSyncPeriod); the daemon used to refuse to start with a ValueError traceback
because its retry backoff starts at one second and was capped at the sync period."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from proxyd.backends import SyncResult
from proxyd.commands.run import Daemon
from proxyd.config import resolve
from proxyd.model import NodePlan
from proxyd.runner import Backoff
from proxyd.sandbox.fakeapi import write_kubeconfig
from proxyd.sources.kube import api_client


class NoBackend:
    def sync(self, plan: NodePlan, *, full: bool) -> SyncResult:
        return SyncResult(ok=True, full=full)

    def cleanup(self) -> None:
        raise AssertionError("not called")


def test_daemon_starts_with_a_sub_second_sync_period(tmp_path: Path) -> None:
    cfg = resolve({}, {"sync_period": "500ms", "min_sync_period": "100ms",
                       "node_name": "n1"}, env={})
    assert cfg.sync_period == 0.5
    client = api_client(write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9"))
    try:
        Daemon(cfg, NoBackend(), client=client, registry=CollectorRegistry())
    finally:
        client.close()


def test_backoff_never_exceeds_its_cap_even_when_the_first_delay_would() -> None:
    backoff = Backoff(1.0, 0.5)
    assert [backoff.next() for _ in range(3)] == [0.5, 0.5, 0.5]
