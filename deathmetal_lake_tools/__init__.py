"""Tooling around the lake: the benchmark and the source-data generator.

Kept apart from the runtime package `deathmetal_lake`, which never imports from here.
"""
