"""``python -m services.realign``: the re-aligner's command line (``services.realign.cli``)."""

from services.realign.cli import main

raise SystemExit(main())
