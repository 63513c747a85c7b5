"""Benchmarks: ``python -m biovl_core.bench NAME`` runs ``biovl_core.bench.NAME.main(argv)``."""
