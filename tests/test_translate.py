"""translate.py: every default decided there and every rejection, with object and field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from proxyd.errors import InputError
from proxyd.model import (
    AddressType,
    EndpointPort,
    EndpointSlice,
    NodeInfo,
    NodePool,
    Protocol,
    Service,
    ServiceType,
    TrafficPolicy,
)
from proxyd.sources import translate
from tests.builders import (
    ep_obj,
    eps,
    list_obj,
    node,
    node_obj,
    pool,
    pool_obj,
    port_obj,
    port_spec,
    sep,
    slice_obj,
    svc,
    svc_obj,
)

Obj = dict[str, Any]


def _without(obj: Obj, path: str) -> Obj:
    """A deep copy of ``obj`` with the dotted ``path`` removed."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    target = out
    for key in parents:
        target = target[key]
    del target[last]
    return out


def _rejects(
    fn: Callable[[Obj], object], obj: Obj, where: str, field: str, reason: str
) -> InputError:
    with pytest.raises(InputError) as info:
        fn(obj)
    err = info.value
    assert (err.where, err.field, err.reason) == (where, field, reason)
    assert str(err).startswith(f"{where}: {field}: ")
    return err


# --- builders agree with translate -----------------------------------------------------


def test_minimal_objects_translate_to_the_model_builders() -> None:
    assert translate.service(svc_obj()) == svc()
    assert translate.endpoint_slice(slice_obj("web", ["10.244.1.2"])) == eps("web", ["10.244.1.2"])
    assert translate.node(node_obj("n1", pool="p", zone="z", internal_ips=["172.18.0.2"])) == (
        node("n1", pool="p", zone="z", addresses=["172.18.0.2"])
    )
    assert translate.node_pool(pool_obj("p", ["n1", "n2"])) == pool("p", "n1", "n2")


# --- Service: defaults and carried fields --------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "attr", "want"),
    [
        pytest.param(svc_obj(), "type", ServiceType.CLUSTER_IP, id="type-defaults-to-ClusterIP"),
        pytest.param(svc_obj(svc_type=""), "type", ServiceType.CLUSTER_IP, id="empty-type"),
        pytest.param(svc_obj(svc_type="NodePort"), "type", ServiceType.NODE_PORT, id="type"),
        pytest.param(svc_obj(cluster_ip="None"), "headless", True, id="clusterIP-None-headless"),
        pytest.param(svc_obj(cluster_ip="None"), "cluster_ips", (), id="headless-has-no-ips"),
        pytest.param(
            svc_obj(cluster_ip=None, clusterIPs=["None"]), "headless", True,
            id="clusterIPs-None-headless",
        ),
        pytest.param(svc_obj(), "headless", False, id="not-headless-by-default"),
        pytest.param(
            svc_obj(cluster_ip=None, svc_type="ExternalName", externalName="db.example.com"),
            "cluster_ips", (), id="externalname-without-cluster-ip",
        ),
        pytest.param(
            svc_obj(clusterIPs=["10.96.0.10", "fd00::000a"]), "cluster_ips",
            ("10.96.0.10", "fd00::a"), id="dual-stack-clusterIPs-canonical",
        ),
        pytest.param(
            svc_obj(cluster_ip=None, clusterIPs=["fd00::a"]), "cluster_ips", ("fd00::a",),
            id="clusterIPs-without-clusterIP",
        ),
        pytest.param(svc_obj(), "internal_traffic_policy", TrafficPolicy.CLUSTER, id="itp-default"),
        pytest.param(svc_obj(), "external_traffic_policy", TrafficPolicy.CLUSTER, id="etp-default"),
        pytest.param(
            svc_obj(internalTrafficPolicy="Local"), "internal_traffic_policy",
            TrafficPolicy.LOCAL, id="itp-local",
        ),
        pytest.param(
            svc_obj(externalTrafficPolicy="Local"), "external_traffic_policy",
            TrafficPolicy.LOCAL, id="etp-local",
        ),
        pytest.param(
            svc_obj(externalTrafficPolicy=""), "external_traffic_policy",
            TrafficPolicy.CLUSTER, id="etp-empty-is-cluster",
        ),
        pytest.param(svc_obj(), "session_affinity_timeout", None, id="no-affinity"),
        pytest.param(
            svc_obj(sessionAffinity="None"), "session_affinity_timeout", None,
            id="affinity-None",
        ),
        pytest.param(
            svc_obj(sessionAffinity="ClientIP"), "session_affinity_timeout", 10800,
            id="clientip-timeout-defaults-10800",
        ),
        pytest.param(
            svc_obj(sessionAffinity="ClientIP",
                    sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
            "session_affinity_timeout", 60, id="clientip-timeout",
        ),
        pytest.param(svc_obj(), "topology_keys", (), id="no-topology-keys"),
        pytest.param(
            svc_obj(topologyKeys=["*", *(f"k{i}" for i in range(16))]), "topology_keys",
            ("*", *(f"k{i}" for i in range(16))), id="topology-keys-carried-unvalidated",
        ),
        pytest.param(svc_obj(), "openyurt_scopes", (), id="no-openyurt-annotation"),
        pytest.param(
            svc_obj(annotations={"openyurt.io/topologyKeys": "openyurt.io/nodepool"}),
            "openyurt_scopes", ("openyurt.io/nodepool",), id="openyurt-single-scope",
        ),
        pytest.param(
            svc_obj(annotations={
                "openyurt.io/topologyKeys": " kubernetes.io/hostname ,openyurt.io/nodepool,, *,"
            }),
            "openyurt_scopes", ("kubernetes.io/hostname", "openyurt.io/nodepool", "*"),
            id="openyurt-list-split-stripped-empties-dropped",
        ),
        pytest.param(
            svc_obj(annotations={"openyurt.io/topologyKeys": "bogus"}), "openyurt_scopes",
            ("bogus",), id="openyurt-unknown-scope-carried",
        ),
        pytest.param(svc_obj(), "ipvs_scheduler", None, id="no-scheduler"),
        pytest.param(
            svc_obj(annotations={"proxyd.io/ipvs-scheduler": "lc"}), "ipvs_scheduler", "lc",
            id="scheduler-annotation",
        ),
        pytest.param(
            svc_obj(annotations={"kube-router.io/service.scheduler": "sh"}), "ipvs_scheduler",
            "sh", id="scheduler-kube-router-alias",
        ),
        pytest.param(
            svc_obj(annotations={"proxyd.io/ipvs-scheduler": "wrr",
                                 "kube-router.io/service.scheduler": "sh"}),
            "ipvs_scheduler", "wrr", id="scheduler-own-annotation-wins",
        ),
        pytest.param(
            svc_obj(annotations={"proxyd.io/ipvs-scheduler": " ",
                                 "kube-router.io/service.scheduler": "sh"}),
            "ipvs_scheduler", "sh", id="scheduler-blank-falls-to-alias",
        ),
        pytest.param(svc_obj(), "proxy_name", None, id="no-proxy-name"),
        pytest.param(
            svc_obj(labels={"service.kubernetes.io/service-proxy-name": "other"}),
            "proxy_name", "other", id="proxy-name-label",
        ),
        pytest.param(
            svc_obj(labels={"service.kubernetes.io/service-proxy-name": ""}), "proxy_name", "",
            id="proxy-name-empty-is-not-absent",
        ),
        pytest.param(
            svc_obj(ports=[{"port": 53}]), "ports", (port_spec(53, name=""),),
            id="port-name-and-protocol-default",
        ),
        pytest.param(
            svc_obj(ports=[port_obj(80, nodePort=30080), port_obj(80, protocol="UDP")]),
            "ports",
            (port_spec(80, node_port=30080), port_spec(80, protocol=Protocol.UDP)),
            id="node-port-and-same-name-other-protocol",
        ),
        pytest.param(
            svc_obj(ports=[port_obj(80, nodePort=0)]), "ports", (port_spec(80),),
            id="node-port-0-is-unset",
        ),
        pytest.param(
            svc_obj(externalIPs=["198.51.100.1", "2001:db8::0001"]), "external_ips",
            ("198.51.100.1", "2001:db8::1"), id="external-ips",
        ),
        pytest.param(
            svc_obj(status={"loadBalancer": {"ingress": [
                {"ip": "203.0.113.1"}, {"hostname": "lb.example.com"},
                {"ip": "203.0.113.2", "ipMode": "Proxy"}, {"ip": "203.0.113.3", "ipMode": "VIP"},
            ]}}),
            "load_balancer_ips", ("203.0.113.1", "203.0.113.3"),
            id="lb-ingress-ips-skip-hostname-and-proxy-mode",
        ),
        pytest.param(
            svc_obj(loadBalancerSourceRanges=["10.0.0.0/8", " 192.168.1.7/24 ", "fd00::/64"]),
            "load_balancer_source_ranges", ("10.0.0.0/8", "192.168.1.0/24", "fd00::/64"),
            id="source-ranges-normalised",
        ),
        pytest.param(svc_obj(), "health_check_node_port", None, id="no-health-check-port"),
        pytest.param(
            svc_obj(healthCheckNodePort=32000), "health_check_node_port", 32000,
            id="health-check-port",
        ),
    ],
)
def test_service_field(obj: Obj, attr: str, want: object) -> None:
    assert getattr(translate.service(obj), attr) == want


def test_service_namespace_defaults_to_default() -> None:
    obj = _without(svc_obj(), "metadata.namespace")
    assert str(translate.service(obj).ref) == "default/web"


# --- Service: rejections -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        pytest.param(svc_obj(ports=[port_obj("http")]), "spec.ports[0].port", "invalid_port",
                     id="port-not-a-number"),
        pytest.param(svc_obj(ports=[port_obj("80")]), "spec.ports[0].port", "invalid_port",
                     id="port-numeric-string"),
        pytest.param(svc_obj(ports=[port_obj(80.0)]), "spec.ports[0].port", "invalid_port",
                     id="port-float"),
        pytest.param(svc_obj(ports=[port_obj(True)]), "spec.ports[0].port", "invalid_port",
                     id="port-bool"),
        pytest.param(svc_obj(ports=[port_obj(0)]), "spec.ports[0].port", "invalid_port",
                     id="port-zero"),
        pytest.param(svc_obj(ports=[port_obj(65536)]), "spec.ports[0].port", "invalid_port",
                     id="port-too-big"),
        pytest.param(svc_obj(ports=[{"name": "http"}]), "spec.ports[0].port", "invalid_port",
                     id="port-missing"),
        pytest.param(svc_obj(ports=[port_obj(80), port_obj(-1, name="b")]), "spec.ports[1].port",
                     "invalid_port", id="second-port-named-by-index"),
        pytest.param(svc_obj(ports=[port_obj(80, nodePort=70000)]), "spec.ports[0].nodePort",
                     "invalid_port", id="node-port-out-of-range"),
        pytest.param(svc_obj(ports=[port_obj(80, protocol="tcp")]), "spec.ports[0].protocol",
                     "invalid_protocol", id="protocol-lowercase"),
        pytest.param(svc_obj(ports=[port_obj(80, protocol="ICMP")]), "spec.ports[0].protocol",
                     "invalid_protocol", id="protocol-unknown"),
        pytest.param(svc_obj(ports=[port_obj(80, name=7)]), "spec.ports[0].name", "not_a_string",
                     id="port-name-not-a-string"),
        pytest.param(svc_obj(ports=[port_obj(80), port_obj(81)]), "spec.ports[1].name",
                     "duplicate_port", id="duplicate-port-name"),
        pytest.param(svc_obj(ports=["80"]), "spec.ports[0]", "not_an_object",
                     id="port-entry-not-an-object"),
        pytest.param(svc_obj(ports={"port": 80}), "spec.ports", "not_a_list",
                     id="ports-not-a-list"),
        pytest.param(svc_obj(cluster_ip="10.96.0.300"), "spec.clusterIP", "invalid_ip",
                     id="cluster-ip-invalid"),
        pytest.param(svc_obj(cluster_ip="010.96.0.1"), "spec.clusterIP", "invalid_ip",
                     id="cluster-ip-leading-zero"),
        pytest.param(svc_obj(cluster_ip=None, clusterIPs=["10.96.0.10", "10.96.0.11"]),
                     "spec.clusterIPs[1]", "invalid_ip", id="cluster-ips-same-family"),
        pytest.param(svc_obj(cluster_ip=None, clusterIPs=["10.96.0.10", "fd00::1", "fd00::2"]),
                     "spec.clusterIPs", "invalid_ip", id="cluster-ips-three"),
        pytest.param(svc_obj(cluster_ip=None, clusterIPs=["None", "fd00::1"]),
                     "spec.clusterIPs[1]", "invalid_ip", id="headless-with-second-ip"),
        pytest.param(svc_obj(cluster_ip=None, clusterIPs=["10.96.0.10", "nope"]),
                     "spec.clusterIPs[1]", "invalid_ip", id="cluster-ips-second-invalid"),
        pytest.param(svc_obj(clusterIPs=["10.96.0.11"]), "spec.clusterIPs[0]",
                     "inconsistent_cluster_ip", id="cluster-ip-and-ips-disagree"),
        pytest.param(svc_obj(externalIPs=["198.51.100"]), "spec.externalIPs[0]", "invalid_ip",
                     id="external-ip-invalid"),
        pytest.param(svc_obj(externalIPs=["fe80::1%eth0"]), "spec.externalIPs[0]", "invalid_ip",
                     id="external-ip-zoned"),
        pytest.param(svc_obj(externalIPs="198.51.100.1"), "spec.externalIPs", "not_a_list",
                     id="external-ips-not-a-list"),
        pytest.param(svc_obj(status={"loadBalancer": {"ingress": [{"ip": "203.0.113"}]}}),
                     "status.loadBalancer.ingress[0].ip", "invalid_ip", id="lb-ip-invalid"),
        pytest.param(svc_obj(status={"loadBalancer": {"ingress": [
            {"ip": "203.0.113.1", "ipMode": "Direct"}]}}),
                     "status.loadBalancer.ingress[0].ipMode", "invalid_ip_mode",
                     id="lb-ip-mode-unknown"),
        pytest.param(svc_obj(loadBalancerSourceRanges=["10.0.0.0/33"]),
                     "spec.loadBalancerSourceRanges[0]", "invalid_cidr", id="source-range-prefix"),
        pytest.param(svc_obj(loadBalancerSourceRanges=["10.0.0.0/8", "office"]),
                     "spec.loadBalancerSourceRanges[1]", "invalid_cidr", id="source-range-word"),
        pytest.param(svc_obj(svc_type="Ingress"), "spec.type", "invalid_service_type",
                     id="type-unknown"),
        pytest.param(svc_obj(internalTrafficPolicy="local"), "spec.internalTrafficPolicy",
                     "invalid_traffic_policy", id="itp-lowercase"),
        pytest.param(svc_obj(externalTrafficPolicy="Remote"), "spec.externalTrafficPolicy",
                     "invalid_traffic_policy", id="etp-unknown"),
        pytest.param(svc_obj(sessionAffinity="Cookie"), "spec.sessionAffinity",
                     "invalid_session_affinity", id="affinity-unknown"),
        pytest.param(svc_obj(sessionAffinity="ClientIP",
                             sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "invalid_timeout",
                     id="affinity-timeout-zero"),
        pytest.param(svc_obj(sessionAffinity="ClientIP",
                             sessionAffinityConfig={"clientIP": {"timeoutSeconds": 86401}}),
                     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "invalid_timeout",
                     id="affinity-timeout-over-a-day"),
        pytest.param(svc_obj(healthCheckNodePort="32000"), "spec.healthCheckNodePort",
                     "invalid_port", id="health-check-port-string"),
        pytest.param(svc_obj(topologyKeys="kubernetes.io/hostname"), "spec.topologyKeys",
                     "not_a_list", id="topology-keys-not-a-list"),
        pytest.param(svc_obj(topologyKeys=["kubernetes.io/hostname", 5]), "spec.topologyKeys[1]",
                     "not_a_string", id="topology-key-not-a-string"),
        pytest.param(svc_obj(annotations={"openyurt.io/topologyKeys": 1}),
                     'metadata.annotations["openyurt.io/topologyKeys"]', "not_a_string",
                     id="annotation-not-a-string"),
        pytest.param(svc_obj(labels={"app": True}), 'metadata.labels["app"]', "not_a_string",
                     id="label-not-a-string"),
        pytest.param({**svc_obj(), "spec": ["ports"]}, "spec", "not_an_object",
                     id="spec-not-an-object"),
    ],
)
def test_service_rejected(obj: Obj, field: str, reason: str) -> None:
    _rejects(translate.service, obj, "Service default/web", field, reason)


@pytest.mark.parametrize(
    ("obj", "where", "field", "reason"),
    [
        pytest.param(_without(svc_obj(), "metadata.name"), "Service default/<no name>",
                     "metadata.name", "missing_name", id="no-name"),
        pytest.param(svc_obj(""), "Service default/<no name>", "metadata.name", "missing_name",
                     id="empty-name"),
        pytest.param(svc_obj(7), "Service default/<no name>", "metadata.name", "not_a_string",
                     id="name-not-a-string"),
        pytest.param(_without(svc_obj("x", "prod"), "metadata.name"), "Service prod/<no name>",
                     "metadata.name", "missing_name", id="no-name-keeps-namespace"),
        pytest.param({**svc_obj(), "metadata": "web"}, "Service <no name>", "metadata",
                     "not_an_object", id="metadata-not-an-object"),
    ],
)
def test_service_without_usable_name_is_rejected(
    obj: Obj, where: str, field: str, reason: str
) -> None:
    _rejects(translate.service, obj, where, field, reason)


def test_error_message_shows_the_bad_value() -> None:
    err = _rejects(translate.service, svc_obj(ports=[port_obj("http")]), "Service default/web",
                   "spec.ports[0].port", "invalid_port")
    assert "'http'" in err.message


# --- EndpointSlice: defaults ---------------------------------------------------------------


def _one_endpoint(**kw: Any) -> Any:
    return translate.endpoint_slice(slice_obj("web", [ep_obj("10.244.1.2", **kw)])).endpoints[0]


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        pytest.param({}, sep("10.244.1.2", ready=True, serving=True, terminating=False),
                     id="nil-conditions-ready-serving-not-terminating"),
        pytest.param({"ready": False}, sep("10.244.1.2", ready=False, serving=False),
                     id="nil-serving-follows-ready"),
        pytest.param({"ready": False, "serving": True, "terminating": True},
                     sep("10.244.1.2", ready=False, serving=True, terminating=True),
                     id="terminating-but-serving"),
        pytest.param({"serving": False}, sep("10.244.1.2", ready=True, serving=False),
                     id="explicit-serving-kept"),
        pytest.param({"node": "n1", "zone": "z1"}, sep("10.244.1.2", node_name="n1", zone="z1"),
                     id="node-and-zone"),
        pytest.param({"node": "", "zone": ""}, sep("10.244.1.2"), id="empty-node-zone-are-none"),
        pytest.param({"for_zones": ["z1", "z2"]},
                     sep("10.244.1.2", hints_zones=frozenset({"z1", "z2"})), id="zone-hints"),
        pytest.param({"for_nodes": ["n1"]}, sep("10.244.1.2", hints_nodes=frozenset({"n1"})),
                     id="node-hints"),
        pytest.param({"for_zones": []}, sep("10.244.1.2", hints_zones=frozenset()),
                     id="empty-hint-list-is-not-no-hint"),
        pytest.param({"deprecatedTopology": {"b": "2", "a": "1"}},
                     sep("10.244.1.2", topology=(("a", "1"), ("b", "2"))),
                     id="deprecated-topology-sorted"),
    ],
)
def test_slice_endpoint_defaults(kw: dict[str, Any], want: object) -> None:
    assert _one_endpoint(**kw) == want


def test_slice_endpoint_hints_without_names_are_none() -> None:
    got = _one_endpoint(hints={})
    assert (got.hints_zones, got.hints_nodes) == (None, None)


def test_slice_endpoint_takes_first_address_in_canonical_form() -> None:
    obj = slice_obj("web", [{"addresses": ["fd00::0005", "fd00::6"]}], address_type="IPv6")
    assert translate.endpoint_slice(obj).endpoints[0].ip == "fd00::5"


def test_slice_joins_its_service_by_label_in_its_namespace() -> None:
    got = translate.endpoint_slice(slice_obj("db", name="db-xyz", namespace="prod"))
    assert (str(got.service), got.namespace, got.name) == ("prod/db", "prod", "db-xyz")


def test_slice_ports_default_name_and_protocol_and_skip_unrestricted() -> None:
    obj = slice_obj("web", ports=[{"port": 8080}, {"name": "all", "port": None},
                                  port_obj(53, name="dns", protocol="UDP")])
    assert translate.endpoint_slice(obj).ports == (
        EndpointPort("", Protocol.TCP, 8080),
        EndpointPort("dns", Protocol.UDP, 53),
    )


def test_fqdn_slice_translates_without_ip_validation() -> None:
    got = translate.endpoint_slice(slice_obj("web", ["db.example.com"], address_type="FQDN"))
    assert got.address_type is AddressType.FQDN
    assert got.endpoints == (sep("db.example.com"),)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("2024-05-01T08:00:00Z", 1714550400.0, id="utc"),
        pytest.param("2024-05-01T10:00:00+02:00", 1714550400.0, id="offset"),
        pytest.param("2024-05-01T08:00:00.5Z", 1714550400.5, id="fraction"),
        pytest.param("2024-05-01T08:00:00.123456789Z", 1714550400.123456, id="nanoseconds"),
        pytest.param("2024-05-01T08:00:00", None, id="no-offset-is-not-rfc3339"),
        pytest.param("yesterday", None, id="garbage-never-rejects-the-slice"),
    ],
)
def test_slice_trigger_time(value: str | None, want: float | None) -> None:
    annotations = {} if value is None else {
        "endpoints.kubernetes.io/last-change-trigger-time": value}
    got = translate.endpoint_slice(slice_obj("web", annotations=annotations)).trigger_time
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want)


# --- EndpointSlice: rejections -------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "field", "reason"),
    [
        pytest.param(_without(slice_obj("web"), "metadata.labels"),
                     'metadata.labels["kubernetes.io/service-name"]', "missing_service_name",
                     id="no-service-name-label"),
        pytest.param(slice_obj("web", labels={"kubernetes.io/service-name": ""}),
                     'metadata.labels["kubernetes.io/service-name"]', "missing_service_name",
                     id="empty-service-name-label"),
        pytest.param(_without(slice_obj("web"), "addressType"), "addressType",
                     "invalid_address_type", id="no-address-type"),
        pytest.param(slice_obj("web", address_type="IPv5"), "addressType",
                     "invalid_address_type", id="unknown-address-type"),
        pytest.param(slice_obj("web", ["fd00::1"]), "endpoints[0].addresses[0]", "invalid_ip",
                     id="ipv6-in-ipv4-slice"),
        pytest.param(slice_obj("web", ["10.0.0.1"], address_type="IPv6"),
                     "endpoints[0].addresses[0]", "invalid_ip", id="ipv4-in-ipv6-slice"),
        pytest.param(slice_obj("web", ["10.0.0.1", "10.0.0.256"]), "endpoints[1].addresses[0]",
                     "invalid_ip", id="second-endpoint-invalid"),
        pytest.param(slice_obj("web", [{"addresses": ["10.0.0.1", "x"]}]),
                     "endpoints[0].addresses[1]", "invalid_ip", id="extra-address-invalid"),
        pytest.param(slice_obj("web", [{"addresses": []}]), "endpoints[0].addresses",
                     "missing_address", id="no-addresses"),
        pytest.param(slice_obj("web", [{"nodeName": "n1"}]), "endpoints[0].addresses",
                     "missing_address", id="addresses-absent"),
        pytest.param(slice_obj("web", [""], address_type="FQDN"), "endpoints[0].addresses[0]",
                     "missing_address", id="fqdn-empty"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", ready="yes")]),
                     "endpoints[0].conditions.ready", "not_a_bool", id="ready-not-a-bool"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", terminating=1)]),
                     "endpoints[0].conditions.terminating", "not_a_bool",
                     id="terminating-not-a-bool"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", nodeName=3)]),
                     "endpoints[0].nodeName", "not_a_string", id="node-name-not-a-string"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", hints={"forZones": [{}]})]),
                     "endpoints[0].hints.forZones[0].name", "missing_name", id="hint-without-name"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", hints={"forNodes": "n1"})]),
                     "endpoints[0].hints.forNodes", "not_a_list", id="hints-not-a-list"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", deprecatedTopology={"a": 1})]),
                     'endpoints[0].deprecatedTopology["a"]', "not_a_string",
                     id="topology-value-not-a-string"),
        pytest.param(slice_obj("web", ports=[port_obj("http")]), "ports[0].port", "invalid_port",
                     id="slice-port-not-a-number"),
        pytest.param(slice_obj("web", ports=[port_obj(8080, protocol="HTTP")]),
                     "ports[0].protocol", "invalid_protocol", id="slice-port-protocol"),
        pytest.param({**slice_obj("web"), "endpoints": {"addresses": ["10.0.0.1"]}}, "endpoints",
                     "not_a_list", id="endpoints-not-a-list"),
    ],
)
def test_slice_rejected(obj: Obj, field: str, reason: str) -> None:
    _rejects(translate.endpoint_slice, obj, "EndpointSlice default/web-abcde", field, reason)


# --- Node and NodePool -----------------------------------------------------------------------


def test_node_keeps_sorted_labels_and_internal_external_addresses() -> None:
    obj = node_obj("n1", labels={"b": "2", "a": "1"})
    obj["status"]["addresses"] = [
        {"type": "Hostname", "address": "n1"},
        {"type": "ExternalIP", "address": "2001:db8::0001"},
        {"type": "InternalIP", "address": "172.18.0.2"},
        {"type": "InternalDNS", "address": "n1.cluster.local"},
        {"type": "InternalIP", "address": "172.18.0.2"},
    ]
    assert translate.node(obj) == NodeInfo(
        "n1", labels=(("a", "1"), ("b", "2"), ("kubernetes.io/hostname", "n1")),
        addresses=("2001:db8::1", "172.18.0.2"),
    )


def test_node_without_status_has_no_addresses() -> None:
    assert translate.node(_without(node_obj("n1"), "status")).addresses == ()


@pytest.mark.parametrize(
    ("obj", "where", "field", "reason"),
    [
        pytest.param(_without(node_obj("n1"), "metadata.name"), "Node <no name>",
                     "metadata.name", "missing_name", id="no-name"),
        pytest.param(node_obj("n1", internal_ips=["172.18.0"]), "Node n1",
                     "status.addresses[0].address", "invalid_ip", id="bad-address"),
        pytest.param(node_obj("n1", labels={"apps.openyurt.io/nodepool": None}), "Node n1",
                     'metadata.labels["apps.openyurt.io/nodepool"]', "not_a_string",
                     id="label-null"),
    ],
)
def test_node_rejected(obj: Obj, where: str, field: str, reason: str) -> None:
    _rejects(translate.node, obj, where, field, reason)


@pytest.mark.parametrize("version", ["v1alpha1", "v1beta1", "v1beta2"])
def test_node_pool_of_any_version(version: str) -> None:
    got = translate.translate_object(pool_obj("hangzhou", ["a", "b"], version=version))
    assert got == NodePool("hangzhou", frozenset({"a", "b"}))


def test_node_pool_without_status_is_empty() -> None:
    assert translate.node_pool(_without(pool_obj("p"), "status")) == NodePool("p")


def test_node_pool_member_must_be_a_string() -> None:
    _rejects(translate.node_pool, pool_obj("p", [1]), "NodePool p", "status.nodes[0]",
             "not_a_string")


# --- translate_object ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "want"),
    [
        pytest.param(svc_obj(), Service, id="v1-Service"),
        pytest.param(slice_obj("web"), EndpointSlice, id="discovery-v1-EndpointSlice"),
        pytest.param(node_obj("n1"), NodeInfo, id="v1-Node"),
        pytest.param(pool_obj("p", version="v1alpha1"), NodePool, id="openyurt-NodePool"),
        pytest.param({**slice_obj("web"), "apiVersion": "discovery.k8s.io/v1beta1"}, type(None),
                     id="v1beta1-EndpointSlice-ignored"),
        pytest.param({**pool_obj("p"), "apiVersion": "example.com/v1"}, type(None),
                     id="NodePool-of-other-group-ignored"),
        pytest.param({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
                     type(None), id="ConfigMap-ignored"),
        pytest.param({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
                     type(None), id="Deployment-ignored"),
    ],
)
def test_translate_object_dispatches_on_api_version_and_kind(obj: Obj, want: type) -> None:
    assert type(translate.translate_object(obj)) is want


@pytest.mark.parametrize(
    ("obj", "where", "field", "reason"),
    [
        pytest.param(_without(svc_obj(), "kind"), "object web", "kind", "missing_kind",
                     id="no-kind"),
        pytest.param(_without(svc_obj(), "apiVersion"), "object web", "apiVersion",
                     "missing_api_version", id="no-api-version"),
        pytest.param({"kind": "Service"}, "object", "apiVersion", "missing_api_version",
                     id="nothing-but-kind"),
    ],
)
def test_translate_object_needs_kind_and_api_version(
    obj: Obj, where: str, field: str, reason: str
) -> None:
    _rejects(translate.translate_object, obj, where, field, reason)


def test_translate_object_passes_errors_of_the_kind_through() -> None:
    _rejects(translate.translate_object, svc_obj(ports=[port_obj(0)]), "Service default/web",
             "spec.ports[0].port", "invalid_port")


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(svc_obj(
            clusterIPs=["10.96.0.10", "fd00::a"], externalIPs=["198.51.100.1"],
            topologyKeys=["kubernetes.io/hostname"], sessionAffinity="ClientIP",
            annotations={"openyurt.io/topologyKeys": "a, b"},
            status={"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}},
        ), id="service"),
        pytest.param(slice_obj("web", [ep_obj("10.0.0.1", node="n", for_zones=["z"])],
                               annotations={"endpoints.kubernetes.io/last-change-trigger-time":
                                            "2024-05-01T08:00:00Z"}), id="slice"),
        pytest.param(node_obj("n1", pool="p", internal_ips=["172.18.0.2"]), id="node"),
        pytest.param(pool_obj("p", ["n1"]), id="pool"),
        pytest.param(list_obj(svc_obj()), id="list-ignored"),
    ],
)
def test_input_is_never_mutated(obj: Obj) -> None:
    before = copy.deepcopy(obj)
    translate.translate_object(obj)
    assert obj == before


def test_translated_values_are_hashable() -> None:
    hash(translate.service(svc_obj(externalIPs=["198.51.100.1"])))
    hash(translate.endpoint_slice(slice_obj("web", [ep_obj("10.0.0.1", for_zones=["z"])])))
