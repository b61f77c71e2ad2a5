"""ClusterState: the current objects by key, plus what changed since the last sync.

Sources (manifests, API informers) call the ``set_*``/``delete_*`` methods from any thread;
the sync loop calls :meth:`ClusterState.snapshot` and :meth:`ClusterState.checkout`.
The optional ``on_change(kind)`` listener (kind: ``service``, ``slice``, ``node``,
``pool``) is called after every write that changed the store, outside the lock: the
daemon uses it to queue a sync.
Change tracking keeps, per key, the value from before the first unsynced change and the
latest value; when the two end up equal (a flap) the key is dropped, so a change that
was undone triggers no work. Unless a snapshot was taken in between: the sync checks
out, then copies the store, so a write landing between the two may be in the plan while
still pending; undoing it is then a change for that plan, not a flap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from proxyd.model import ClusterSnapshot, EndpointSlice, NodeInfo, NodePool, Service, ServiceRef

__all__ = ["ChangeTracker", "Changes", "ClusterState"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Change(Generic[V]):
    previous: V | None
    current: V | None
    seen: bool = False  # a snapshot showed a later value than ``previous``


class ChangeTracker(Generic[K, V]):
    """First-previous / latest-current per key (kube-proxy's change tracker shape)."""

    def __init__(self) -> None:
        self._pending: dict[K, _Change[V]] = {}

    def update(self, key: K, old: V | None, new: V | None) -> None:
        change = self._pending.setdefault(key, _Change(previous=old, current=new))
        change.current = new
        if change.previous == change.current and not change.seen:
            del self._pending[key]

    def mark_seen(self) -> None:
        """A snapshot is being taken: a plan may now hold the pending values."""
        for change in self._pending.values():
            change.seen = True

    def __len__(self) -> int:
        return len(self._pending)

    def checkout(self) -> frozenset[K]:
        keys = frozenset(self._pending)
        self._pending = {}
        return keys


@dataclass(frozen=True, slots=True)
class Changes:
    """What a sync must look at. ``topology`` is set when a Node or NodePool changed:
    every service's topology may then differ, so all services are re-planned.
    ``trigger_times`` maps a service to the earliest last-change-trigger-time among its
    pending slice changes (for network programming latency)."""

    services: frozenset[ServiceRef]
    endpoints: frozenset[ServiceRef]
    topology: bool
    trigger_times: dict[ServiceRef, float]

    @property
    def changed_services(self) -> frozenset[ServiceRef]:
        return self.services | self.endpoints


class ClusterState:
    """Thread-safe store of the translated objects proxyd watches."""

    def __init__(self, on_change: Callable[[str], None] | None = None) -> None:
        self._on_change = on_change
        self._lock = threading.Lock()
        self._services: dict[ServiceRef, Service] = {}
        self._slices: dict[tuple[str, str], EndpointSlice] = {}
        self._nodes: dict[str, NodeInfo] = {}
        self._pools: dict[str, NodePool] = {}
        self._service_changes: ChangeTracker[ServiceRef, Service] = ChangeTracker()
        self._slice_changes: ChangeTracker[tuple[str, str], EndpointSlice] = ChangeTracker()
        # services each pending slice change touches: old and new owner (a slice can move)
        self._slice_owners: dict[tuple[str, str], set[ServiceRef]] = {}
        self._topology_changed = False
        self._trigger_times: dict[ServiceRef, float] = {}

    # --- writers -------------------------------------------------------------------

    def set_service(self, svc: Service) -> None:
        with self._lock:
            old = self._services.get(svc.ref)
            self._services[svc.ref] = svc
            self._service_changes.update(svc.ref, old, svc)
        self._changed("service", old != svc)

    def delete_service(self, ref: ServiceRef) -> None:
        with self._lock:
            old = self._services.pop(ref, None)
            if old is not None:
                self._service_changes.update(ref, old, None)
        self._changed("service", old is not None)

    def set_slice(self, eps: EndpointSlice) -> None:
        key = (eps.namespace, eps.name)
        with self._lock:
            old = self._slices.get(key)
            self._slices[key] = eps
            self._record_slice_change(key, old, eps)
        self._changed("slice", old != eps)

    def delete_slice(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            old = self._slices.pop(key, None)
            if old is not None:
                self._record_slice_change(key, old, None)
        self._changed("slice", old is not None)

    def set_node(self, node: NodeInfo) -> None:
        with self._lock:
            changed = self._nodes.get(node.name) != node
            if changed:
                self._nodes[node.name] = node
                self._topology_changed = True
        self._changed("node", changed)

    def delete_node(self, name: str) -> None:
        with self._lock:
            changed = self._nodes.pop(name, None) is not None
            if changed:
                self._topology_changed = True
        self._changed("node", changed)

    def set_pool(self, pool: NodePool) -> None:
        with self._lock:
            changed = self._pools.get(pool.name) != pool
            if changed:
                self._pools[pool.name] = pool
                self._topology_changed = True
        self._changed("pool", changed)

    def delete_pool(self, name: str) -> None:
        with self._lock:
            changed = self._pools.pop(name, None) is not None
            if changed:
                self._topology_changed = True
        self._changed("pool", changed)

    def _changed(self, kind: str, changed: bool) -> None:
        if changed and self._on_change is not None:
            self._on_change(kind)

    def _record_slice_change(
        self, key: tuple[str, str], old: EndpointSlice | None, new: EndpointSlice | None
    ) -> None:
        self._slice_changes.update(key, old, new)
        owners = self._slice_owners.setdefault(key, set())
        owners.update(eps.service for eps in (old, new) if eps is not None)
        # Only the new version's trigger time dates this change: the old version's dates
        # the change before (already measured), and a deleted slice carries none.
        if new is not None and new.trigger_time is not None:
            seen = self._trigger_times.get(new.service)
            if seen is None or new.trigger_time < seen:
                self._trigger_times[new.service] = new.trigger_time

    # --- readers -------------------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        """A consistent copy; later writes do not show through."""
        with self._lock:
            self._service_changes.mark_seen()
            self._slice_changes.mark_seen()
            return ClusterSnapshot(
                services=dict(self._services),
                slices=dict(self._slices),
                nodes=dict(self._nodes),
                pools=dict(self._pools),
            )

    def node(self, name: str) -> NodeInfo | None:
        """One node as last seen, without copying the whole state (health asks often)."""
        with self._lock:
            return self._nodes.get(name)

    def pending(self) -> tuple[int, int]:
        """(service changes, endpoint changes) not yet checked out."""
        with self._lock:
            return len(self._service_changes), len(self._slice_changes)

    def checkout(self) -> Changes:
        """Hand the pending changes to a sync and start tracking anew."""
        with self._lock:
            services = self._service_changes.checkout()
            slice_keys = self._slice_changes.checkout()
            endpoints = frozenset(ref for k in slice_keys for ref in self._slice_owners[k])
            self._slice_owners = {}
            topology, self._topology_changed = self._topology_changed, False
            trigger_times, self._trigger_times = self._trigger_times, {}
            return Changes(services, endpoints, topology, trigger_times)
