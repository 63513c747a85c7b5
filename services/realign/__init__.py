"""``biovl realign``: re-align every archived recording with the current model and aligner.

The nightly job. Four stages with one small interface each (a batch is a dict of columns, as in
Ray Data), run in-process or as a Ray Data pipeline when a cluster is reachable:

    read   the driver lists the archive, loads the current model identity and skips every
           recording whose latest alignment already has the current config key (model
           fingerprint + aligner method + params + aligner version): reruns are idempotent
    embed  ``stages.SimilarityStage``: step x segment similarity from the embedding cache (no decode,
           no embed) when the model is unchanged, else decode + embed (and fill the cache);
           an actor pool under Ray, so each actor loads the model once (lazily: never, when
           every embedding is cached)
    align  ``stages.align_stage``: every alignment of a batch through ONE ``align_batch`` call
           (numba on CPU, the CuPy kernel on GPU), grouped by aligner config
    write  ``stages.write_stage``: the result as a NEW version through the archive's atomic write
           (the JSON commit marker last), never touching earlier versions

Rooms: ``plan`` (model identity, job config, the read stage), ``stages`` (similarity, align,
write over numpy columns), ``runners`` (local and Ray, the Ray connection, the run lock),
``run`` (one run, counted into the summary), ``report`` (outcomes, summary), ``cli``.

A crash leaves no partial version (a version exists once its JSON is committed); the next run
skips what was committed and completes the rest. One failing recording is reported and counted,
it never stops the others. See docs/REALIGN.md.
"""

from services.realign.cli import add_arguments, cmd_realign, main
from services.realign.plan import ModelIdentity, realign_key
from services.realign.report import RealignSummary, RecordingOutcome
from services.realign.run import realign_archive

__all__ = [
    "ModelIdentity",
    "RealignSummary",
    "RecordingOutcome",
    "add_arguments",
    "cmd_realign",
    "main",
    "realign_archive",
    "realign_key",
]
