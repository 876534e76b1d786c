"""deployctl while a deploy waits for a host's Docker engine, and after it had to be reconciled: the waiting line once
per wait, the spinner with it, and what reconciliation found and did."""

from __future__ import annotations

import io

from fakeapi import HOSTILE, HOSTILE_ESCAPED, STEPS, record, unprintable

from deployctl.cli import main
from deployctl.render import Progress, outcome_lines, record_lines, waited_for

WAITING = "waiting for the Docker engine on prod1"


def in_health_check(waiting: str | None) -> dict:
    return record("running", STEPS[:3], current_step="health_check", waiting=waiting)


def test_the_waiting_line_is_printed_once_when_the_wait_begins_and_again_for_another_host():
    screen = io.StringIO()
    progress = Progress(screen, tty=False)

    for each in (
        in_health_check(None),
        in_health_check(f"{WAITING}, 3 s"),
        in_health_check(f"{WAITING}, 6 s"),
        in_health_check(f"{WAITING}, 9 s"),
        in_health_check("waiting for the Docker engine on prod1, prod2, 12 s"),
        in_health_check(None),
        in_health_check(f"{WAITING}, 0 s"),
        record(),
    ):
        progress.update(each)
    progress.done()

    waits = [line for line in screen.getvalue().splitlines() if "waiting" in line]
    assert waits == [
        f"  … {WAITING}, 3 s",
        "  … waiting for the Docker engine on prod1, prod2, 12 s",
        f"  … {WAITING}, 0 s",
    ]


def test_the_spinner_shows_the_wait_with_the_seconds_the_record_says():
    now = [100.0]
    screen = io.StringIO()
    progress = Progress(screen, tty=True, clock=lambda: now[0])

    progress.update(in_health_check(None))
    now[0] += 8
    progress.update(in_health_check(f"{WAITING}, 3 s"))
    progress.update(record())
    progress.done()

    output = screen.getvalue()
    assert f"\r\x1b[K  … {WAITING}, 3 s\n" in output
    assert f"\r\x1b[K  ⠹ health_check  8 s, {WAITING}, 3 s" in output
    assert output.endswith("  ✓ cleanup       Kept 1 previous image\n"), "the spinner is gone at the end"


def test_a_waiting_text_from_the_record_is_printed_escaped():
    screen = io.StringIO()
    progress = Progress(screen, tty=True, clock=lambda: 100.0)

    progress.update(in_health_check(HOSTILE + "waiting, 3 s"))
    progress.done()

    own = screen.getvalue().replace("\r\x1b[K", "")
    assert unprintable(own) == []
    assert f"  … {HOSTILE_ESCAPED}waiting, 3 s\n" in own


def test_what_is_awaited_is_the_text_without_its_seconds():
    assert waited_for(f"{WAITING}, 12 s") == WAITING
    assert waited_for("waiting for the Docker engine on a, b, 1 s") == "waiting for the Docker engine on a, b"
    assert waited_for("waiting, for a reason") == "waiting, for a reason"


def test_deploy_prints_the_waiting_line_while_it_follows(capsys, fake_api):
    fake_api.timeline = [in_health_check(None), in_health_check(f"{WAITING}, 4 s"), in_health_check(None), record()]

    code = main(["deploy", "portal", "acme/portal:1.4.2"])
    out = capsys.readouterr().out

    assert code == 0
    assert out.splitlines().count(f"  … {WAITING}, 4 s") == 1


RESTORED = "Rolled back to the previous image by 20251127T024500-5e6f7a8b"


def reconciled_record() -> dict:
    return record(
        "rollback_failed",
        [*STEPS[:3], {"step": "health_check", "success": False, "detail": "The Docker engine did not answer"}],
        error="The Docker engine at unix:///run/docker.sock did not answer within 60 s: Cannot connect",
        recovery="Now the service runs the new image acme/portal:1.4.2, running, unhealthy",
        recovery_action=RESTORED,
        recovered_by="20251127T024500-5e6f7a8b",
        reconciliation="restored",
        reconciled_at="2025-11-27T02:45:09.000Z",
    )


def test_the_end_of_a_deploy_says_what_reconciliation_found_and_did():
    lines = outcome_lines(reconciled_record())

    assert "  recovery  Now the service runs the new image acme/portal:1.4.2, running, unhealthy" in lines
    assert f"  recovered {RESTORED}" in lines


def test_show_says_when_reconciliation_ended_and_how():
    lines = record_lines(reconciled_record())
    assert "reconciled   restored at 2025-11-27 02:45:09 UTC" in lines
    waiting = record_lines(record("running", STEPS[:3], current_step="health_check", waiting=f"{WAITING}, 5 s"))
    assert f"waiting      {WAITING}, 5 s" in waiting
