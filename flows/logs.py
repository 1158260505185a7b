"""Forward the `pipeline` loggers to Prefect: their records appear in the flow/task run logs (UI) and the console.

`PREFECT_LOGGING_EXTRA_LOGGERS=pipeline` would do it only when set before Prefect configures logging, and a worker's
flow-run process configures Prefect before it imports our flows; so this does the same explicitly, whenever `flows`
is imported: Prefect's API handler (the one of its `prefect.extra` logger) on the `pipeline` logger, at INFO unless
the user configured a level (Prefect's extra loggers keep the root's WARNING, which would drop the epoch lines).
"""

from __future__ import annotations

import logging

import prefect.main  # noqa: F401 - configures Prefect logging if nothing has yet

PIPELINE_LOGGER = "pipeline"


def forward_pipeline_logs() -> logging.Logger:
    logger = logging.getLogger(PIPELINE_LOGGER)
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    return logger
