"""Times of planned deploys: read as an operator writes them, shown in UTC (as the API keeps them) and local time.

A time without an offset is this machine's local time (the TZ variable, else the system's zone), read as the C
library reads it (datetime.astimezone), so deployctl and `date` agree on it.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from api.text import printable

# RFC 3339's date-time, its "T" also a space and its seconds optional, with or without the offset.
_TIME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<clock>\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
_SHOWN = "%Y-%m-%d %H:%M:%S"


def zone_name() -> str:
    """This machine's time zone as the C library names it: CET/CEST, UTC."""
    return "/".join(dict.fromkeys(time.tzname))


def accepted_forms() -> str:
    return (
        "2026-12-08T02:00:00Z or 2026-12-08T03:00:00+01:00 (RFC 3339, with its offset), or 2026-12-08 03:00 "
        f"(a date-time without one, in this machine's time zone, {zone_name()})"
    )


def parse_time(text: str) -> datetime:
    """An aware datetime: with the offset `text` carries, else in the local zone. ValueError naming the accepted
    forms, or why a local time is not one instant (the clocks skip it, or it comes twice)."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"'{printable(text)}' is not a time deployctl reads: give {accepted_forms()}")
    offset = (match["offset"] or "").upper().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(f"{match['date']}T{match['clock']}{offset}")
    except ValueError as error:
        raise ValueError(f"'{printable(text)}' is not a time ({error}): give {accepted_forms()}") from None
    return moment if moment.tzinfo is not None else _local(moment)


def _local(naive: datetime) -> datetime:
    """`naive` in the local zone; ValueError where a change of the clocks leaves it no single instant."""
    earlier = naive.replace(fold=0).astimezone()
    later = naive.replace(fold=1).astimezone()
    if earlier.utcoffset() == later.utcoffset():
        return earlier
    if earlier.astimezone().replace(tzinfo=None, fold=0) == naive:
        raise ValueError(
            f"{naive:{_SHOWN}} comes twice in this machine's time zone ({zone_name()}), as the clocks go back: "
            f"give it with its offset, {earlier.isoformat()} or {later.isoformat()}"
        )
    raise ValueError(
        f"{naive:{_SHOWN}} does not exist in this machine's time zone ({zone_name()}): the clocks skip it; "
        "give a time with its offset"
    )


def sent(moment: datetime) -> str:
    """The body's `at`: RFC 3339 with the offset it was given in, to the second."""
    return moment.isoformat(timespec="seconds")


def utc(iso: str | None) -> str:
    """An API time (2026-12-08T02:00:00Z) as 2026-12-08 02:00:00, "-" when unset."""
    moment = _aware(iso)
    if moment is None:
        return printable(str(iso)) if iso else "-"
    return f"{moment.astimezone(UTC):{_SHOWN}}"


def local(iso: str | None) -> str:
    """An API time in the local zone, with the zone's name: 2026-12-08 03:00:00 CET."""
    moment = _aware(iso)
    if moment is None:
        return printable(str(iso)) if iso else "-"
    here = moment.astimezone()
    return f"{here:{_SHOWN}} {printable(here.tzname() or '')}".rstrip()


def utc_and_local(iso: str | None) -> str:
    """2026-12-08 02:00:00 UTC (2026-12-08 03:00:00 CET); what the API sent, escaped, if it is no time."""
    if _aware(iso) is None:
        return printable(str(iso)) if iso else "-"
    return f"{utc(iso)} UTC ({local(iso)})"


def _aware(iso: str | None) -> datetime | None:
    try:
        moment = datetime.fromisoformat(iso) if iso else None
    except (TypeError, ValueError):
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
