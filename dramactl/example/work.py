"""What the example actors do, without Dramatiq: input checks and the small real work.

Every function here is deterministic on its input, so tests can compute the expected
result. Inputs are plain dicts (JSON-encodable, as Dramatiq messages are). Two optional
fields steer any task for demos and tests:

``seconds``
    how long the task takes (a sleep after the work); defaults to EXAMPLE_TASK_SECONDS.
``fail_times``
    fail the first K attempts (see :func:`injected_failure`), so the retries show.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from email.utils import parseaddr
from typing import Any, Mapping

TASK_SECONDS_ENV = "EXAMPLE_TASK_SECONDS"
DEFAULT_TASK_SECONDS = 1.0
MAX_TASK_SECONDS = 3600.0
_WORD = re.compile(r"\w+(?:['’-]\w+)*")


class InvalidInput(ValueError):
    """The task's input cannot be processed; retrying would not help."""


def _require(data: Any, kind: str, *fields: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{kind} task input must be a dict, not {type(data).__name__}")
    for name in fields:
        value = data.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise InvalidInput(f"{kind} task input is missing the field {name!r}")
    return data


def _text_field(data: Mapping[str, Any], kind: str, name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise InvalidInput(f"{kind} task field {name!r} must be a string, not {type(value).__name__}")
    return value


def check_controls(data: Mapping[str, Any]) -> None:
    """Validate the optional ``seconds`` and ``fail_times`` fields."""
    seconds = data.get("seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_TASK_SECONDS:
            raise InvalidInput(f"field 'seconds' must be a number from 0 to {MAX_TASK_SECONDS:g}, not {seconds!r}")
    fail_times = data.get("fail_times", 0)
    if isinstance(fail_times, bool) or not isinstance(fail_times, int) or fail_times < 0:
        raise InvalidInput(f"field 'fail_times' must be a whole number >= 0, not {fail_times!r}")


def validate_email(data: Any) -> Mapping[str, Any]:
    """An email task needs ``to`` (an address) and ``subject``; ``body`` and ``from`` are optional."""
    data = _require(data, "email", "to", "subject")
    for name in ("to", "subject", "body", "from"):
        _text_field(data, "email", name)
    name, address = parseaddr(data["to"])
    local, _, domain = address.rpartition("@")
    if not local or not domain or "." not in domain.strip("."):
        raise InvalidInput(f"email task field 'to' is not an email address: {data['to']!r}")
    check_controls(data)
    return data


def validate_ocr(data: Any) -> Mapping[str, Any]:
    """An OCR task needs ``path`` (a text file to read) or ``text`` (the scanned text itself)."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"ocr task input must be a dict, not {type(data).__name__}")
    if not data.get("path") and data.get("text") is None:
        raise InvalidInput("ocr task input is missing the field 'path' (or give the text itself as 'text')")
    _text_field(data, "ocr", "path")
    _text_field(data, "ocr", "text")
    check_controls(data)
    return data


def validate_notification(data: Any) -> Mapping[str, Any]:
    """A notification needs ``user_id`` and ``message``; ``channel`` defaults to push."""
    data = _require(data, "notification", "user_id", "message")
    _text_field(data, "notification", "message")
    _text_field(data, "notification", "channel")
    check_controls(data)
    return data


def validate_report(data: Any) -> Mapping[str, Any]:
    """A report needs ``values``: a non-empty list of numbers."""
    data = _require(data, "report", "values")
    values = data["values"]
    if not isinstance(values, list) or not values:
        raise InvalidInput("report task field 'values' must be a non-empty list of numbers")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InvalidInput("report task field 'values' must hold only numbers")
    check_controls(data)
    return data


def text_stats(text: str) -> dict[str, Any]:
    """Words, lines, characters and the three commonest words (ties alphabetical)."""
    words = [w.lower() for w in _WORD.findall(text)]
    common = sorted(Counter(words).items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return {
        "words": len(words),
        "lines": len(text.splitlines()),
        "chars": len(text),
        "top_words": [[w, n] for w, n in common],
    }


def parse_email(data: Any) -> dict[str, Any]:
    """What the email actor returns: the parsed recipient and a summary of the body."""
    data = validate_email(data)
    name, address = parseaddr(data["to"])
    body = data.get("body", "")
    stats = text_stats(body)
    return {
        "to": address.lower(),
        "name": name,
        "domain": address.rpartition("@")[2].lower(),
        "subject": data["subject"].strip(),
        "words": stats["words"],
        "lines": stats["lines"],
        "links": len(re.findall(r"https?://\S+", body)),
        "digest": hashlib.sha256(body.encode()).hexdigest()[:16],
    }


def ocr_document(data: Any) -> dict[str, Any]:
    """What the OCR actor returns: the word count of the file (or text) it was given."""
    data = validate_ocr(data)
    path = data.get("path")
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            raise InvalidInput(f"ocr task file does not exist: {path}") from None
        except IsADirectoryError:
            raise InvalidInput(f"ocr task path is a directory: {path}") from None
        source = path
    else:
        text, source = data["text"], "text"
    return {"source": source, **text_stats(text)}


def build_notification(data: Any) -> dict[str, Any]:
    """What the high-priority actor returns: the notification it would deliver."""
    data = validate_notification(data)
    message = data["message"].strip()
    return {
        "user_id": data["user_id"],
        "channel": data.get("channel") or "push",
        "chars": len(message),
        "preview": message[:40],
    }


def build_report(data: Any) -> dict[str, Any]:
    """What the low-priority actor returns: count, sum, min, max and mean of the values."""
    values = validate_report(data)["values"]
    total = sum(values)
    return {"count": len(values), "sum": total, "min": min(values), "max": max(values), "mean": total / len(values)}


def task_seconds(data: Mapping[str, Any], default: float) -> float:
    """The time a task takes: its ``seconds`` field, else the configured default."""
    seconds = data.get("seconds")
    return float(default if seconds is None else seconds)


def default_seconds(values: Mapping[str, str] | None = None) -> float:
    """EXAMPLE_TASK_SECONDS from ``values`` (or the environment); DEFAULT_TASK_SECONDS when unset or bad."""
    raw = (os.environ if values is None else values).get(TASK_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_TASK_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_TASK_SECONDS:
        logging.getLogger("dramactl.example").warning(
            "%s=%r is not a number of seconds from 0 to %g; using %g", TASK_SECONDS_ENV, raw, MAX_TASK_SECONDS, DEFAULT_TASK_SECONDS
        )
        return DEFAULT_TASK_SECONDS
    return value


def injected_failure(data: Mapping[str, Any], retries: int) -> str | None:
    """Why this attempt must fail on purpose (fewer than ``fail_times`` attempts made), or None."""
    fail_times = int(data.get("fail_times", 0) or 0)
    if retries < fail_times:
        return f"simulated transient failure on attempt {retries + 1} of the first {fail_times}"
    return None
