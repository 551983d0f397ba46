"""`python -m study`: the command line (study.cli)."""

import sys

from study.cli import main

sys.exit(main())
