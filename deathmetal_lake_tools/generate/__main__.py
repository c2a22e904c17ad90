"""`python -m deathmetal_lake_tools.generate`: see the package docstring."""

import sys

from deathmetal_lake_tools.generate.cli import main

sys.exit(main())
