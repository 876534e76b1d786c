"""Logging: the reference's human lines by default, or one JSON object per line (LOG_FORMAT=json) for Loki.

Every line logged while a deploy runs carries its deployment id, service and current step. They are held in a
context variable, so a deploy's worker thread (which copies the context) and its request see the same ones.
"""

from __future__ import annotations

import logging
import logging.config
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS

HUMAN_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"

_context: ContextVar[dict[str, str] | None] = ContextVar("deploy_log_context", default=None)


def bind(**fields: str | None) -> None:
    """Add fields to every line logged from here on in this context (a task, or a thread started from it)."""
    _context.set({**(_context.get() or {}), **{name: value for name, value in fields.items() if value is not None}})


class ContextFilter(logging.Filter):
    """Puts the bound deployment id, service and step on each record (a JSON line shows them as keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def logging_config(log_format: Literal["text", "json"]) -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, on stdout, in either format."""
    if log_format == "json":
        json_formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "{levelname}{name}{message}",
            "style": "{",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
            "json_ensure_ascii": False,
            # uvicorn repeats each message with terminal colours; one copy is enough.
            "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
        }
        formatters = {"default": json_formatter, "access": json_formatter}
    else:
        formatters = {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "fmt": HUMAN_FORMAT, "use_colors": False},
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": HUMAN_FORMAT.replace("%(message)s", '%(client_addr)s "%(request_line)s" %(status_code)s'),
                "use_colors": False,
            },
        }

    def handler(formatter: str) -> dict[str, Any]:
        return {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": formatter,
            "filters": ["context"],
        }

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": formatters,
        "handlers": {"default": handler("default"), "access": handler("access")},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            # Apprise says which target failed (with its secrets masked); its debug lines may quote more.
            "apprise": {"level": "WARNING"},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }


def configure(log_format: Literal["text", "json"]) -> None:
    """Configure logging, unless something (uvicorn's log_config, pytest) has already."""
    if not logging.getLogger().handlers:
        logging.config.dictConfig(logging_config(log_format))
