"""deployctl against a fake API on loopback: every command, every exit code, and what the fake received."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeapi import (
    DEPLOYMENT_ID,
    HOSTILE,
    HOSTILE_ESCAPED,
    READ_TOKEN,
    SECRET,
    STEPS,
    hostile_record,
    progressing,
    record,
    unprintable,
)

import deployctl.client
import deployctl.follow
from api.signature import is_valid, sign
from deployctl.cli import main
from deployctl.client import Client, Refused
from deployctl.render import Progress

REPO = Path(__file__).resolve().parents[3]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert SECRET not in out + err, "the secret is never printed"
    return code, out, err


def test_help_describes_every_command_with_examples_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("deploy", "rollback", "history", "schedules", "cancel", "show", "sign"):
        assert re.search(rf"\n    {command}\s+\w", text), f"{command} has a help line"
    assert "WEBHOOK_SECRET" in text and "DEPLOY_READ_TOKEN" in text and "DEPLOY_URL" in text
    for code in range(5):
        assert f"\n  {code}  " in text, f"exit code {code} is documented"
    for command in ("deploy", "rollback", "history", "schedules", "cancel", "show", "sign"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"examples:\n  deployctl {command}" in capsys.readouterr().out


def test_the_console_script_and_python_m_run_the_cli():
    for command in ([str(Path(sys.executable).parent / "deployctl")], [sys.executable, "-m", "deployctl"]):
        completed = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.startswith("usage: deployctl")


def test_deploy_signs_starts_asynchronously_and_prints_each_step_once(capsys, fake_api):
    fake_api.timeline = progressing(record())

    code, out, _ = run(
        capsys, "deploy", "portal", "acme/portal:1.4.2", "--repository", "acme/portal", "--commit", "abc123",
        "--message", "Update homepage",
    )  # fmt: skip

    assert code == 0
    (start,) = fake_api.requests("POST")
    assert (start.path, start.query) == ("/deploy", {"wait": ["false"]})
    assert start.body == (
        b'{"service":"portal","image":"acme/portal:1.4.2","repository":"acme/portal","commit":"abc123",'
        b'"message":"Update homepage","timestamp":%d}' % start.timestamp
    )
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    reads = fake_api.requests("GET")
    assert len(reads) == 6, "polled until the outcome was final, then stopped"
    for read in reads:
        assert read.path == f"/deployments/{DEPLOYMENT_ID}"
        assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "read")
        assert not is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "deploy")
    lines = out.splitlines()
    assert lines[0] == f"deploy of portal started: deployment {DEPLOYMENT_ID}"
    assert lines[1:6] == [
        "  ✓ capture_state Running acme/portal:1.4.1 (803b769d63c8)",
        "  ✓ pull_image    Pulled acme/portal:1.4.2: new image 99a472288b48",
        "  ✓ compose_up    Container recreated",
        "  ✓ health_check  Container is healthy",
        "  ✓ cleanup       Kept 1 previous image",
    ]
    assert lines[6:] == [
        "✓ deploy of portal succeeded (11.8 s)",
        "  now runs  acme/portal:1.4.2 (99a472288b48)",
        "  replaced  acme/portal:1.4.1 (803b769d63c8)",
    ]
    assert "\x1b[K" not in out, "no spinner when stdout is not a terminal"


def test_deploy_without_image_sends_only_the_service(capsys, fake_api):
    assert run(capsys, "deploy", "hello-world")[0] == 0
    (start,) = fake_api.requests("POST")
    assert start.body == b'{"service":"hello-world","timestamp":%d}' % start.timestamp


def test_deploy_to_an_environment_sends_it(capsys, fake_api):
    assert run(capsys, "deploy", "hello-world", "--environment", "staging")[0] == 0
    (start,) = fake_api.requests("POST")
    assert start.body == b'{"service":"hello-world","environment":"staging","timestamp":%d}' % start.timestamp


def test_deploy_json_prints_only_the_final_record(capsys, fake_api):
    final = record()
    fake_api.timeline = progressing(final)

    code, out, _ = run(capsys, "deploy", "portal", "acme/portal:1.4.2", "--json")

    assert code == 0
    assert json.loads(out) == final


@pytest.mark.parametrize(
    ("outcome", "words"),
    [
        ("rolled_back", "failed and was rolled back: the service runs the previous image again"),
        ("rollback_failed", "failed, and so did the rollback: the service needs a look"),
        ("failed", "failed with nothing to roll back"),
        ("interrupted", "was interrupted"),
    ],
)
def test_a_deploy_that_did_not_succeed_exits_1_with_its_error_and_log_tail(capsys, fake_api, outcome, words):
    steps = [*STEPS[:3], {"step": "health_check", "success": False, "detail": "Container is restarting"}]
    logs = "\n".join(f"line {number}" for number in range(1, 31))
    final = record(outcome, steps, error="Container is restarting: it stopped 1 time(s)", logs=logs, http_status=500)
    fake_api.timeline = progressing(final)

    code, out, _ = run(capsys, "deploy", "portal", "acme/portal:1.4.2")

    assert code == 1
    assert "  ✗ health_check  Container is restarting\n" in out
    assert f"✗ deploy of portal {words} (11.8 s)" in out
    assert "  error     Container is restarting: it stopped 1 time(s)" in out
    assert "  logs      last 20 of 30 lines:\n    line 11\n" in out and out.rstrip().endswith("    line 30")
    assert "line 10\n" not in out


def test_rollback_posts_to_rollback_and_follows(capsys, fake_api):
    final = record(action="rollback", image=None)
    fake_api.timeline = progressing(final)

    code, out, _ = run(capsys, "rollback", "portal", "--message", "1.4.2 breaks logins")

    assert code == 0
    (start,) = fake_api.requests("POST")
    assert (start.path, start.query) == ("/rollback", {"wait": ["false"]})
    assert start.body == b'{"service":"portal","message":"1.4.2 breaks logins","timestamp":%d}' % start.timestamp
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "rollback")
    assert not is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"], "deploy")
    assert "✓ rollback of portal succeeded" in out


def test_no_follow_prints_the_id_and_returns_at_once(capsys, fake_api):
    code, out, _ = run(capsys, "deploy", "portal", "--no-follow")

    assert code == 0
    assert fake_api.requests("GET") == []
    assert (
        out == f"deploy of portal started: deployment {DEPLOYMENT_ID}\nfollow it with: deployctl show {DEPLOYMENT_ID}\n"
    )
    # Another body: the same one within the same second would be a request the API has already received.
    rollback = run(capsys, "rollback", "portal", "acme/portal:1.4.1", "--no-follow", "--json")
    assert json.loads(rollback[1])["deployment_id"] == DEPLOYMENT_ID


@pytest.mark.parametrize(
    ("status", "detail", "printed"),
    [
        (400, "Service 'ghost' not allowed. Allowed: portal, hello-world", "(400): Service 'ghost' not allowed."),
        (409, "A deployment of 'portal' is already running (deployment x)", "(409): A deployment of 'portal'"),
        (413, "Request body is larger than 65536 bytes", "(413): Request body is larger than 65536 bytes"),
        (422, ["image: Value error, not a valid Docker image reference"], "(422):\n  - image: Value error, not a"),
        (403, "This signed request was already received: sign a new one", "(403): This signed request was already"),
        (403, "The secret that signed this request may not deploy 'ghost'", "(403): The secret that signed this"),
    ],
    ids=["not-allowed", "conflict", "too-large", "validation", "replayed", "not-its-secret"],
)
def test_a_refusal_exits_3_with_the_api_detail(capsys, fake_api, status, detail, printed):
    fake_api.start_answer = (status, {"detail": detail})

    code, out, err = run(capsys, "deploy", "ghost", "acme/portal:1.4.2")

    assert code == 3
    assert f"deployctl: refused by the API {printed}" in err
    assert "WEBHOOK_SECRET here is not the API's" not in err, "only an invalid signature blames the secret"
    assert out == "" and fake_api.requests("GET") == []


@pytest.mark.parametrize(
    ("headers", "printed"),
    [({"Retry-After": "120"}, "(too many requests: try again in 120 s)"), ({}, "(too many requests: try again later)")],
    ids=["retry-after", "without-retry-after"],
)
def test_too_many_requests_exits_3_with_the_detail_and_the_seconds_to_wait(capsys, fake_api, headers, printed):
    fake_api.start_answer = (429, {"detail": "Too many deploys of 'portal' (30 per 1 hour); retry in 120 s"})
    fake_api.extra_headers = headers

    code, out, err = run(capsys, "deploy", "portal", "acme/portal:1.4.2")

    assert code == 3
    assert err == (
        "deployctl: refused by the API (429): Too many deploys of 'portal' (30 per 1 hour); retry in 120 s\n"
        f"  {printed}\n"
    )
    assert out == "" and len(fake_api.seen) == 1, "not tried again"


def test_a_signature_made_for_another_purpose_is_refused_and_says_what_to_do(capsys, fake_api, monkeypatch):
    """As a deployctl that signed everything as a deploy would be answered: the fake checks each purpose."""
    monkeypatch.setattr(deployctl.client, "sign", lambda secret, payload, purpose: sign(secret, payload))

    rolled_back = run(capsys, "rollback", "portal")
    shown = run(capsys, "show", DEPLOYMENT_ID)

    assert rolled_back[0] == 3
    assert (
        "refused by the API (403): Invalid signature: it was made for POST /deploy, not for POST /rollback"
        in (rolled_back[2])
    )
    assert "use the deployctl of the API's version" in rolled_back[2]
    assert "WEBHOOK_SECRET here is not the API's" not in rolled_back[2]
    assert shown[0] == 3
    assert (
        "refused by the API (401): The signature over read: and the deployment id is not valid: it was made for "
        "POST /deploy, not for GET /deployments/{id}" in shown[2]
    )


def test_a_wrong_secret_exits_3_and_says_which_setting(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", "not-the-secret-" + "x" * 32)

    code, _, err = run(capsys, "deploy", "portal")

    assert code == 3
    assert "refused by the API (403): Invalid signature" in err and "WEBHOOK_SECRET here is not the API's" in err


def test_each_start_signs_the_time_it_is_sent_and_a_clock_far_off_is_refused(fake_api):
    now = time.time()
    clock = iter([now, now + 1, now - 3600])
    fields = {"service": "portal", "image": "acme/portal:1.4.2"}

    with Client(fake_api.url, secret=SECRET.encode(), clock=lambda: next(clock)) as client:
        client.start("deploy", fields)
        client.start("deploy", fields)
        with pytest.raises(Refused) as refusal:
            client.start("deploy", fields)

    first, second, stale = fake_api.requests("POST")
    assert (first.timestamp, second.timestamp, stale.timestamp) == (int(now), int(now + 1), int(now - 3600))
    assert first.body != second.body, "the same deploy asked for again is a new request, signed anew"
    assert refusal.value.status == 403 and "not within 5 s of now" in str(refusal.value.detail)
    assert len(fake_api.problems) == 1, "the fake refused the stale one, as the API would"
    fake_api.problems.clear()


@pytest.mark.parametrize("listed", ["{new},{old}", " {new} , {old} ", "{new}"])
def test_a_secret_list_signs_with_its_first_entry(capsys, fake_api, monkeypatch, tmp_path, listed):
    old = "old-secret-" + "9" * 32
    monkeypatch.setenv("WEBHOOK_SECRET", listed.format(new=SECRET, old=old))
    fake_api.timeline = progressing(record())
    (tmp_path / "body.json").write_bytes(b"{}")

    deployed = run(capsys, "deploy", "portal")
    signed = run(capsys, "sign", "body.json", "--value")

    assert deployed[0] == 0
    (start,) = fake_api.requests("POST")
    assert is_valid(SECRET.encode(), start.body, start.headers["X-Hub-Signature-256"])
    for read in fake_api.requests("GET"):
        assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "read")
    assert signed[:2] == (0, sign(SECRET.encode(), b"{}") + "\n")
    assert old not in "".join(deployed[1:] + signed[1:])


def test_a_secret_list_of_nothing_but_commas_is_no_secret(capsys, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", " , ")

    code, _, err = run(capsys, "deploy", "portal")

    assert code == 2 and "WEBHOOK_SECRET is not set" in err


def test_a_secret_list_whose_first_entry_is_not_the_api_s_is_refused(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", f"old-secret-{'9' * 32},{SECRET}")

    code, _, err = run(capsys, "deploy", "portal")

    assert code == 3 and "refused by the API (403): Invalid signature" in err, "only the first entry signs"


def test_an_unreachable_api_exits_4(capsys, fake_api):
    closed = fake_api.url.rsplit(":", 1)[0] + ":9"

    code, _, err = run(capsys, "--url", closed, "deploy", "portal")

    assert code == 4
    assert f"deployctl: the API did not answer: {closed}/deploy" in err


def test_a_5xx_from_a_proxy_exits_4(capsys, fake_api):
    fake_api.start_answer = (502, {"detail": "Bad gateway"})

    code, _, err = run(capsys, "deploy", "portal")

    assert (code, "answered 502: Bad gateway" in err) == (4, True)


def test_a_redirect_is_not_followed_and_exits_4_naming_where_it_points(capsys, fake_api):
    fake_api.start_answer = (308, {})
    fake_api.extra_headers = {"Location": "https://deploy.example.com/deploy"}

    code, _, err = run(capsys, "deploy", "portal")

    assert code == 4
    assert "redirects to https://deploy.example.com/deploy: set DEPLOY_URL (or --url) to where it points" in err
    assert len(fake_api.seen) == 1


def test_following_past_the_timeout_exits_4_and_the_deploy_goes_on(capsys, fake_api):
    fake_api.timeline = [record("running", STEPS[:1], current_step="pull_image")]

    code, out, err = run(capsys, "deploy", "portal", "--timeout", "0.2")

    assert code == 4
    assert (
        f"deployment {DEPLOYMENT_ID} was still running after 0.2 s; it goes on: deployctl show {DEPLOYMENT_ID}" in err
    )
    assert "  ✓ capture_state" in out


def test_a_moment_without_answers_while_following_is_waited_out(capsys, fake_api):
    fake_api.timeline = progressing(record())
    fake_api.unavailable_reads = 2

    code, out, err = run(capsys, "deploy", "portal")

    assert code == 0
    assert err.count("no answer, asking again until the timeout") == 1
    assert out.count("✓ cleanup") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history"], "history needs DEPLOY_READ_TOKEN"),
        (["show", DEPLOYMENT_ID], "show needs DEPLOY_READ_TOKEN or WEBHOOK_SECRET"),
        (["deploy", "portal"], "WEBHOOK_SECRET is not set"),
        (["sign", "body.json"], "WEBHOOK_SECRET is not set"),
        (["show", "../etc/passwd"], "'../etc/passwd' is not a deployment id"),
    ],
)
def test_missing_configuration_exits_2(capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.delenv("WEBHOOK_SECRET")
    (tmp_path / "body.json").write_text("{}")

    code, _, err = run(capsys, *argv)

    assert code == 2
    assert message in err


def test_a_url_without_scheme_exits_2(capsys, fake_api):
    code, _, err = run(capsys, "deploy", "portal", "--url", "127.0.0.1:9000")

    assert code == 2
    assert "the API's URL must start with http:// or https://, not '127.0.0.1:9000'" in err
    assert fake_api.seen == []


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["deploy"],
        ["deploy", "portal", "--timeout", "soon"],
        ["history", "--limit", "500"],
        ["history", "--outcome", "exploded"],
        ["sign", "no-such-file"],
        ["sign", "--for", "anything"],
    ],
)
def test_bad_arguments_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: deployctl" in capsys.readouterr().err


def test_settings_come_from_dot_env_in_the_current_directory(capsys, fake_api, monkeypatch, tmp_path):
    for name in ("WEBHOOK_SECRET", "DEPLOY_URL"):
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(f"WEBHOOK_SECRET={SECRET}\nDEPLOY_URL={fake_api.url}/\nDEPLOY_PORT=9000\n")

    assert run(capsys, "deploy", "portal")[0] == 0
    assert is_valid(SECRET.encode(), fake_api.seen[0].body, fake_api.seen[0].headers["X-Hub-Signature-256"])


def test_history_is_a_table_read_with_the_token(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    rolled_back = record("rolled_back", duration_seconds=75.2, new_image="acme/portal:1.4.3")
    rolled_back["id"] = "20251127T024500-99999999"
    fake_api.page = {"items": [rolled_back, record()], "total": 7, "limit": 2, "offset": 3}

    code, out, _ = run(
        capsys, "history", "--service", "portal", "--outcome", "succeeded", "--limit", "2", "--offset", "3"
    )

    assert code == 0
    (read,) = fake_api.requests("GET")
    assert read.path == "/deployments" and read.headers["Authorization"] == f"Bearer {READ_TOKEN}"
    assert read.query == {"service": ["portal"], "outcome": ["succeeded"], "limit": ["2"], "offset": ["3"]}
    assert out.splitlines() == [
        "ID                        ACTION  SERVICE  OUTCOME      STARTED (UTC)        DURATION    NEW IMAGE",
        "20251127T024500-99999999  deploy  portal   rolled_back  2025-11-27 02:39:12  1 min 15 s  acme/portal:1.4.3",
        "20251127T023912-1a2b3c4d  deploy  portal   succeeded    2025-11-27 02:39:12  11.8 s      acme/portal:1.4.2",
        "4-5 of 7, newest first",
    ]
    code, out, _ = run(capsys, "history", "--json")
    assert (code, json.loads(out)) == (0, fake_api.page)


def test_history_with_a_wrong_token_exits_3(capsys, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", "not-the-read-token-0000")

    code, _, err = run(capsys, "history")

    assert code == 3
    assert "refused by the API (401): A valid read token is required" in err


def test_show_reads_with_the_token_or_else_signs_the_id(capsys, fake_api, monkeypatch):
    final = record("rolled_back", error="Container is restarting", logs="fatal: no config")
    fake_api.timeline = [final]
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)

    code, out, _ = run(capsys, "show", DEPLOYMENT_ID)

    assert code == 0, "show answered; the outcome is in what it prints"
    assert fake_api.seen[-1].headers["Authorization"] == f"Bearer {READ_TOKEN}"
    assert "X-Hub-Signature-256" not in fake_api.seen[-1].headers
    assert f"deployment   {DEPLOYMENT_ID}\n" in out and "outcome      rolled_back\n" in out
    assert "commit       abc123\n" in out and "started      2025-11-27 02:39:12 UTC\n" in out
    assert "steps\n  ✓ capture_state" in out and "  error     Container is restarting" in out
    assert "    fatal: no config" in out

    monkeypatch.delenv("DEPLOY_READ_TOKEN")
    code, out, _ = run(capsys, "show", DEPLOYMENT_ID, "--json")
    assert (code, json.loads(out)) == (0, final)
    read = fake_api.seen[-1]
    assert "Authorization" not in read.headers
    assert is_valid(SECRET.encode(), DEPLOYMENT_ID.encode(), read.headers["X-Hub-Signature-256"], "read")


def test_show_an_unknown_id_exits_3(capsys):
    code, _, err = run(capsys, "show", "20251127T000000-00000000")

    assert code == 3
    assert "refused by the API (404): No deployment '20251127T000000-00000000'" in err


def test_sign_prints_the_header_for_the_exact_bytes_of_a_file_or_stdin(capsys, monkeypatch, tmp_path):
    body = b'{"service":"portal"}\n'
    (tmp_path / "body.json").write_bytes(body)

    code, out, _ = run(capsys, "sign", "body.json")

    assert code == 0
    name, value = out.rstrip("\n").split(": ")
    assert name == "X-Hub-Signature-256" and is_valid(SECRET.encode(), body, value)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body.rstrip())))
    code, out, _ = run(capsys, "sign", "--value")
    assert (code, out) == (0, sign(SECRET.encode(), body.rstrip()) + "\n")


@pytest.mark.parametrize("purpose", ["deploy", "rollback", "read", "cancel"])
def test_sign_for_a_purpose_signs_what_the_api_checks_for_it_and_nothing_else(capsys, tmp_path, purpose):
    payload = (
        DEPLOYMENT_ID.encode() if purpose in ("read", "cancel") else b'{"service":"portal","timestamp":1764211152}'
    )
    (tmp_path / "payload").write_bytes(payload)

    code, out, _ = run(capsys, "sign", "payload", "--value", *(["--for", purpose] if purpose != "deploy" else []))

    assert code == 0
    signature = out.rstrip("\n")
    assert signature == sign(SECRET.encode(), payload, purpose)
    for other in {"deploy", "rollback", "read", "cancel"} - {purpose}:
        assert not is_valid(SECRET.encode(), payload, signature, other), f"made for {purpose}, refused for {other}"


def test_sign_help_shows_a_rollback_a_read_and_a_cancel(capsys):
    with pytest.raises(SystemExit):
        main(["sign", "--help"])
    text = capsys.readouterr().out
    assert "--for {deploy,rollback,read,cancel}" in text
    assert "| deployctl sign --for rollback --value" in text
    assert f"printf %s {DEPLOYMENT_ID} | deployctl sign --for read --value" in text
    assert "printf %s 20261201T101500-5e6f7a8b | deployctl sign --for cancel --value" in text


def assert_printed_escaped(text: str) -> None:
    """Nothing of HOSTILE reached the terminal raw, and its escapes are there to read."""
    assert unprintable(text) == [], "no control character but the line break"
    assert HOSTILE_ESCAPED in text


def test_deploy_prints_what_the_record_holds_with_its_control_characters_escaped(capsys, fake_api):
    fake_api.timeline = progressing(hostile_record())

    code, out, err = run(capsys, "deploy", "portal", "acme/portal:1.4.2")

    assert code == 1
    assert_printed_escaped(out + err)
    lines = out.splitlines()
    assert f"  ✓ [{HOSTILE_ESCAPED}web-1] {HOSTILE_ESCAPED}health_check {HOSTILE_ESCAPED}Container is healthy" in lines
    assert f"✗ {HOSTILE_ESCAPED}deploy of {HOSTILE_ESCAPED}portal failed and was rolled back" in out
    assert f"  error     {HOSTILE_ESCAPED}Container is restarting" in lines
    assert lines[-3:] == [f"    {HOSTILE_ESCAPED}log line {number}" for number in (1, 2, 3)], "one line each"


def test_show_prints_every_field_with_its_control_characters_escaped(capsys, fake_api, monkeypatch):
    final = hostile_record()
    fake_api.timeline = [final]
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)

    code, out, err = run(capsys, "show", DEPLOYMENT_ID)

    assert code == 0
    assert_printed_escaped(out + err)
    for name, field in [("deployment", "id"), ("service", "service"), ("requested", "image"), ("commit", "commit")]:
        assert f"{name:<12} {HOSTILE_ESCAPED}{record()[field]}\n" in out
    for name in ("repository", "message", "source"):
        assert f"{name:<12} {HOSTILE_ESCAPED}{record()[name]}\n" in out
    assert f"  found     {HOSTILE_ESCAPED}acme/portal:1.4.1 (" in out and f", {HOSTILE_ESCAPED}running\n" in out
    assert out.count(f"{HOSTILE_ESCAPED}log line") == 3


def test_json_is_the_same_record_without_a_raw_control_character(capsys, fake_api):
    final = hostile_record()
    final["message"] += "\x7f\u2028\u2029\u061c\u200e\u200f\u2066\u2069 déjà vu 中文 👨‍👩‍👧"
    fake_api.timeline = [final]

    code, out, _ = run(capsys, "show", DEPLOYMENT_ID, "--json")

    assert code == 0
    assert unprintable(out) == []
    assert json.loads(out) == final
    assert "déjà vu 中文 👨‍👩‍👧" in out, "what prints as it is stays as it is"
    assert "\\u001b]52;c;" in out and "\\u009b0m" in out and "\\u202eevil" in out and "\\u2028" in out


def test_a_lone_surrogate_is_printed_as_its_escape(capsys, fake_api):
    fake_api.timeline = [record(message="half a pair: \ud83d", error="\udfff")]

    text = run(capsys, "show", DEPLOYMENT_ID)
    as_json = run(capsys, "show", DEPLOYMENT_ID, "--json")

    assert "message      half a pair: \\ud83d\n" in text[1] and "  error     \\udfff\n" in text[1]
    assert json.loads(as_json[1])["message"] == "half a pair: \ud83d"
    assert unprintable(text[1] + as_json[1]) == []


def test_history_cells_are_printed_escaped(capsys, fake_api, monkeypatch):
    monkeypatch.setenv("DEPLOY_READ_TOKEN", READ_TOKEN)
    unknown_outcome = record(HOSTILE, duration_seconds=1.0)
    fake_api.page = {"items": [hostile_record(), unknown_outcome], "total": 2, "limit": 20, "offset": 0}

    code, out, err = run(capsys, "history")
    as_json = run(capsys, "history", "--json")

    assert code == 0
    assert_printed_escaped(out + err)
    _, hostile, unknown, _ = out.splitlines()
    assert hostile.split("  ")[0] == f"{HOSTILE_ESCAPED}{DEPLOYMENT_ID}"
    assert f"  {HOSTILE_ESCAPED}acme/portal:1.4.2" in hostile
    assert f"  {HOSTILE_ESCAPED}  " in unknown, "the outcome, whatever it is"
    assert unprintable(as_json[1]) == [] and json.loads(as_json[1]) == fake_api.page


def test_refusals_and_proxy_answers_are_printed_escaped(capsys, fake_api):
    # Three bodies: the same one twice within a second would be a request the API has already received.
    fake_api.start_answer = (422, {"detail": [f"message: {HOSTILE}", HOSTILE]})
    refused = run(capsys, "deploy", "portal", "--message", "first")
    fake_api.start_answer = (403, {"detail": HOSTILE})
    forbidden = run(capsys, "deploy", "portal", "--message", "second")
    fake_api.start_answer = (502, {"detail": HOSTILE})
    unavailable = run(capsys, "deploy", "portal", "--message", "third")

    assert (refused[0], forbidden[0], unavailable[0]) == (3, 3, 4)
    assert refused[2].splitlines()[1:] == [f"  - message: {HOSTILE_ESCAPED}", f"  - {HOSTILE_ESCAPED}"]
    assert forbidden[2] == f"deployctl: refused by the API (403): {HOSTILE_ESCAPED}\n"
    assert f"answered 502: {HOSTILE_ESCAPED}\n" in unavailable[2]
    for _, out, err in (refused, forbidden, unavailable):
        assert unprintable(out + err) == []


def test_the_spinner_shows_the_running_step_and_its_time_on_a_terminal():
    now = [100.0]
    screen = io.StringIO()
    progress = Progress(screen, tty=True, clock=lambda: now[0])

    progress.update(record("running", STEPS[:1], current_step="pull_image"))
    now[0] += 3.2
    progress.tick()
    progress.update(record("running", STEPS[:2], current_step="compose_up"))
    progress.update(record())
    progress.done()

    assert screen.getvalue() == (
        "  ✓ capture_state Running acme/portal:1.4.1 (803b769d63c8)\n"
        "\r\x1b[K  ⠙ pull_image    0 s"
        "\r\x1b[K  ⠹ pull_image    3 s"
        "\r\x1b[K  ✓ pull_image    Pulled acme/portal:1.4.2: new image 99a472288b48\n"
        "\r\x1b[K  ⠸ compose_up    0 s"
        "\r\x1b[K  ✓ compose_up    Container recreated\n"
        "  ✓ health_check  Container is healthy\n"
        "  ✓ cleanup       Kept 1 previous image\n"
    )


def test_the_spinner_escapes_the_running_step_and_writes_no_other_control_character():
    screen = io.StringIO()
    progress = Progress(screen, tty=True, clock=lambda: 100.0)
    running = progressing(hostile_record())

    for each in running:
        progress.update(each)
    progress.done()

    own = screen.getvalue().replace("\r\x1b[K", "")
    assert unprintable(own) == [], "the spinner's own carriage return and erase-line, nothing else"
    assert f"⠙ {HOSTILE_ESCAPED}capture_state 0 s" in own


def test_sign_refuses_a_deploy_body_that_starts_as_another_purpose_s_message(capsys, monkeypatch):
    """Its signature would also be a rollback's (over the rest): deployctl never makes one."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'rollback:{"service":"portal"}')))
    code, out, err = run(capsys, "sign", "--value")

    assert code == 2
    assert out == ""
    assert "a body for POST /deploy never starts with 'rollback:', 'read:' or 'cancel:'" in err
