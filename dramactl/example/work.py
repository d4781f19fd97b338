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


class DocumentUnavailable(Exception):
    """The document a task names cannot be read now: a failure of the task, retried like any other."""


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


def _address(data: Mapping[str, Any], name: str) -> str:
    """The address in the optional field ``name`` ("" when absent); not an address: InvalidInput."""
    value = _text_field(data, "email", name)
    if not value.strip():
        return ""
    _, address = parseaddr(value)
    local, _, domain = address.rpartition("@")
    if not local or not domain or "." not in domain.strip("."):
        raise InvalidInput(f"email task field {name!r} is not an email address: {value!r}")
    return address


def validate_email(data: Any) -> Mapping[str, Any]:
    """An email task needs ``subject`` and a recipient: ``user_id`` (the migration guide's form) or ``to`` (an address).

    Optional: ``sender`` (or ``from``), an address; ``body``; ``attachments``, a list.
    """
    if isinstance(data, Mapping) and data.get("user_id") is None and data.get("to") is None:
        raise InvalidInput("email task input is missing the field 'user_id' (or give the recipient's address as 'to')")
    data = _require(data, "email", "subject")
    for name in ("subject", "body"):
        _text_field(data, "email", name)
    for name in ("to", "sender", "from"):
        _address(data, name)
    if data.get("to") is not None and not _address(data, "to"):
        raise InvalidInput(f"email task field 'to' is not an email address: {data['to']!r}")
    attachments = data.get("attachments", [])
    if not isinstance(attachments, list):
        raise InvalidInput(f"email task field 'attachments' must be a list, not {type(attachments).__name__}")
    check_controls(data)
    return data


def validate_ocr(data: Any) -> Mapping[str, Any]:
    """An OCR task needs ``file_path`` (the migration guide's name; ``path`` is accepted too) or ``text``.

    Optional: ``task_id``. Whether the file exists is the task's business, not the sender's: a file that
    cannot be read fails the task (:class:`DocumentUnavailable`), which is retried like any failure.
    """
    if not isinstance(data, Mapping):
        raise InvalidInput(f"ocr task input must be a dict, not {type(data).__name__}")
    if not data.get("file_path") and not data.get("path") and data.get("text") is None:
        raise InvalidInput("ocr task input is missing the field 'file_path' (or give the text itself as 'text')")
    for name in ("file_path", "path", "text"):
        _text_field(data, "ocr", name)
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
    """What the email actor returns: the parsed recipient and sender and a summary of the body."""
    data = validate_email(data)
    name, address = parseaddr(data.get("to") or "")
    body = data.get("body", "")
    stats = text_stats(body)
    return {
        "to": address.lower(),
        "name": name,
        "domain": address.rpartition("@")[2].lower(),
        "user_id": data.get("user_id"),
        "sender": (_address(data, "sender") or _address(data, "from")).lower(),
        "subject": data["subject"].strip(),
        "words": stats["words"],
        "lines": stats["lines"],
        "links": len(re.findall(r"https?://\S+", body)),
        "attachments": len(data.get("attachments", [])),
        "digest": hashlib.sha256(body.encode()).hexdigest()[:16],
    }


def ocr_document(data: Any) -> dict[str, Any]:
    """What the OCR actor returns: the word count of the file (or text) it was given.

    A file that does not exist or cannot be read raises :class:`DocumentUnavailable`.
    """
    data = validate_ocr(data)
    path = data.get("file_path") or data.get("path")
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            raise DocumentUnavailable(f"ocr task file does not exist: {path}") from None
        except IsADirectoryError:
            raise DocumentUnavailable(f"ocr task path is a directory: {path}") from None
        except OSError as e:
            raise DocumentUnavailable(f"ocr task file cannot be read: {path} ({e.strerror})") from None
        source = path
    else:
        text, source = data["text"], "text"
    result: dict[str, Any] = {"source": source, **text_stats(text)}
    if data.get("task_id") is not None:
        result["task_id"] = data["task_id"]
    return result


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
