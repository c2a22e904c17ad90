"""`make run`: ingest every source file in LAKE_CSV_DIR and materialize the whole lake once.

The embedded AWS is started first, in the background: it boots while this process imports
Dagster, Polars and the definitions, which takes as long again, and the two cores do both at once.
"""

import gc
import logging
import sys

from deathmetal_lake.local_aws.control import start_in_background
from deathmetal_lake.settings import AwsMode, load_settings

log = logging.getLogger("deathmetal_lake.run")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Dagster's storage checks its schema (alembic) once per run: not news for the user.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = load_settings()
    if settings.aws_mode is AwsMode.EMBEDDED:
        start_in_background(settings)
    # Imported only now, so that the import overlaps the emulator's start (see above).
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    from deathmetal_lake.batch import run_lake
    from deathmetal_lake.instance import open_instance
    from deathmetal_lake.resources.aws import require_reachable

    # What the imports made lives until exit: the collector need not walk it again in every
    # full collection during the runs (1.3 -> 0.9 s of collections in a scale-1 increment).
    gc.freeze()

    if settings.aws_mode is not AwsMode.EMBEDDED:
        try:
            require_reachable(settings)
        except (EndpointConnectionError, ConnectTimeoutError) as error:
            log.error("%s", "; ".join([str(error), *getattr(error, "__notes__", [])]))
            return 1

    with open_instance(settings) as instance:
        ok = run_lake(settings, instance)
    if not ok:
        log.error("some runs failed; see the messages above or the runs in the Dagster UI")
    # Python's shutdown would walk every object Dagster and Polars allocated (0.7-1.4 s after a
    # run, measured); the instance is closed and logging flushes at exit, so nothing waits on it.
    gc.freeze()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
