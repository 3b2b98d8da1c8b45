"""`python -m safecity` runs the command line."""

import sys

from safecity.cli import main

sys.exit(main())
