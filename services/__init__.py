"""The BioVL service: HTTP API, Ray Serve deployments, Redis Streams queue, archive, metrics.

Wraps ``biovl_core`` (never imported by it). Entry points: ``python -m services serve|worker|requeue|tokens``
and ``python -m services.run_local`` (``make run``).
"""
