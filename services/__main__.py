"""``python -m services <command>``: see ``services.cli_service``."""

from services.cli_service import main

raise SystemExit(main())
