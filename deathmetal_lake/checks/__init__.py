"""The lake's data-quality checks, all declared from the dataset registry and `rules.py`.

- `reconciliation`: the contract's invariant, blocking (landing, bronze per ingest; silver);
- `contracts`: silver key, required columns, schema, value rules (ERROR, blocking), known values
  and quarantine rate (WARN), foreign-key orphans (WARN under a threshold, ERROR over it);
- `gold`: gold sanity (ERROR, blocking);
- `freshness`: silver and gold follow their upstream (WARN), plus a FreshnessPolicy.

The contracts, gold and freshness checks share steps (`evidence.checks_step`): one per silver
dataset, one per mart another mart reads plus one for the other marts, one for freshness. They
read the lake's tables through the `tables` resource (`LakeTables`), only those of the checks
selected; a check whose tables are not all in the lake yet is skipped, never failed.
"""

from deathmetal_lake.checks.contracts import contract_checks
from deathmetal_lake.checks.freshness import freshness_checks, with_freshness_policy
from deathmetal_lake.checks.gold import gold_checks
from deathmetal_lake.checks.reconciliation import reconciliation_checks

lake_checks = [
    *reconciliation_checks(),
    *contract_checks(),
    *gold_checks(),
    *freshness_checks(),
]

__all__ = ["lake_checks", "with_freshness_policy"]
