"""`python -m deathmetal_lake_tools.bench`: see the package docstring."""

import sys

from deathmetal_lake_tools.bench.cli import main

sys.exit(main())
