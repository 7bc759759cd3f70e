"""The server's log: plain text or JSON Lines, and one line per finished request.

A request's line holds its id, outcome, token counts and timings, never its prompt or text.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

REQUEST_LOGGER = "steering_server.requests"
FORMATS = ("text", "json")


@dataclass(frozen=True)
class RequestRecord:
    """One finished call."""

    request_id: str
    rpc: str
    outcome: str  # "ok" or a status code's name in lower case
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float | None  # None: no token was sent
    duration_s: float

    def text(self) -> str:
        ttft = "-" if self.time_to_first_token_s is None else f"{self.time_to_first_token_s:.3f}s"
        return (
            f"request {self.request_id} {self.rpc} {self.outcome} "
            f"prompt_tokens={self.prompt_tokens} completion_tokens={self.completion_tokens} "
            f"ttft={ttft} duration={self.duration_s:.3f}s"
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a request's line carries its record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if isinstance(request, RequestRecord):
            line.update(asdict(request))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(level: str, fmt: str) -> None:
    """Log to stderr at `level`, as text or JSON Lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_request(record: RequestRecord) -> None:
    logging.getLogger(REQUEST_LOGGER).info(record.text(), extra={"request": record})
