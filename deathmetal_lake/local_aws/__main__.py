"""`python -m deathmetal_lake.local_aws up|down|status`: the embedded AWS on its own."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
from pathlib import Path

from deathmetal_lake.local_aws import control
from deathmetal_lake.settings import LakeSettings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deathmetal_lake.local_aws", description=__doc__
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "up", help="start the embedded AWS if it is not running; print its endpoint"
    )
    commands.add_parser("down", help="stop it (buffered Firehose records are delivered first)")
    commands.add_parser("status", help="say whether it runs, and its delivery positions")
    serve = commands.add_parser("serve", help="run it in the foreground (what `up` starts)")
    serve.add_argument("--state-dir", type=Path, required=True)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--region", required=True)
    serve.add_argument("--bucket", required=True)
    serve.add_argument("--buffer-seconds", type=int, required=True)
    serve.add_argument("--compact-min-mb", type=int, default=64)
    args = parser.parse_args(argv)

    if args.command == "serve":
        from deathmetal_lake.local_aws.server import serve as run_server

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        # One access-log line per request would bury what matters (start-up, delivery errors).
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        try:
            run_server(
                state_dir=args.state_dir,
                port=args.port,
                region=args.region,
                bucket=args.bucket,
                buffer_seconds=args.buffer_seconds,
                compact_min_mb=args.compact_min_mb,
            )
        except control.EmbeddedAwsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        # Stopped, and its journal closed: Python's shutdown need not walk moto's objects.
        gc.freeze()
        return 0

    settings: LakeSettings = load_settings()
    try:
        if args.command == "up":
            print(control.ensure_running(settings))
        elif args.command == "down":
            stopped = control.stop(settings)
            print("stopped" if stopped else "not running")
        else:
            current = control.health(settings)
            if current is None:
                print(f"not running (would listen on {control.endpoint(settings)})")
                return 3
            print(json.dumps(current, indent=2))
    except control.EmbeddedAwsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
