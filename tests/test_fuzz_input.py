"""Bad input never crashes proxyd: property-based fuzzing of everything that reads
untrusted data (API objects, manifest files, the config file and flags).

Valid objects are mutated structurally (any nested value replaced by another JSON type,
keys deleted or added, list entries duplicated, absurd sizes); the readers must either
succeed or raise :class:`InputError` naming the object and the field, never anything
else, and must not mutate their input. Counter-examples hypothesis found are kept below
as explicit regression tests. Example counts are modest: the machine is shared.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxyd import config
from proxyd.errors import InputError
from proxyd.model import EndpointSlice, NodeInfo, NodePool, Service
from proxyd.sources import manifests, translate
from proxyd.store import ClusterState
from tests.builders import ep_obj, node_obj, pool_obj, port_obj, slice_obj, svc_obj

Obj = dict[str, Any]
JsonPath = tuple[str | int, ...]

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
HUGE = 10**5000  # more digits than int() → str conversion allows (sys.int_info)

# --- valid starting points -------------------------------------------------------------


def _rich_service() -> Obj:
    return svc_obj(
        "web",
        "shop",
        svc_type="LoadBalancer",
        cluster_ip="10.96.0.10",
        clusterIPs=["10.96.0.10", "fd00::10"],
        ports=[port_obj(80, nodePort=30080), port_obj(53, "dns", "UDP", nodePort=30053)],
        labels={"service.kubernetes.io/service-proxy-name": "proxyd"},
        annotations={
            "openyurt.io/topologyKeys": "kubernetes.io/hostname, openyurt.io/nodepool",
            "proxyd.io/ipvs-scheduler": "wlc",
        },
        status={
            "loadBalancer": {
                "ingress": [
                    {"ip": "192.0.2.1"},
                    {"ip": "192.0.2.2", "ipMode": "Proxy"},
                    {"hostname": "lb.example"},
                ]
            }
        },
        externalIPs=["198.51.100.7", "2001:db8::7"],
        loadBalancerSourceRanges=["10.0.0.0/8"],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Cluster",
        healthCheckNodePort=32000,
        topologyKeys=["kubernetes.io/hostname", "*"],
    )


def _rich_slice(address_type: str = "IPv4") -> Obj:
    ips = {"IPv4": ("10.1.0.1", "10.1.0.2"), "IPv6": ("fd00::1", "fd00::2")}
    first, second = ips.get(address_type, ("a.example", "b.example"))
    return slice_obj(
        "web",
        [
            ep_obj(
                first,
                node="node-a",
                zone="z1",
                ready=True,
                serving=True,
                terminating=False,
                for_zones=["z1"],
                for_nodes=["node-a"],
                deprecatedTopology={"kubernetes.io/hostname": "node-a"},
            ),
            second,
        ],
        namespace="shop",
        address_type=address_type,
        ports=[port_obj(8080), port_obj(None, "any")],
        annotations={"endpoints.kubernetes.io/last-change-trigger-time": "2024-01-01T00:00:00Z"},
    )


def _rich_node() -> Obj:
    obj = node_obj("node-a", pool="p1", zone="z1", internal_ips=["10.0.0.1"],
                   external_ips=["2001:db8::1"])
    obj["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    obj["spec"] = {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
    obj["status"]["addresses"].append({"type": "Hostname", "address": "node-a"})
    return obj


BASES: dict[str, Callable[[], Obj]] = {
    "service": _rich_service,
    "minimal-service": svc_obj,
    "slice-v4": _rich_slice,
    "slice-v6": lambda: _rich_slice("IPv6"),
    "slice-fqdn": lambda: _rich_slice("FQDN"),
    "node": _rich_node,
    "pool": lambda: pool_obj("p1", ["node-a", "node-b"]),
    "ignored-kind": lambda: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
}
NAMESPACED = {"Service", "EndpointSlice"}
KNOWN_KINDS = {
    ("v1", "Service"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("v1", "Node"),
}

# --- hostile values --------------------------------------------------------------------

#: Values of the right type but the wrong content, and a few that broke parsers before.
NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 80, 65535, 65536, 86401, 2**31, 2**63, 2**64, -(2**63),
    0.0, 80.0, -0.5, 1e308, math.inf, -math.inf, math.nan,
    "", " ", "None", "0", "-1", "80", "TCP", "UDP", "SCTP", "tcp", "IPv4", "IPv6", "FQDN",
    "ClientIP", "Local", "Cluster", "LoadBalancer", "NodePort", "ExternalName", "VIP",
    "Proxy", "10.0.0.1", "010.000.000.001", "10.0.0.256", "fd00::1", "FD00:0::1",
    "fe80::1%eth0", "::ffff:10.0.0.1", "1.2.3.4/33", "10.0.0.0/8 ", "::/0", "0.0.0.0",
    "2024-01-01T00:00:00Z", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
    "not-a-date", "a" * 10_000, "\x00", "\ud800", "ü/ñ", "a,b,,c", "{}", "[]",
    [], {}, [None], [[]], [{}], {"": None}, {"name": None}, ["10.0.0.1", "10.0.0.1"],
]



def _huge_int(sign: int) -> int:
    return sign * HUGE


#: Built lazily: hypothesis cannot repr a strategy that holds such a value.
huge_ints = st.builds(_huge_int, st.sampled_from([1, -1]))
nasty_values = st.one_of(st.sampled_from(NASTY).map(copy.deepcopy), huge_ints)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    nasty_values,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every path into ``value`` (the root excluded), parents before children."""
    out: list[JsonPath] = []
    children: list[tuple[str | int, Any]] = (
        list(value.items()) if isinstance(value, dict)
        else list(enumerate(value)) if isinstance(value, list) else []
    )
    for key, child in children:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _containers(value: Any) -> list[JsonPath]:
    """Paths of every dict and list in ``value``, the root included."""
    return [p for p in [(), *_paths(value)] if isinstance(_get(value, p), dict | list)]


def _get(value: Any, path: JsonPath) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` after 1-3 random structural mutations (a fresh copy; ``base`` untouched)."""
    obj = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "replace", "nasty", "delete", "add",
                                       "duplicate", "grow"]))
        paths = _paths(obj)
        containers = _containers(obj)
        if action in ("replace", "nasty", "delete") and paths:
            path = draw(st.sampled_from(paths))
            parent = _get(obj, path[:-1])
            if action == "delete":
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(json_values if action == "replace" else nasty_values)
        elif action == "add" and containers:
            target = _get(obj, draw(st.sampled_from(containers)))
            value = draw(json_values)
            if isinstance(target, dict):
                target[draw(st.text(max_size=12))] = value
            else:
                target.append(value)
        elif action in ("duplicate", "grow") and containers:
            target = _get(obj, draw(st.sampled_from(containers)))
            if isinstance(target, list) and target:
                count = 2 if action == "duplicate" else draw(st.sampled_from([100, 5000]))
                target.extend(copy.deepcopy(target[-1]) for _ in range(count - 1))
    return obj


# --- API objects -----------------------------------------------------------------------

FIELD_ROOTS = {"apiVersion", "kind", "metadata", "spec", "status", "addressType", "ports",
               "endpoints"}
REASON = re.compile(r"[a-z][a-z_]*")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def check_input_error(exc: InputError, obj: Any) -> None:
    """``where`` names the object (kind, namespace/name) as far as the object lets it,
    ``field`` is a path into it, ``reason`` a metric label, and it prints."""
    assert isinstance(exc.field, str) and exc.field, exc
    assert re.split(r"[.\[]", exc.field, maxsplit=1)[0] in FIELD_ROOTS, exc.field
    assert isinstance(exc.reason, str) and REASON.fullmatch(exc.reason), exc.reason
    assert isinstance(exc.message, str) and exc.message
    assert str(exc)
    raw_md = obj.get("metadata")
    md = raw_md if isinstance(raw_md, dict) else {}
    name = _text(md.get("name"))
    kind, version = obj.get("kind"), obj.get("apiVersion")
    known = isinstance(version, str) and isinstance(kind, str) and (
        (version, kind) in KNOWN_KINDS
        or (kind == "NodePool" and version.rpartition("/")[0] == "apps.openyurt.io")
    )
    if not known:
        assert exc.where == (f"object {name}" if name else "object"), exc.where
        assert exc.field in ("apiVersion", "kind"), exc.field
        return
    assert exc.where.startswith(f"{kind} "), exc.where
    if raw_md is not None and not isinstance(raw_md, dict):
        assert (exc.where, exc.field) == (f"{kind} <no name>", "metadata")
        return
    if kind not in NAMESPACED:
        assert exc.where == f"{kind} {name or '<no name>'}" or exc.field == "metadata.name"
        return
    namespace = md.get("namespace")
    if exc.field == "metadata.namespace" or (namespace is not None
                                             and not isinstance(namespace, str)):
        return  # the namespace itself is what is wrong
    namespace = namespace or "default"
    if name is None:
        assert exc.where == f"{kind} {namespace}/<no name>", exc.where
    else:
        assert exc.where == f"{kind} {namespace}/{name}", exc.where


def check_translate(obj: Any) -> None:
    before = copy.deepcopy(obj)
    try:
        result = translate.translate_object(obj)
    except InputError as exc:
        check_input_error(exc, obj)
    else:
        assert result is None or isinstance(result, Service | EndpointSlice | NodeInfo | NodePool)
        hash(result)  # model values are keys: nothing mutable leaked in
    assert obj == before, "translate_object mutated its input"


@pytest.mark.parametrize("base", sorted(BASES))
def test_valid_bases_translate(base: str) -> None:
    obj = BASES[base]()
    result = translate.translate_object(obj)
    assert (result is None) == (base == "ignored-kind")


@pytest.mark.parametrize("base", sorted(BASES))
@SETTINGS
@given(data=st.data())
def test_mutated_objects_translate_or_raise_input_error(base: str, data: st.DataObject) -> None:
    check_translate(data.draw(mutated(BASES[base]())))


# Counter-examples found by the fuzzer, kept as explicit regressions.


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        pytest.param(svc_obj(ports=[port_obj(HUGE)]), "spec.ports[0].port", id="huge-port"),
        pytest.param(
            svc_obj(sessionAffinity="ClientIP",
                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": -HUGE}}),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            id="huge-timeout",
        ),
    ],
)
def test_regression_huge_integers_are_input_errors(obj: Obj, field: str) -> None:
    with pytest.raises(InputError) as err:
        translate.translate_object(obj)
    assert err.value.field == field
    assert err.value.where == "Service default/web"
    assert len(str(err.value)) < 300


def test_regression_non_mapping_object_is_an_input_error() -> None:
    with pytest.raises(InputError) as err:
        translate.translate_object(["not", "an", "object"])  # type: ignore[arg-type]
    assert (err.value.where, err.value.field) == ("object", "(object)")


# --- manifest files --------------------------------------------------------------------

YAML_SNIPPETS = [
    "a: !!int garbage\n", "a: !!float x\n", "a: !!timestamp garbage\n", "a: !!binary ===\n",
    "a: !!python/object/apply:os.system [true]\n", f"a: {'9' * 5000}\n", "[" * 3000,
    "[" * 3000 + "]" * 3000 + "\n", "{" * 3000, "a: &x [*x]\n", "? [a]\n: b\n",
    "<<: 5\n", "a: *undefined\n", "%YAML 9.9\n---\n", "\t- x\n", "a: b: c\n", "---\n...\n",
    "- !!set {a, b}\n", "kind: ServiceList\nitems: 5\n", "kind: List\nitems: [1]\n",
    '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": 5}}\n',
]
yaml_chars = st.text(st.sampled_from(list("-:{}[]&*!|>'\"#%@`,? \n\tabkv019.")), max_size=60)


def _dump(docs: list[Any], suffix: str) -> str:
    """``docs`` as the file type's text; "" when not representable (a huge int: the raw
    snippets cover those)."""
    try:
        if suffix == ".json":
            return json.dumps(docs[0] if len(docs) == 1 else docs)
        return yaml.safe_dump_all(docs, explicit_start=True)
    except (ValueError, yaml.YAMLError):
        return ""


@st.composite
def manifest_files(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".yaml", ".json"]))
    kind = draw(st.sampled_from(["objects", "values", "snippets", "chars", "binary"]))
    if kind == "binary":
        return suffix, draw(st.binary(max_size=200))
    if kind == "chars":
        text = draw(yaml_chars)
    elif kind == "snippets":
        text = "".join(draw(st.lists(st.sampled_from(YAML_SNIPPETS), min_size=1, max_size=3)))
    else:
        strategy = (st.sampled_from(sorted(BASES)).flatmap(lambda b: mutated(BASES[b]()))
                    if kind == "objects" else json_values)
        docs = draw(st.lists(strategy, min_size=1, max_size=3))
        if draw(st.booleans()):
            docs = [{"apiVersion": "v1", "kind": draw(st.sampled_from(["List", "ServiceList"])),
                     "items": docs}]
        text = _dump(docs, suffix)
    return suffix, text.encode("utf-8", "surrogatepass")


def _seeded_state() -> ClusterState:
    state = ClusterState()
    state.set_service(translate.service(svc_obj("kept")))
    return state


def check_manifest(path: Path) -> None:
    """Only InputError, naming the file; and a bad file leaves the state as it was."""
    state = _seeded_state()
    before = state.snapshot()
    try:
        notes = manifests.load([str(path)], state)
    except InputError as exc:
        assert exc.where.startswith(str(path)), exc.where
        assert exc.field and exc.reason and str(exc)
        assert state.snapshot() == before
    else:
        assert all(isinstance(n, str) for n in notes)


@SETTINGS
@given(file=manifest_files())
def test_random_manifest_files_load_or_raise_input_error(tmp_path: Path,
                                                         file: tuple[str, bytes]) -> None:
    suffix, content = file
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    check_manifest(path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("a: !!int garbage\n", "bad_yaml", id="tagged-int"),
        pytest.param("a: !!float x\n", "bad_yaml", id="tagged-float"),
        pytest.param("a: !!timestamp garbage\n", "bad_yaml", id="tagged-timestamp"),
        pytest.param(f"a: {'9' * 5000}\n", "bad_yaml", id="huge-int"),
        pytest.param("[" * 3000 + "]" * 3000, "bad_yaml", id="deep-nesting"),
    ],
)
def test_regression_yaml_parser_failures_are_input_errors(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        manifests.load([str(path)], ClusterState())
    assert err.value.where == f"{path} document 1"
    assert err.value.reason == reason


@pytest.mark.parametrize(
    "text",
    [pytest.param("[" * 100_000 + "]" * 100_000, id="deep-nesting"),
     pytest.param("9" * 5000, id="huge-int")],
)
def test_regression_json_parser_failures_are_input_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        manifests.load([str(path)], ClusterState())
    assert (err.value.where, err.value.reason) == (f"{path} document 1", "bad_json")


# --- config file and flags -------------------------------------------------------------

CONFIG_BASE = yaml.safe_load((ROOT / "systemd" / "config.yaml").read_text())
FLAG_KEYS = ["node_name", "kubeconfig", "proxy_mode", "sync_period", "min_sync_period",
             "cluster_cidr", "metrics_bind_address", "healthz_bind_address", "ipvs_scheduler",
             "ipvs_interface", "proxy_name", "iptables_backend", "log_format", "log_level",
             "conntrack_tcp_timeout_close_wait", "nodeport_addresses", "masquerade_bit"]

CONFIG_LEAVES = [p for p in _paths(CONFIG_BASE)
                 if not isinstance(_get(CONFIG_BASE, p), dict)] + [("ipvs", "excludeCIDRs")]
STRING_SETTINGS = {"node_name", "kubeconfig", "proxy_name", "ipvs_scheduler", "ipvs_interface",
                   "cluster_cidr", "metrics_bind_address", "healthz_bind_address", "log_level"}


@st.composite
def config_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "leaf", "leaf", "snippets", "chars", "binary"]))
    if kind == "binary":
        return draw(st.binary(max_size=200))
    if kind == "chars":
        return draw(yaml_chars).encode()
    if kind == "snippets":
        text = "".join(draw(st.lists(st.sampled_from(YAML_SNIPPETS), min_size=1, max_size=2)))
        return text.encode()
    if kind == "leaf":  # one setting given a hostile value, the rest left valid
        doc = copy.deepcopy(CONFIG_BASE)
        path = draw(st.sampled_from(CONFIG_LEAVES))
        _get(doc, path[:-1])[path[-1]] = draw(st.one_of(nasty_values, st.floats(), json_values))
    else:
        doc = draw(mutated(CONFIG_BASE))
    if isinstance(doc, dict) and draw(st.booleans()):
        doc[draw(st.sampled_from([1, None, 2.5, True]))] = "x"  # a non-string key
    try:
        return yaml.safe_dump(doc).encode("utf-8", "surrogatepass")
    except (ValueError, yaml.YAMLError):
        return b""


def check_config(path: Path, flags: dict[str, Any]) -> None:
    try:
        values, notes = config.load_file(str(path))
        cfg = config.resolve(values, flags, env={"NODE_NAME": "n"})
    except InputError as exc:
        assert exc.where and exc.field and exc.reason and str(exc)
    else:
        assert all(isinstance(n, str) for n in notes)
        # a list or mapping where a string belongs is refused, not turned into "['a']"
        assert not {k for k in STRING_SETTINGS - set(flags)
                    if isinstance(values.get(k), list | dict)}
        assert math.isfinite(cfg.sync_period) and cfg.sync_period > 0
        assert math.isfinite(cfg.min_sync_period) and cfg.min_sync_period >= 0
        for seconds in (cfg.conntrack_tcp_timeout_established,
                        cfg.conntrack_tcp_timeout_close_wait, cfg.conntrack_udp_timeout,
                        cfg.conntrack_udp_timeout_stream):
            assert math.isfinite(seconds) and seconds >= 0


@SETTINGS
@given(
    content=config_files(),
    flags=st.dictionaries(st.sampled_from(FLAG_KEYS), st.text(max_size=12), max_size=2),
)
def test_random_config_files_resolve_or_raise_input_error(
    tmp_path: Path, content: bytes, flags: dict[str, Any]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    check_config(path, flags)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(b"\xff\xfe\x00", "-", id="binary"),
        pytest.param(b"1: a\nb: c\n", "1", id="non-string-key"),
        pytest.param(b"a: !!int garbage\n", "-", id="tagged-int"),
        pytest.param(b"[" * 3000, "-", id="deep-nesting"),
        pytest.param(b"conntrack:\n  udpTimeout: .nan\n", "conntrack_udp_timeout", id="nan"),
        pytest.param(b"conntrack:\n  udpTimeout: .inf\n", "conntrack_udp_timeout", id="inf"),
        pytest.param(b"conntrack:\n  udpTimeout: -5.0\n", "conntrack_udp_timeout",
                     id="negative-timeout"),
        pytest.param(b"iptables:\n  minSyncPeriod: -1.0\n", "min_sync_period",
                     id="negative-period"),
        pytest.param(b"iptables:\n  syncPeriod: .nan\n", "sync_period", id="nan-period"),
        pytest.param(b"proxyName: [a, b]\n", "proxy_name", id="list-as-name"),
        pytest.param(b"clientConnection:\n  kubeconfig: {a: 1}\n", "kubeconfig",
                     id="mapping-as-path"),
        pytest.param(b"hostnameOverride: [n]\n", "hostnameOverride", id="list-as-node"),
    ],
)
def test_regression_config_file_failures_are_input_errors(
    tmp_path: Path, text: bytes, field: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    with pytest.raises(InputError) as err:
        config.resolve(config.load_file(str(path))[0], {}, env={"NODE_NAME": "n"})
    assert err.value.field == field
