"""Planner + iptables rendering against kube-proxy when BOTH traffic policies are Local.

kube-proxy keeps the cluster-wide endpoint set for any externally reachable service, even
with ``internalTrafficPolicy: Local`` (its ``UsesClusterEndpoints`` is "iTP=Cluster, or
externally accessible"): with ``externalTrafficPolicy: Local``, traffic from pods and from
the node itself to an LB IP / externalIP / NodePort is short-circuited to that
cluster-wide set (the KUBE-EXT "pod traffic" and "route LOCAL traffic" rules), as if it
had gone out to the load balancer and come back in.

With both policies Local, ``internal`` and ``external`` of a
:class:`~proxyd.model.ServicePlan` are both the local set; the plan's ``cluster`` set keeps
the cluster-wide one, so a node without a local endpoint still sends its own pods'
traffic for the service's LB IP to the remote endpoints.
"""

from __future__ import annotations

from proxyd.backends.iptables_render import RenderOptions, render
from proxyd.model import IPFamily, ServiceType, TrafficPolicy
from proxyd.plan import build_plan
from tests.builders import eps, node, port_spec, sep, snapshot, svc

OPTIONS = RenderOptions(cluster_cidrs=("10.244.0.0/16",))


def test_pods_reach_a_local_local_service_through_its_lb_ip_without_a_local_endpoint() -> None:
    service = svc(
        type=ServiceType.LOAD_BALANCER,
        ports=(port_spec(node_port=30080),),
        load_balancer_ips=("192.0.2.20",),
        internal_traffic_policy=TrafficPolicy.LOCAL,
        external_traffic_policy=TrafficPolicy.LOCAL,
        health_check_node_port=32000,
    )
    state = snapshot(
        service,
        eps("web", [sep("10.244.2.2", node_name="node-b")]),
        node("node-a"),
        node("node-b"),
    )
    plan = build_plan(state, "node-a")
    text = render(plan, IPFamily.IPV4, OPTIONS).text
    # kube-proxy: PROXYD-SERVICES sends the LB IP to EXT, whose pod/LOCAL rules go to the
    # cluster-wide chain, which DNATs to the remote endpoint.
    assert "-d 192.0.2.20 --dport 80 -j PROXYD-EXT-" in text
    assert "--to-destination 10.244.2.2:8080" in text
