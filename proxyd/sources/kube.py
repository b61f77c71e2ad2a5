"""API source: list + watch informers for Services, EndpointSlices, Nodes and NodePools.

Each informer is one thread running the reflector protocol of client-go, reduced to
what proxyd needs, on the official ``kubernetes`` client (its ``ApiClient`` does
configuration, authentication and HTTP; objects are read as raw JSON so fields the typed
models drop, such as ``spec.topologyKeys``, survive):

- **list** (pages of ``page_size``) → every object translated into the store; keys the
  informer had stored but the list no longer contains are deleted (the relist diff
  sees deletes that happened while no watch was open);
- **watch** from the list's ``resourceVersion`` with ``allowWatchBookmarks`` and
  ``timeoutSeconds``; every event and BOOKMARK advances the version, so a watch that
  ends (timeout, cut connection, API server restart) resumes from the last version seen
  without listing again;
- **410 Gone** (an ERROR event or an HTTP 410, also for an expired ``continue``) →
  exactly one relist, at once;
- any other failure (connection refused or cut, timeout, HTTP 5xx, garbage) →
  exponential backoff with jitter, then resume. The store is never cleared: losing the
  API server leaves proxyd forwarding with the last known state.

Every request has a timeout: (connect, read) = ``request_timeout`` for lists and
discovery; a watch asks the server to end it after ``watch_timeout`` and gives up
reading ``request_timeout`` later.

**Which Services and EndpointSlices.** kube-proxy lists with the server-side selector
``!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name``. proxyd
must keep the objects whose proxy name is *its own* as well, and Kubernetes label
selectors cannot say "absent or equal to X": requirements are ANDed, and ``!=``/``notin``
exclude only values they list. Two watches (label absent; label = own name) would
double the connections and let an object that is relabelled race a DELETED on one
watch against an ADDED on the other. So the server filters ``!…/headless`` only, and
the informer drops objects whose ``service-proxy-name`` label names another proxy,
treating them as deleted (a Service relabelled away leaves the store). This reads one
label of the metadata; object semantics stay in :mod:`proxyd.sources.translate`.
``proxy_name=None`` turns all selection off (``snapshot_once``: the same objects a
manifest directory would give).

**Nodes**: one informer for all of them; every node, this one included, is reduced to
what proxyd reads (name, labels, InternalIP/ExternalIP addresses): this node's labels
and addresses, the others' labels for pool membership and ``topologyKeys``.

**Malformed objects** raise InputError in translate: reported once per object version
(uid + resourceVersion) in the log and through ``on_reject(kind, reason)``; the
previous good version of that object stays in the store, nothing else is touched and
the informer keeps going.

**NodePools** (``apps.openyurt.io``, any version): the served version is discovered
(preferred first). Not served → the informer is disabled (logged once, counted as
synced so the daemon does not wait for it) and discovery is retried every
``pool_recheck_interval``; a 404 while watching means the CRD went away: its pools are
deleted from the store and discovery starts again.

``on_watch_restart(resource, cause)`` is called before each new list/watch with cause
``closed`` (the server ended the watch), ``expired`` (410), ``not_served`` (the
NodePool CRD vanished) or ``error`` (anything else, retried after backoff).
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import urllib3

from proxyd import __version__
from proxyd.errors import InputError, SourceError
from proxyd.model import ClusterSnapshot, EndpointSlice, NodeInfo, NodePool, Service, ServiceRef
from proxyd.sources import translate
from proxyd.store import ClusterState

__all__ = ["InformerOptions", "KubeSources", "api_client", "snapshot_once"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Json = dict[str, Any]
_Key = tuple[str, str]  # (namespace or "", name)
RejectHook = Callable[[str, str], None]
RestartHook = Callable[[str, str], None]

_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
_NOT_HEADLESS = "!service.kubernetes.io/headless"
_NODEPOOL_GROUP = "/apis/apps.openyurt.io"


@dataclass(frozen=True, slots=True)
class InformerOptions:
    """Tuning for the informers; the defaults suit a real cluster. Tests shorten them::

        InformerOptions(backoff_cap=1.5, request_timeout=2.0, pool_recheck_interval=0.2)

    ``backoff_initial`` doubles per consecutive failure up to ``backoff_cap``; each wait
    is drawn uniformly between half of that and all of it. ``proxy_name`` None selects
    every object (no label selector, no proxy-name filter).
    """

    proxy_name: str | None = "proxyd"
    request_timeout: float = 30.0
    watch_timeout: int = 300
    page_size: int = 500
    backoff_initial: float = 0.5
    backoff_cap: float = 30.0
    pool_recheck_interval: float = 300.0


# --- API access ----------------------------------------------------------------------------


class _Expired(SourceError):
    """410 Gone: the version asked for was compacted away; relist."""


class _NotServed(SourceError):
    """404 on a collection: the resource (a CRD) is not served."""


def api_client(kubeconfig: str | None, *, context: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` from a kubeconfig file, or the in-cluster
    service account when ``kubeconfig`` is None. urllib3's own retries are off: the
    informers count and back off themselves."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = kubeconfig or "in-cluster config (no --kubeconfig given)"
        raise SourceError(f"{where}: {exc}") from exc
    cfg.retries = False
    api = client.ApiClient(cfg)
    api.user_agent = f"proxyd/{__version__}"
    return api


class _Api:
    """GET requests through the client, failures turned into SourceError."""

    def __init__(self, client: Any, options: InformerOptions) -> None:
        self._client = client
        self._timeout = options.request_timeout

    def open(
        self, path: str, query: list[tuple[str, str]], read_timeout: float | None = None
    ) -> urllib3.BaseHTTPResponse:
        """The response, status 200, body not read yet."""
        from kubernetes.client.exceptions import ApiException

        method, url, headers, body, post = self._client.param_serialize(
            method="GET",
            resource_path=path,
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        timeout = (self._timeout, read_timeout or self._timeout)
        try:
            rest = self._client.call_api(method, url, headers, body, post, _request_timeout=timeout)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise SourceError(f"GET {path}: {exc}") from exc
        except ApiException as exc:
            raise SourceError(f"GET {path}: {exc.reason}") from exc
        response: urllib3.BaseHTTPResponse = rest.response
        if response.status == 200:
            return response
        raise _status_error(path, response)

    def get(self, path: str, query: list[tuple[str, str]]) -> _Json:
        response = self.open(path, query)
        try:
            data = json.loads(response.data)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise SourceError(f"GET {path}: {exc}") from exc
        except ValueError as exc:
            raise SourceError(f"GET {path}: response is not JSON: {exc}") from exc
        finally:
            _finish(response)
        if not isinstance(data, dict):
            raise SourceError(f"GET {path}: response is not a JSON object")
        return data


def _status_error(path: str, response: urllib3.BaseHTTPResponse) -> SourceError:
    """The error for a non-200 answer, with the Status message when there is one."""
    try:
        status = json.loads(response.data)
        message = status.get("message") or response.reason
    except (ValueError, AttributeError, urllib3.exceptions.HTTPError, OSError):
        message = response.reason
    finally:
        _finish(response)
    return _http_error(f"GET {path}", response.status, str(message))


def _finish(response: urllib3.BaseHTTPResponse) -> None:
    """Close the body (a read may have been cut short) and give the connection back."""
    response.close()
    response.release_conn()


def _http_error(what: str, code: int, message: str) -> SourceError:
    text = f"{what}: HTTP {code}: {message}"
    if code == 410:
        return _Expired(text)
    if code == 404:
        return _NotServed(text)
    return SourceError(text)


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The non-empty lines of a chunked watch stream, as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


# --- one informer ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind(Generic[T]):
    """One watched resource: where it lives and how its objects reach the store.
    ``path`` None means "discover it" (NodePools)."""

    kind: str
    resource: str
    path: str | None
    namespaced: bool
    selected: bool  # Services/EndpointSlices: headless and other proxies' objects dropped
    translate: Callable[[Mapping[str, Any]], T]
    put: Callable[[ClusterState, T], None]
    remove: Callable[[ClusterState, _Key], None]


_SERVICES: _Kind[Service] = _Kind(
    kind="Service",
    resource="services",
    path="/api/v1/services",
    namespaced=True,
    selected=True,
    translate=translate.service,
    put=lambda state, value: state.set_service(value),
    remove=lambda state, key: state.delete_service(ServiceRef(*key)),
)
_SLICES: _Kind[EndpointSlice] = _Kind(
    kind="EndpointSlice",
    resource="endpointslices",
    path="/apis/discovery.k8s.io/v1/endpointslices",
    namespaced=True,
    selected=True,
    translate=translate.endpoint_slice,
    put=lambda state, value: state.set_slice(value),
    remove=lambda state, key: state.delete_slice(*key),
)
_NODES: _Kind[NodeInfo] = _Kind(
    kind="Node",
    resource="nodes",
    path="/api/v1/nodes",
    namespaced=False,
    selected=False,
    translate=translate.node,
    put=lambda state, value: state.set_node(value),
    remove=lambda state, key: state.delete_node(key[1]),
)
_POOLS: _Kind[NodePool] = _Kind(
    kind="NodePool",
    resource="nodepools",
    path=None,
    namespaced=False,
    selected=False,
    translate=translate.node_pool,
    put=lambda state, value: state.set_pool(value),
    remove=lambda state, key: state.delete_pool(key[1]),
)


class _Backoff:
    """Exponential backoff with jitter; ``reset()`` after a success."""

    def __init__(self, options: InformerOptions, rand: Callable[[], float]) -> None:
        self._initial = options.backoff_initial
        self._cap = options.backoff_cap
        self._rand = rand
        self._failures = 0

    def next(self) -> float:
        ceiling = min(self._cap, self._initial * 2 ** min(self._failures, 30))
        self._failures += 1
        return float(ceiling * (0.5 + 0.5 * self._rand()))

    def reset(self) -> None:
        self._failures = 0


@dataclass(frozen=True, slots=True)
class _Hooks:
    on_reject: RejectHook
    on_watch_restart: RestartHook
    sleep: Callable[[float], object]
    rand: Callable[[], float]


class _Informer(Generic[T]):
    """List + watch of one resource into the store, on its own thread."""

    def __init__(
        self,
        kind: _Kind[T],
        api: _Api,
        state: ClusterState,
        options: InformerOptions,
        hooks: _Hooks,
        stopping: threading.Event,
    ) -> None:
        self.kind = kind
        self.synced = threading.Event()
        self._api = api
        self._state = state
        self._options = options
        self._hooks = hooks
        self._stopping = stopping
        self._backoff = _Backoff(options, hooks.rand)
        self._path = kind.path
        self._rv: str | None = None
        self._known: set[_Key] = set()
        self._rejected: dict[_Key, tuple[str, str]] = {}
        self._response: urllib3.BaseHTTPResponse | None = None
        self._not_served_logged = False
        proxy = options.proxy_name
        self._selector = _NOT_HEADLESS if kind.selected and proxy is not None else None
        self._foreign: Callable[[Mapping[str, Any]], bool] = (
            (lambda obj: _proxy_label(obj) not in (None, proxy))
            if kind.selected and proxy is not None
            else (lambda obj: False)
        )

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        resource = self.kind.resource
        while not self._stopping.is_set():
            try:
                if self._path is None and not self.discover():
                    if not self._not_served_logged:
                        log.info(
                            "NodePools (apps.openyurt.io) are not served: pool membership "
                            "comes from node labels; checking again every %.0fs",
                            self._options.pool_recheck_interval,
                        )
                        self._not_served_logged = True
                    self._hooks.sleep(self._options.pool_recheck_interval)
                    continue
                if self._rv is None:
                    self.relist()
                self._watch()
                cause = "closed"
            except _Expired as exc:
                log.info("%s: %s; listing again", resource, exc)
                listing, self._rv, cause = self._rv is None, None, "expired"
                if listing:  # the list itself expired (a stale continue): do not spin
                    self._hooks.sleep(self._backoff.next())
            except _NotServed as exc:
                if self.kind.path is not None:
                    cause = self._failed(exc)
                else:
                    log.warning("%s: no longer served (%s)", resource, exc)
                    self._path, self._rv, cause = None, None, "not_served"
            except SourceError as exc:
                cause = self._failed(exc)
            except Exception as exc:  # a bug here must not silently freeze the state
                log.exception("%s: unexpected failure", resource)
                self._rv = None
                cause = self._failed(SourceError(repr(exc)))
            if self._stopping.is_set():
                return
            self._hooks.on_watch_restart(resource, cause)

    def _failed(self, exc: SourceError) -> str:
        delay = self._backoff.next()
        if not self._stopping.is_set():
            log.warning("%s: %s; retrying in %.1fs", self.kind.resource, exc, delay)
            self._hooks.sleep(delay)
        return "error"

    def interrupt(self) -> None:
        """Unblock a read in progress (stop)."""
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except (ValueError, RuntimeError, OSError, AttributeError):
                response.close()

    # --- list ---------------------------------------------------------------------------

    def relist(self) -> None:
        """One full list into the store; afterwards watch from its version."""
        assert self._path is not None
        seen: set[_Key] = set()
        query = [("limit", str(self._options.page_size))]
        if self._selector is not None:
            query.append(("labelSelector", self._selector))
        token: str | None = None
        while True:
            page = self._api.get(self._path, [*query, *([("continue", token)] if token else [])])
            meta = page.get("metadata") or {}
            for obj in page.get("items") or ():
                key = self._apply("ADDED", obj)
                if key is not None:
                    seen.add(key)
            token = meta.get("continue") or None
            if token is None:
                break
        rv = meta.get("resourceVersion")
        if not rv:
            raise SourceError(f"list {self.kind.resource}: no resourceVersion in the answer")
        for key in self._known - seen:
            self._forget(key)
        self._rv = str(rv)
        self._backoff.reset()
        self.synced.set()

    def discover(self) -> bool:
        """Find the served NodePool version; False (and the pools gone) if none."""
        path = _nodepool_path(self._api)
        if path is None:
            for key in set(self._known):
                self._forget(key)
            self.synced.set()
            return False
        log.info("NodePools served at %s", path)
        self._not_served_logged = False
        self._path = path
        self._backoff.reset()
        return True

    # --- watch --------------------------------------------------------------------------

    def _watch(self) -> None:
        assert self._path is not None and self._rv is not None
        timeout = self._options.watch_timeout
        query = [
            ("watch", "true"),
            ("resourceVersion", self._rv),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout)),
        ]
        if self._selector is not None:
            query.append(("labelSelector", self._selector))
        response = self._api.open(self._path, query, timeout + self._options.request_timeout)
        self._response = response
        try:
            for line in _lines(response):
                self._event(line)
                self._backoff.reset()
                if self._stopping.is_set():
                    return
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise SourceError(f"watch {self.kind.resource}: {exc}") from exc
        finally:
            self._response = None
            _finish(response)
        self._backoff.reset()

    def _event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(
                f"watch {self.kind.resource}: malformed event {line[:200]!r}"
            ) from exc
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message", "") if isinstance(obj, dict) else str(obj)
            raise _http_error(f"watch {self.kind.resource}", code or 500, message)
        if kind == "BOOKMARK":
            rv = _meta(obj).get("resourceVersion")
            self._rv = str(rv) if rv else self._rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise SourceError(f"watch {self.kind.resource}: unknown event type {kind!r}")
        self._apply(kind, obj)
        rv = _meta(obj).get("resourceVersion")
        self._rv = str(rv) if rv else self._rv

    # --- store --------------------------------------------------------------------------

    def _apply(self, event: str, obj: Any) -> _Key | None:
        """Bring one object into the store; returns its key (None: no usable name)."""
        meta = _meta(obj)
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            where = f"{self.kind.kind} <no name>"
            self._reject(None, obj, InputError(where, "metadata.name", "missing", "missing_name"))
            return None
        namespace = (meta.get("namespace") or "default") if self.kind.namespaced else ""
        key = (str(namespace), name)
        if event == "DELETED" or self._foreign(obj):
            self._forget(key)
            return key
        try:
            value = self.kind.translate(obj)
        except InputError as exc:
            self._reject(key, obj, exc)
            return key
        except Exception as exc:  # a translate bug must not stop the informer
            where = f"{self.kind.kind} {'/'.join(filter(None, key))}"
            log.exception("%s: cannot translate", where)
            self._reject(key, obj, InputError(where, "(object)", repr(exc), "internal_error"))
            return key
        self.kind.put(self._state, value)
        self._known.add(key)
        self._rejected.pop(key, None)
        return key

    def _forget(self, key: _Key) -> None:
        self._rejected.pop(key, None)
        if key in self._known:
            self._known.discard(key)
            self.kind.remove(self._state, key)

    def _reject(self, key: _Key | None, obj: Any, exc: InputError) -> None:
        meta = _meta(obj)
        version = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
        if key is not None:
            if self._rejected.get(key) == version:
                return
            self._rejected[key] = version
        kept = " (keeping its previous version)" if key in self._known else ""
        log.warning("rejected %s%s", exc, kept)
        self._hooks.on_reject(self.kind.kind, exc.reason)


def _meta(obj: Any) -> Mapping[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _proxy_label(obj: Mapping[str, Any]) -> str | None:
    labels = _meta(obj).get("labels")
    value = labels.get(_PROXY_NAME_LABEL) if isinstance(labels, dict) else None
    return value if isinstance(value, str) else None


def _nodepool_path(api: _Api) -> str | None:
    """The NodePool collection in the first served version (preferred first)."""
    try:
        group = api.get(_NODEPOOL_GROUP, [])
    except _NotServed:
        return None
    preferred = (group.get("preferredVersion") or {}).get("version")
    versions = [v.get("version") for v in group.get("versions") or () if isinstance(v, dict)]
    for version in sorted(set(filter(None, versions)), key=lambda v: (v != preferred, v)):
        try:
            resources = api.get(f"{_NODEPOOL_GROUP}/{version}", [])
        except _NotServed:
            continue
        if any(r.get("name") == "nodepools" for r in resources.get("resources") or ()):
            return f"{_NODEPOOL_GROUP}/{version}/nodepools"
    return None


# --- the set of informers -------------------------------------------------------------------


class KubeSources:
    """Services, EndpointSlices, Nodes and NodePools from the API server into ``state``.

    ``client`` is a ``kubernetes.client.ApiClient`` (see :func:`api_client`). ``sleep``
    (default: an interruptible wait) and ``rand`` (jitter in [0, 1)) are injectable for
    tests. Callbacks run on the informer threads and must not block.
    """

    def __init__(
        self,
        client: Any,
        state: ClusterState,
        *,
        options: InformerOptions | None = None,
        on_reject: RejectHook | None = None,
        on_watch_restart: RestartHook | None = None,
        sleep: Callable[[float], object] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options or InformerOptions()
        self._stopping = threading.Event()
        hooks = _Hooks(
            on_reject=on_reject or (lambda kind, reason: None),
            on_watch_restart=on_watch_restart or (lambda resource, cause: None),
            sleep=sleep or self._stopping.wait,
            rand=rand,
        )
        api = _Api(client, self.options)
        kinds: tuple[_Kind[Any], ...] = (_SERVICES, _SLICES, _NODES, _POOLS)
        self._informers = [
            _Informer(kind, api, state, self.options, hooks, self._stopping) for kind in kinds
        ]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for informer in self._informers:
            thread = threading.Thread(
                target=informer.run, name=f"informer-{informer.kind.resource}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def has_synced(self) -> bool:
        """True once every informer has listed (a disabled NodePool informer counts)."""
        return all(informer.synced.is_set() for informer in self._informers)

    def stop(self, timeout: float = 5.0) -> None:
        """End the threads: open watches are cut, waits interrupted. Waits ``timeout`` in
        all: a thread blocked in a list (an unreachable API server) cannot be interrupted
        and is a daemon thread, so each gets its share instead of the whole."""
        self._stopping.set()
        for informer in self._informers:
            informer.interrupt()
        for thread in self._threads:
            thread.join(timeout / len(self._threads))
        self._threads.clear()

    def list_once(self) -> None:
        """List every resource once into the store, without watching (no retries)."""
        for informer in self._informers:
            if informer.kind.path is not None or informer.discover():
                informer.relist()


def snapshot_once(
    kubeconfig: str | None,
    *,
    context: str | None = None,
    on_reject: RejectHook | None = None,
    request_timeout: float = 30.0,
) -> ClusterSnapshot:
    """Everything proxyd reads, listed once (``proxyd plan --kubeconfig``).

    No selection: the result equals loading the same objects as manifests. Malformed
    objects are logged and skipped (``on_reject``); an unreachable API raises SourceError.
    """
    client = api_client(kubeconfig, context=context)
    state = ClusterState()
    options = InformerOptions(proxy_name=None, request_timeout=request_timeout)
    try:
        KubeSources(client, state, options=options, on_reject=on_reject).list_once()
    finally:
        client.close()
    return state.snapshot()
