"""A csv reader of the producer's own, whose field size limit is not the process's.

The csv module refuses fields over 128 Ki characters, which would make a long review a parse
error. `csv.field_size_limit(...)` would lift that for every csv reader in the process, so the
producer loads a second instance of CPython's `_csv` extension instead: it keeps the limit in its
per-module state, so this instance's limit is its own. Its `reader` is the one `csv.reader` is.
"""

from __future__ import annotations

import _csv
import importlib.util
from collections.abc import Iterable, Iterator
from types import ModuleType

FIELD_LIMIT = 64 << 20
"""Characters per field. Anything over 1 MiB goes to errors/ anyway; a field larger than this is
a parse-error row, so memory per row stays bounded."""


def _own_csv_module() -> ModuleType:
    spec = importlib.util.find_spec(_csv.__name__)
    if spec is None or spec.loader is None:
        raise ImportError("the _csv extension module cannot be loaded a second time")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    process_limit = _csv.field_size_limit()
    module.field_size_limit(FIELD_LIMIT)
    if module is _csv or _csv.field_size_limit() != process_limit:
        _csv.field_size_limit(process_limit)
        raise ImportError(
            "this Python's _csv shares its field size limit between instances; the producer "
            "would change it for the whole process"
        )
    return module


_module = _own_csv_module()

Error: type[Exception] = _module.Error
"""What the reader raises for a malformed record (not `csv.Error`: another instance's class)."""


def reader(lines: Iterable[str]) -> Iterator[list[str]]:
    """`csv.reader(lines, strict=True)` with the producer's field size limit.

    It reads one line from `lines` per call and nothing ahead, so the caller knows which lines
    made each record.
    """
    return _module.reader(lines, strict=True)
