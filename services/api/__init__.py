"""The HTTP API room: the job service (upload, validation, lookup), its routes and lab auth.

``create_app(JobService(settings))`` is the FastAPI app; it runs inside the Serve ``Ingress``
deployment (``services.serve``) or standalone for tests and ``make run``.
"""

from services.api.jobs import JobService, make_job_id
from services.api.routes import create_app

__all__ = ["JobService", "create_app", "make_job_id"]
