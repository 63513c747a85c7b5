"""The BioVL service: HTTP API, Ray Serve deployments, Redis Streams queue, archive, metrics.

Wraps ``biovl_core`` (never imported by it). Rooms: ``api/`` (HTTP), ``serve/`` (Ray Serve),
``realign/`` (the nightly re-align), ``worker``, ``queue``, ``archive``, ``metrics``, ``settings``;
docs/ARCHITECTURE.md maps them. Entry points: ``python -m services serve|worker|requeue|tokens``
and ``python -m services.run_local`` (``make run``).
"""
