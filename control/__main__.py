"""`python -m control` runs the command line."""

import sys

from control.cli import main

sys.exit(main())
