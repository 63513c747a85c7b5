"""BioVL aligner core: protocol -> segments -> frames -> embeddings -> similarity -> alignment.

A plain library: no Ray, no Redis, no HTTP (those live in ``services/``).
"""

__version__ = "0.1.0"
