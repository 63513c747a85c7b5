"""The Serve application graph: which deployments, how many replicas, their GPU shares, bound together.

``serve run services.serve.app:app_builder`` (and deploy/serve_config.yaml, the k8s RayService)
build it from the environment's settings; ``build_app(settings)`` builds it from given ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from services import metrics
from services.serve.deployments import serve_deployments
from services.settings import ServiceSettings


def replica_env(settings: ServiceSettings, role: str) -> dict[str, str]:
    """Environment of a replica: its role's metrics folder, device choice, random-weights opt-in."""
    env: dict[str, str] = {}
    if settings.metrics_dir:
        env[metrics.MULTIPROC_ENV] = str(Path(settings.metrics_dir).resolve() / role)
    for key in (
        "BIOVL_DEVICE",
        "BIOVL_ALLOW_RANDOM_WEIGHTS",
        "BIOVL_OPEN_CLIP_CACHE",
        "HF_HUB_OFFLINE",
    ):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def build_app(settings: ServiceSettings) -> Any:
    """The Serve application graph: Ingress (+ Decoder, Embedder, Aligner, QueueWorker if configured).

    Every replica records into a role folder of the node's ``metrics_dir`` (a fresh one when
    none is configured), so the node's one metrics port serves all of them."""
    settings = metrics.with_metrics_dir(settings)
    d = serve_deployments()
    cfg = settings.to_dict()
    cpus = settings.replica_num_cpus

    def opts(num_gpus: float, role: str, deployment: str) -> dict[str, Any]:
        env = {"env_vars": replica_env(settings, role)}
        options = {"num_cpus": cpus, "num_gpus": num_gpus, "runtime_env": env}
        if settings.deployment_resources.get(deployment):
            options["resources"] = dict(settings.deployment_resources[deployment])
        return options

    ingress = d["Ingress"].options(
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        ray_actor_options=opts(0.0, "ingress", "Ingress"),
    )
    if settings.worker_replicas <= 0:
        return ingress.bind(cfg)
    batch = settings.embed_max_batch_size
    embedder = (
        d["Embedder"]
        .options(
            num_replicas=settings.embedder_replicas,
            max_ongoing_requests=max(2 * batch, 16),
            ray_actor_options=opts(settings.embedder_num_gpus, "pipeline", "Embedder"),
        )
        .bind(cfg)
    )
    decoder = (
        d["Decoder"]
        .options(
            num_replicas=settings.decoder_replicas,
            max_ongoing_requests=max(4, 2 * settings.decode_max_batch_size),
            ray_actor_options=opts(settings.decoder_num_gpus, "pipeline", "Decoder"),
        )
        .bind(cfg)
    )
    aligner = (
        d["Aligner"]
        .options(
            num_replicas=settings.aligner_replicas,
            max_ongoing_requests=max(2 * settings.align_max_batch_size, 16),
            ray_actor_options=opts(settings.aligner_num_gpus, "pipeline", "Aligner"),
        )
        .bind(cfg)
    )
    worker = (
        d["QueueWorker"]
        .options(
            num_replicas=settings.worker_replicas,
            ray_actor_options=opts(settings.worker_num_gpus, "pipeline", "QueueWorker"),
            health_check_period_s=10,
        )
        .bind(cfg, embedder, decoder, aligner)
    )
    # The worker is a sibling of the ingress in the graph: binding it here deploys it.
    return ingress.bind(cfg, _worker=worker)


def app_builder(args: dict[str, str] | None = None) -> Any:
    """Entry point for ``serve run services.serve.app:app_builder`` / deploy/serve_config.yaml.

    Settings come from the environment of the node that builds the application (``BIOVL_*``,
    ``REDIS_URL``, optionally a YAML named by ``BIOVL_SERVICE_CONFIG``); ``args.config`` may
    name a settings YAML instead. The built settings travel to every replica as init args.
    """
    from services.settings import load_settings

    return build_app(load_settings((args or {}).get("config") or None))
