"""``python -m biovl_core``: the core CLI."""

import sys

from biovl_core.cli import main

sys.exit(main())
