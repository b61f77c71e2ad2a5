"""A fake Kubernetes API server: enough of the real protocol for the ``kubernetes`` client.

Tests and ``proxyd demo`` need an API server they can break on purpose: cut watches,
compact history (410 Gone), stall, go down and come back. This one serves Services,
EndpointSlices, Nodes, Events and OpenYurt NodePools (a "CRD" that can be absent) with:

- lists with a global, monotonically increasing ``resourceVersion``, ``limit``/``continue``
  served from a consistent snapshot (410 once that snapshot is compacted away);
- chunked watch streams (one JSON event per line): ADDED/MODIFIED/DELETED, BOOKMARK with
  ``allowWatchBookmarks``, resume from history, ``timeoutSeconds``; an object that stops
  (starts) matching the selectors is sent as DELETED (ADDED), as the watch cache does;
- a too-old ``resourceVersion`` answered with a 410 ``Status``: as an ERROR event in the
  watch stream (what the real watch cache does) or as HTTP 410 (``expired_as_http``);
- label selectors (``=``, ``==``, ``!=``, exists, ``!``, ``in``, ``notin``) and field
  selectors on ``metadata.name``/``metadata.namespace``;
- discovery (``/api``, ``/apis``, ``/apis/<group>[/<version>]``) and ``/version``.

Test controls exist twice: as methods of :class:`FakeApiServer` (the server runs on its
own event loop in a background thread, so tests drive it in-process) and as HTTP
endpoints under ``/_control/`` for a server running in another process
(``python -m proxyd.sandbox.fakeapi --port P --objects DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from proxyd.errors import ProxydError

__all__ = [
    "NODEPOOL_VERSIONS",
    "FakeApiServer",
    "load_objects",
    "main",
    "parse_field_selector",
    "parse_label_selector",
    "write_kubeconfig",
]

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

NODEPOOL_VERSIONS = ("v1beta1", "v1alpha1")
"""apps.openyurt.io versions served by default (the first is the preferred one)."""

_BOOKMARK_INTERVAL = 60.0
_DEFAULT_WATCH_TIMEOUT = 1800
_HISTORY_LIMIT = 200_000
_SNAPSHOTS_KEPT = 32
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class _Type:
    """One resource type. ``builtin`` types omit kind/apiVersion on list items (as the
    real server does for built-in types; custom resources keep them)."""

    group: str
    plural: str
    kind: str
    namespaced: bool
    builtin: bool = True

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


_SERVICES = _Type("", "services", "Service", namespaced=True)
_SLICES = _Type("discovery.k8s.io", "endpointslices", "EndpointSlice", namespaced=True)
_NODES = _Type("", "nodes", "Node", namespaced=False)
_EVENTS = _Type("", "events", "Event", namespaced=True)
_NODEPOOLS = _Type("apps.openyurt.io", "nodepools", "NodePool", namespaced=False, builtin=False)
_TYPES = (_SERVICES, _SLICES, _NODES, _EVENTS, _NODEPOOLS)
_FIXED_VERSIONS: Mapping[str, tuple[str, ...]] = {"": ("v1",), "discovery.k8s.io": ("v1",)}


# --- selectors (pure) --------------------------------------------------------------------

_SET_TERM = re.compile(r"^([^\s!=(),]+)\s+(in|notin)\s+\(([^()]*)\)$")


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( … )``."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    if (m := _SET_TERM.match(term)) is not None:
        key, op = m.group(1), m.group(2)
        values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        key, sep, value = term.partition(op)
        if sep:
            key, value = key.strip(), value.strip()
            if not key or any(c in key + value for c in " !=()"):
                raise ValueError(f"invalid label selector term {term!r}")
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    negated = term.startswith("!")
    key = term[1:].strip() if negated else term
    if not key or any(c in key for c in " !=()"):
        raise ValueError(f"invalid label selector term {term!r}")
    if negated:
        return lambda labels: key not in labels
    return lambda labels: key in labels


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A ``labelSelector`` as a predicate on a label mapping (requirements are ANDed;
    ``!=`` and ``notin`` match objects without the label, as in Kubernetes).
    Raises ValueError on a malformed selector."""
    terms = [_label_term(t) for t in _split_terms(text)]
    return lambda labels: all(term(labels) for term in terms)


_FIELDS: Mapping[str, Callable[[Obj], str]] = {
    "metadata.name": lambda obj: str(obj.get("metadata", {}).get("name", "")),
    "metadata.namespace": lambda obj: str(obj.get("metadata", {}).get("namespace", "")),
}


def parse_field_selector(text: str) -> Predicate:
    """A ``fieldSelector`` on ``metadata.name``/``metadata.namespace`` (``=``, ``==``,
    ``!=``) as a predicate on an object. Raises ValueError for other fields."""
    checks: list[Predicate] = []
    for term in _split_terms(text):
        for op in ("!=", "==", "="):
            path, sep, value = term.partition(op)
            if sep:
                break
        else:
            raise ValueError(f"invalid field selector term {term!r}")
        getter = _FIELDS.get(path.strip())
        if getter is None:
            raise ValueError(f'field label not supported: "{path.strip()}"')
        checks.append(_field_check(getter, value.strip(), equal=op != "!="))
    return lambda obj: all(check(obj) for check in checks)


def _field_check(getter: Callable[[Obj], str], want: str, *, equal: bool) -> Predicate:
    return lambda obj: (getter(obj) == want) == equal


def _labels(obj: Obj) -> Mapping[str, str]:
    labels = obj.get("metadata", {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _HttpError(ValueError):
    """An API error answer; a ValueError for callers of the Python controls."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = _status(code, reason, message)


def _not_found() -> _HttpError:
    return _HttpError(404, "NotFound", "the server could not find the requested resource")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge patches are applied the same way)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


# --- cluster state (thread-safe, no asyncio) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Change:
    rv: int
    plural: str
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    old: Obj | None


@dataclass(eq=False)
class _Watcher:
    """One open watch. Changes are appended under the cluster lock; the handler drains
    them under the same lock, so a BOOKMARK never claims a version it has not sent."""

    plural: str
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event
    pending: deque[_Change] = field(default_factory=deque)
    dropped: bool = False

    def offer(self, change: _Change | None) -> None:
        if change is None:
            self.dropped = True
        else:
            self.pending.append(change)
        self.loop.call_soon_threadsafe(self.wake.set)


@dataclass(frozen=True, slots=True)
class _Snapshot:
    rv: int
    items: tuple[Obj, ...]


class _Cluster:
    """Objects, history and open watches; every method takes the lock itself."""

    def __init__(self, history_limit: int) -> None:
        self.lock = threading.Lock()
        self.rv = 0
        self.compacted = 0  # history holds every change with rv > compacted
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {t.plural: {} for t in _TYPES}
        self.history: deque[_Change] = deque()
        self.history_limit = history_limit
        self.watchers: set[_Watcher] = set()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.snapshots: dict[str, _Snapshot] = {}
        self.nodepool_versions: tuple[str, ...] = NODEPOOL_VERSIONS

    def served(self, group: str, version: str) -> dict[str, _Type]:
        versions = _FIXED_VERSIONS.get(group)
        if group == _NODEPOOLS.group:
            versions = self.nodepool_versions
        if versions is None or version not in versions:
            return {}
        return {t.plural: t for t in _TYPES if t.group == group}

    def write(self, rtype: _Type, kind: str, obj: Obj | None, key: tuple[str, str]) -> Obj:
        """Apply one change (``obj`` None = delete) and notify watches. ``kind`` is
        create / update / apply / delete; returns the stored (or deleted) object."""
        with self.lock:
            store = self.objects[rtype.plural]
            old = store.get(key)
            if kind == "create" and old is not None:
                raise _HttpError(409, "AlreadyExists", f'{rtype.plural} "{key[1]}" already exists')
            if kind in ("update", "delete") and old is None:
                raise _HttpError(404, "NotFound", f'{rtype.plural} "{key[1]}" not found')
            if obj is not None and old is not None and _content(obj) == _content(old):
                return old  # a no-op write: no new version, no event (as the real server)
            self.rv += 1
            if obj is None:
                assert old is not None
                gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(self.rv)}}
                del store[key]
                change = _Change(self.rv, rtype.plural, "DELETED", gone, old)
            else:
                meta = dict(obj.get("metadata") or {})
                meta["resourceVersion"] = str(self.rv)
                meta["uid"] = (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
                meta.setdefault(
                    "creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                )
                stored = {**obj, "metadata": meta}
                store[key] = stored
                change = _Change(
                    self.rv, rtype.plural, "ADDED" if old is None else "MODIFIED", stored, old
                )
            self.history.append(change)
            while len(self.history) > self.history_limit:
                self.compacted = self.history.popleft().rv
            for watcher in self.watchers:
                if watcher.plural == rtype.plural:
                    watcher.offer(change)
            return change.obj

    def compact(self) -> int:
        with self.lock:
            self.compacted = self.rv
            self.history.clear()
            self.snapshots.clear()
            return self.rv

    def drop(self, plural: str | None) -> int:
        with self.lock:
            hit = [w for w in self.watchers if plural is None or w.plural == plural]
            for watcher in hit:
                watcher.offer(None)
            return len(hit)


_SERVER_FIELDS = ("resourceVersion", "uid", "creationTimestamp")


def _content(obj: Obj) -> Obj:
    """An object without the metadata the server assigns."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_FIELDS}
    return {**obj, "metadata": meta}


# --- HTTP front end ----------------------------------------------------------------------


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":")).encode(), status=status, content_type=_JSON
    )


def _encode_token(snapshot_id: str, offset: int) -> str:
    raw = json.dumps({"id": snapshot_id, "offset": offset}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(data["id"]), int(data["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _HttpError(400, "BadRequest", "invalid continue token") from exc


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed resource URL."""

    rtype: _Type
    version: str
    namespace: str | None
    name: str | None


class FakeApiServer:
    """The fake API server. ``start()`` runs it on a background thread's event loop;
    ``stop()`` takes it down (connection refused) keeping all state, ``start()`` brings it
    back on the same port; ``close()`` ends the thread. Usable as a context manager.

    ``bookmark_interval`` sets how often idle watches get a BOOKMARK; ``expired_as_http``
    answers a watch from a compacted version with HTTP 410 instead of an ERROR event.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        history_limit: int = _HISTORY_LIMIT,
        bookmark_interval: float = _BOOKMARK_INTERVAL,
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.expired_as_http = False
        self._cluster = _Cluster(history_limit)
        self._stall_until = 0.0
        self._snapshot_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self) -> FakeApiServer:
        """Listen (again) on the configured port; the first start picks a free port if 0."""
        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="fakeapi", daemon=True)
            self._thread.start()
            self._loop = loop
        if self._runner is None:
            self._call(self._listen())
        return self

    def stop(self) -> None:
        """Go down: close every connection and the listening socket; keep the state."""
        if self._runner is not None:
            self._cluster.drop(None)
            self._call(self._shutdown())

    def close(self) -> None:
        self.stop()
        with self._cluster.lock:
            self._cluster.watchers.clear()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
            self._loop = self._thread = None

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    async def _listen(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/_control/{action}", self._control)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def _shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _down_for(self, seconds: float) -> None:
        await asyncio.sleep(0.05)  # let the control response go out first
        self._cluster.drop(None)
        await self._shutdown()
        await asyncio.sleep(seconds)
        await self._listen()

    # --- test controls (in-process) ----------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._cluster.rv

    def create(self, obj: Obj) -> Obj:
        """Store a new object (ValueError if it exists); returns it as stored."""
        return self._write_obj("create", obj)

    def update(self, obj: Obj) -> Obj:
        """Replace an existing object (ValueError if there is none)."""
        return self._write_obj("update", obj)

    def apply(self, obj: Obj) -> Obj:
        """Create or replace."""
        return self._write_obj("apply", obj)

    def apply_all(self, objs: Iterable[Obj]) -> int:
        return sum(1 for obj in objs if self.apply(obj))

    def delete(self, kind: str, name: str, namespace: str | None = None) -> Obj:
        rtype = _type_of(kind)
        return self._cluster.write(rtype, "delete", None, _store_key(rtype, namespace, name))

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        rtype = _type_of(kind)
        with self._cluster.lock:
            return self._cluster.objects[rtype.plural].get(_store_key(rtype, namespace, name))

    def objects(self, kind: str) -> list[Obj]:
        with self._cluster.lock:
            return list(self._cluster.objects[_type_of(kind).plural].values())

    def compact(self) -> int:
        """Forget all history: watches and continues from an older version get 410."""
        return self._cluster.compact()

    def drop_watches(self, plural: str | None = None) -> int:
        """Cut every open watch (of one resource) without the closing chunk."""
        return self._cluster.drop(plural)

    def stall(self, seconds: float) -> None:
        """Accept new requests but answer none of them for ``seconds``."""
        self._stall_until = time.monotonic() + seconds

    def set_nodepool_crd(self, versions: Sequence[str] | None) -> None:
        """Serve NodePools in these versions (first preferred); None removes the "CRD"
        together with every NodePool, as deleting a CRD does."""
        if versions is None:
            for obj in self.objects("NodePool"):
                self.delete("NodePool", obj["metadata"]["name"])
            self._cluster.drop(_NODEPOOLS.plural)
        self._cluster.nodepool_versions = tuple(versions or ())

    def counts(self, plural: str) -> dict[str, int]:
        """Requests seen per verb (list = first pages only, watch, get, create, …)."""
        with self._cluster.lock:
            return {verb: n for (p, verb), n in self._cluster.counts.items() if p == plural}

    def reset_counts(self) -> None:
        with self._cluster.lock:
            self._cluster.counts.clear()

    def active_watches(self, plural: str) -> int:
        with self._cluster.lock:
            return sum(1 for w in self._cluster.watchers if w.plural == plural)

    def write_kubeconfig(self, path: str | Path) -> str:
        return write_kubeconfig(path, self.url)

    def _write_obj(self, kind: str, obj: Obj) -> Obj:
        rtype = _type_of(str(obj.get("kind", "")))
        meta = obj.get("metadata") or {}
        clean = _admit(json.loads(json.dumps(obj)), rtype, meta.get("namespace"))
        key = _store_key(rtype, clean["metadata"].get("namespace"), clean["metadata"]["name"])
        return self._cluster.write(rtype, kind, clean, key)

    # --- HTTP: controls ----------------------------------------------------------------

    async def _control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        query = request.query
        try:
            if action == "objects" and request.method == "POST":
                body = await request.json()
                items = body.get("items", []) if body.get("kind", "").endswith("List") else [body]
                return _json({"applied": await asyncio.to_thread(self.apply_all, items)})
            if action == "objects" and request.method == "DELETE":
                obj = self.delete(query["kind"], query["name"], query.get("namespace"))
                return _json(obj)
            if action == "compact":
                return _json({"resourceVersion": self.compact()})
            if action == "drop-watches":
                return _json({"dropped": self.drop_watches(query.get("resource"))})
            if action == "stall":
                self.stall(float(query["seconds"]))
                return _json({"stalled": float(query["seconds"])})
            if action == "down":
                seconds = float(query["seconds"])
                asyncio.get_running_loop().create_task(self._down_for(seconds))
                return _json({"down": seconds})
            if action == "nodepool-crd":
                raw = query.get("versions", "")
                self.set_nodepool_crd([v for v in raw.split(",") if v] or None)
                return _json({"versions": list(self._cluster.nodepool_versions)})
            if action == "counts":
                return _json(self.counts(query["resource"]))
            if action == "reset-counts":
                self.reset_counts()
                return _json({})
        except _HttpError as exc:
            return _json(exc.status, exc.status["code"])
        except (KeyError, ValueError) as exc:
            return _json(_status(400, "BadRequest", f"bad control request: {exc}"), 400)
        return _json(_status(404, "NotFound", f"no control {action!r}"), 404)

    # --- HTTP: the API -----------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        delay = self._stall_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            parts = [p for p in request.path.split("/") if p]
            discovery = self._discovery(parts)
            if discovery is not None:
                return _json(discovery)
            target = self._target(parts)
            if request.method == "GET" and target.name is None:
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, target)
                return self._list(request, target)
            return await self._item(request, target)
        except _HttpError as exc:
            return _json(exc.status, exc.status["code"])

    def _discovery(self, parts: list[str]) -> Obj | None:
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-proxyd-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        groups = self._groups()
        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [_group_doc(g, v) for g, v in groups.items() if g],
            }
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in groups or not parts[1]:
                raise _not_found()
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                **_group_doc(parts[1], groups[parts[1]]),
            }
        group_version = self._group_version(parts)
        if group_version is not None and len(parts) == (2 if parts[0] == "api" else 3):
            group, version = group_version
            served = self._cluster.served(group, version)
            if not served:
                raise _not_found()
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": [_resource_doc(t) for t in served.values()],
            }
        return None

    def _groups(self) -> dict[str, tuple[str, ...]]:
        groups: dict[str, tuple[str, ...]] = dict(_FIXED_VERSIONS)
        if self._cluster.nodepool_versions:
            groups[_NODEPOOLS.group] = self._cluster.nodepool_versions
        return groups

    @staticmethod
    def _group_version(parts: list[str]) -> tuple[str, str] | None:
        if len(parts) >= 2 and parts[0] == "api":
            return "", parts[1]
        if len(parts) >= 3 and parts[0] == "apis":
            return parts[1], parts[2]
        return None

    def _target(self, parts: list[str]) -> _Target:
        group_version = self._group_version(parts)
        if group_version is None:
            raise _not_found()
        group, version = group_version
        rest = parts[2:] if parts[0] == "api" else parts[3:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        rtype = self._cluster.served(group, version).get(rest[0]) if rest else None
        if rtype is None or len(rest) > 2 or (namespace is not None and not rtype.namespaced):
            raise _not_found()
        name = rest[1] if len(rest) == 2 else None
        if name is not None and rtype.namespaced and namespace is None:
            raise _not_found()
        return _Target(rtype, version, namespace, name)

    def _selector(self, request: web.Request, target: _Target) -> Predicate:
        try:
            labels = parse_label_selector(request.query.get("labelSelector", ""))
            fields = parse_field_selector(request.query.get("fieldSelector", ""))
        except ValueError as exc:
            raise _HttpError(400, "BadRequest", str(exc)) from exc
        namespace = target.namespace
        return lambda obj: (
            (namespace is None or _key(obj)[0] == namespace)
            and labels(_labels(obj))
            and fields(obj)
        )

    def _out(self, obj: Obj, target: _Target, *, in_list: bool) -> Obj:
        if in_list and target.rtype.builtin:
            return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        api_version = target.rtype.api_version(target.version)
        return obj if obj.get("apiVersion") == api_version else {**obj, "apiVersion": api_version}

    def _list(self, request: web.Request, target: _Target) -> web.Response:
        cluster, query = self._cluster, request.query
        token = query.get("continue")
        try:
            limit = int(query.get("limit", "0"))
        except ValueError as exc:
            raise _HttpError(400, "BadRequest", "invalid limit") from exc
        with cluster.lock:
            if token:
                snapshot_id, offset = _decode_token(token)
                snapshot = cluster.snapshots.get(snapshot_id)
                if snapshot is None or snapshot.rv < cluster.compacted:
                    raise _HttpError(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a "
                        "consistent list result. You can start a new list without the continue "
                        "parameter.",
                    )
            else:
                cluster.counts[(target.rtype.plural, "list")] += 1
                rv_text = query.get("resourceVersion", "")
                if query.get("resourceVersionMatch") == "Exact" and rv_text:
                    self._check_version(rv_text)
                match = self._selector(request, target)
                store = cluster.objects[target.rtype.plural]
                items = tuple(store[k] for k in sorted(store) if match(store[k]))
                snapshot, snapshot_id, offset = _Snapshot(cluster.rv, items), "", 0
            cluster.counts[(target.rtype.plural, "page")] += 1
            end = offset + limit if limit > 0 else len(snapshot.items)
            meta: Obj = {"resourceVersion": str(snapshot.rv)}
            if end < len(snapshot.items):
                if not snapshot_id:
                    snapshot_id = str(next(self._snapshot_ids))
                    cluster.snapshots[snapshot_id] = snapshot
                    while len(cluster.snapshots) > _SNAPSHOTS_KEPT:
                        del cluster.snapshots[next(iter(cluster.snapshots))]
                meta["continue"] = _encode_token(snapshot_id, end)
                meta["remainingItemCount"] = len(snapshot.items) - end
            elif snapshot_id:
                cluster.snapshots.pop(snapshot_id, None)
        page = [self._out(obj, target, in_list=True) for obj in snapshot.items[offset:end]]
        return _json(
            {
                "kind": f"{target.rtype.kind}List",
                "apiVersion": target.rtype.api_version(target.version),
                "metadata": meta,
                "items": page,
            }
        )

    def _check_version(self, rv_text: str) -> int:
        try:
            rv = int(rv_text)
        except ValueError as exc:
            raise _HttpError(400, "BadRequest", f"invalid resourceVersion {rv_text!r}") from exc
        if rv < self._cluster.compacted:
            raise _HttpError(
                410, "Expired", f"too old resource version: {rv} ({self._cluster.compacted})"
            )
        return rv

    async def _watch(self, request: web.Request, target: _Target) -> web.StreamResponse:
        cluster, query, plural = self._cluster, request.query, target.rtype.plural
        match = self._selector(request, target)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        try:
            timeout = float(query.get("timeoutSeconds", _DEFAULT_WATCH_TIMEOUT))
        except ValueError as exc:
            raise _HttpError(400, "BadRequest", "invalid timeoutSeconds") from exc
        loop = asyncio.get_running_loop()
        watcher = _Watcher(plural, loop, asyncio.Event())
        rv_text = query.get("resourceVersion", "")
        expired: Obj | None = None
        with cluster.lock:
            cluster.counts[(plural, "watch")] += 1
            since = 0
            if rv_text in ("", "0"):
                backlog = [
                    _Change(cluster.rv, plural, "ADDED", obj, None)
                    for _, obj in sorted(cluster.objects[plural].items())
                ]
            else:
                try:
                    since = self._check_version(rv_text)
                except _HttpError as exc:
                    if self.expired_as_http or exc.status["code"] != 410:
                        raise
                    expired = exc.status
                backlog = [c for c in cluster.history if c.plural == plural and c.rv > since]
            if expired is None:
                watcher.pending.extend(backlog)
                cluster.watchers.add(watcher)
            now_rv = cluster.rv
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if expired is not None:
            await response.write(_line({"type": "ERROR", "object": expired}))
            await response.write_eof()
            return response
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        try:
            while True:
                with cluster.lock:
                    batch = list(watcher.pending)
                    watcher.pending.clear()
                    now_rv, dropped = cluster.rv, watcher.dropped
                    watcher.wake.clear()
                if dropped:
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                lines = [
                    _line(ev)
                    for c in batch
                    if c.rv > since and (ev := self._event(c, match, target)) is not None
                ]
                if lines:
                    await response.write(b"".join(lines))
                now = loop.time()
                if now >= deadline:
                    break
                if bookmarks and now >= next_bookmark:
                    await response.write(_line(self._bookmark(target, now_rv)))
                    next_bookmark = now + self.bookmark_interval
                wait = min(deadline, next_bookmark if bookmarks else deadline) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), max(wait, 0.0))
        except ConnectionResetError:
            return response
        finally:
            with cluster.lock:
                cluster.watchers.discard(watcher)
        await response.write_eof()
        return response

    def _event(self, change: _Change, match: Predicate, target: _Target) -> Obj | None:
        """The event one watch sees: selector transitions turn into ADDED/DELETED."""
        was = change.old is not None and match(change.old)
        now = change.type != "DELETED" and match(change.obj)
        if was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            return None
        return {"type": kind, "object": self._out(change.obj, target, in_list=False)}

    @staticmethod
    def _bookmark(target: _Target, rv: int) -> Obj:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": target.rtype.kind,
                "apiVersion": target.rtype.api_version(target.version),
                "metadata": {"resourceVersion": str(rv)},
            },
        }

    async def _item(self, request: web.Request, target: _Target) -> web.Response:
        rtype, cluster = target.rtype, self._cluster
        method = request.method
        if method == "POST" and target.name is None:
            if rtype.namespaced and target.namespace is None:
                raise _not_found()
            obj = _admit(await _body(request), rtype, target.namespace)
            with cluster.lock:
                cluster.counts[(rtype.plural, "create")] += 1
            key = _store_key(rtype, target.namespace, obj["metadata"]["name"])
            return _json(
                self._out(cluster.write(rtype, "create", obj, key), target, in_list=False), 201
            )
        if target.name is None:
            raise _HttpError(405, "MethodNotAllowed", f"{method} is not supported here")
        key = _store_key(rtype, target.namespace, target.name)
        with cluster.lock:
            current = cluster.objects[rtype.plural].get(key)
            cluster.counts[(rtype.plural, method.lower())] += 1
        if method == "GET":
            if current is None:
                raise _HttpError(404, "NotFound", f'{rtype.plural} "{target.name}" not found')
            return _json(self._out(current, target, in_list=False))
        if method == "DELETE":
            return _json(
                self._out(cluster.write(rtype, "delete", None, key), target, in_list=False)
            )
        if method == "PUT":
            obj = _admit(await _body(request), rtype, target.namespace)
        elif method == "PATCH":
            if current is None:
                raise _HttpError(404, "NotFound", f'{rtype.plural} "{target.name}" not found')
            obj = _admit(_merge_patch(current, await _body(request)), rtype, target.namespace)
        else:
            raise _HttpError(405, "MethodNotAllowed", f"{method} is not supported")
        if obj["metadata"]["name"] != target.name:
            raise _HttpError(400, "BadRequest", "the name of the object does not match the URL")
        return _json(self._out(cluster.write(rtype, "update", obj, key), target, in_list=False))


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def _body(request: web.Request) -> Obj:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _HttpError(400, "BadRequest", f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise _HttpError(400, "BadRequest", "the body must be a JSON object")
    return body


def _type_of(kind: str) -> _Type:
    for rtype in _TYPES:
        if rtype.kind == kind:
            return rtype
    raise ValueError(f"the fake API server does not serve kind {kind!r}")


def _store_key(rtype: _Type, namespace: str | None, name: str) -> tuple[str, str]:
    return ((namespace or "default") if rtype.namespaced else "", name)


_NAME_SUFFIX = itertools.count(1)


def _admit(obj: Obj, rtype: _Type, namespace: str | None) -> Obj:
    """Fill what the server owns: kind, apiVersion, namespace, generated names."""
    meta = dict(obj.get("metadata") or {})
    if not meta.get("name"):
        if not meta.get("generateName"):
            raise _HttpError(400, "BadRequest", "metadata.name or generateName is required")
        meta["name"] = f"{meta['generateName']}{next(_NAME_SUFFIX):05d}"
    if rtype.namespaced:
        meta["namespace"] = namespace or meta.get("namespace") or "default"
    else:
        meta.pop("namespace", None)
    out = {**obj, "metadata": meta}
    out.setdefault("kind", rtype.kind)
    versions = _FIXED_VERSIONS.get(rtype.group, NODEPOOL_VERSIONS)
    out.setdefault("apiVersion", rtype.api_version(versions[0]))
    return out


def _group_doc(group: str, versions: Sequence[str]) -> Obj:
    docs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": docs, "preferredVersion": docs[0]}


def _resource_doc(rtype: _Type) -> Obj:
    return {
        "name": rtype.plural,
        "singularName": rtype.kind.lower(),
        "namespaced": rtype.namespaced,
        "kind": rtype.kind,
        "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
    }


# --- files -------------------------------------------------------------------------------


def load_objects(paths: Sequence[str]) -> Iterator[Obj]:
    """Raw objects from manifest files or directories, read exactly as ``proxyd plan``
    reads them (so the demo's cluster and its manifests cannot disagree)."""
    from proxyd.sources.manifests import read_objects

    return (dict(obj) for _, obj in read_objects(paths))


def write_kubeconfig(path: str | Path, server: str, *, token: str = "fake-token") -> str:
    """Write a kubeconfig whose current context points at ``server``; returns the path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m proxyd.sandbox.fakeapi``: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m proxyd.sandbox.fakeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--objects",
        action="append",
        default=[],
        metavar="PATH",
        help="YAML/JSON file or directory to load at start (repeatable)",
    )
    parser.add_argument("--kubeconfig", metavar="FILE", help="write a kubeconfig for the server")
    parser.add_argument("--bookmark-interval", type=float, default=_BOOKMARK_INTERVAL)
    parser.add_argument("--no-nodepool-crd", action="store_true", help="serve no NodePools")
    args = parser.parse_args(argv)
    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # threads inherit the mask
    server = FakeApiServer(args.host, args.port, bookmark_interval=args.bookmark_interval)
    if args.no_nodepool_crd:
        server.set_nodepool_crd(None)
    kinds = {t.kind for t in _TYPES}
    try:
        objects = list(load_objects(args.objects))
        loaded = server.apply_all(obj for obj in objects if obj.get("kind") in kinds)
    except (ProxydError, ValueError) as exc:
        print(f"fakeapi: {exc}", file=sys.stderr)
        return 2
    server.start()
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig)
    ignored = len(objects) - loaded  # kinds the fake does not serve (Deployments, …)
    print(json.dumps({"url": server.url, "objects": loaded, "ignored": ignored}), flush=True)
    signal.sigwait(signals)
    server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
