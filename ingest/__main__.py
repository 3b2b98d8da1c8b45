"""`python -m ingest`: one ingest worker (the supervisor starts its workers this way)."""

import sys

from ingest.cli import main

sys.exit(main())
