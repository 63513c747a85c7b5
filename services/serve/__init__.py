"""The Ray Serve room: the deployments, the stand-ins that call them, and the application graph
(``services.serve.app:app_builder``)."""
