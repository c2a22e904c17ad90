"""A real LocalStack on the host (no Docker), for `make test-localstack` and local use.

`python -m deathmetal_lake_tools.localstack install|up|down|status|run`: see `__main__.py`.
"""
