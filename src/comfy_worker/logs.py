"""Logging: one format for the worker, every job line naming its job and its instance."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from comfy_worker.redaction import redact_text

ROOT = "comfy_worker"


QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")


def configure(level: str) -> None:
    logger = logging.getLogger(ROOT)
    if not any(getattr(h, "_comfy_worker", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._comfy_worker = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # `import runpod` configures the root logger too
    for chatty in QUIET_LIBRARIES:  # at DEBUG they log signed S3 request headers, key ID included
        logging.getLogger(chatty).setLevel(logging.WARNING)


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, with every URL's credentials redacted (ComfyUI's lines too)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JobLog(logging.LoggerAdapter):
    """Prefixes each line with [job <id>] and, once chosen, [<instance label>]."""

    def __init__(self, job_id: str) -> None:
        super().__init__(logging.getLogger(f"{ROOT}.job"), {})
        self.job_id = job_id
        self.instance: str | None = None

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        where = f"[{self.instance}] " if self.instance else ""
        return f"[job {self.job_id}] {where}{msg}", kwargs
