"""The retry policy of every AWS-facing step, the last layer `deathmetal_lake/retries.py` describes.

Kept apart from the clients' retries there, which the settings and the embedded AWS use without
importing Dagster.
"""

from dagster import Backoff, Jitter, RetryPolicy

# Waits about 1, 3 and 7 s (each +-1 s) between the attempts: ~11 s, time for the embedded AWS
# to restart, while a lasting fault still fails the run within half a minute.
STEP_RETRY_POLICY = RetryPolicy(
    max_retries=3, delay=1, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
