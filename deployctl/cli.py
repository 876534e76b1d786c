"""deployctl: the operator's command line for the deployment API."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from enum import IntEnum
from typing import Any, BinaryIO, get_args

from pydantic import ValidationError

from api.models import Outcome
from api.signature import HEADER, PURPOSES, sign
from api.text import printable, printable_json
from deployctl import when
from deployctl.client import DEPLOYMENT_ID, Client, Refused, Unavailable
from deployctl.follow import FollowTimeout, follow
from deployctl.render import Progress, history_table, outcome_lines, record_lines, schedules_lines, shown
from deployctl.settings import DEFAULT_URL, ClientSettings

# The API's own list of outcomes, so the two cannot drift apart.
OUTCOMES = get_args(Outcome)
DEFAULT_TIMEOUT = 900.0


class Exit(IntEnum):
    SUCCEEDED = 0
    DID_NOT_SUCCEED = 1
    USAGE = 2
    REFUSED = 3
    UNREACHABLE = 4


class ConfigurationError(Exception):
    """A secret, token or URL that the command needs is missing or malformed."""


DESCRIPTION = """\
Deploy and roll back the services of the deployment API, follow each deployment step by step
until it has finished, or plan them for a later time, and read the history. deploy, rollback and
cancel sign their request with WEBHOOK_SECRET, and deploy and rollback follow the deployment with a
signature over read: and its id, so the webhook secret is enough for them; history and schedules
need DEPLOY_READ_TOKEN. Both are read from the environment or from .env in the current directory
(the API's own .env works as it is), DEPLOY_URL tells where the API is (default
http://127.0.0.1:9000; --url overrides it). The secret is never printed.

Each deploy and rollback carries the time it was signed ("timestamp"), and the API accepts a
signed request once, within its DEPLOY_REPLAY_WINDOW (300 s by default), so this machine's clock
must be right. During a rotation WEBHOOK_SECRET may list secrets separated by commas, newest
first, as the API's .env does; the first one signs. A service with a secret of its own
(secret_env in the inventory) accepts only that one: set WEBHOOK_SECRET to it for that service.

What the API recorded (messages, errors, step details, container logs) is printed with its
control characters escaped (\\x1b, \\r, \\u202e), so that none of it acts on the terminal."""

EXAMPLES_MAIN = """\
examples:
  deployctl deploy portal ghcr.io/acme/portal:1.4.2      # signs, starts, follows step by step
  deployctl rollback portal                              # back to the previous kept image
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --at "2026-12-08 03:00"   # planned, local time
  deployctl schedules                                    # the recurring schedules and planned deploys
  deployctl cancel 20261201T101500-5e6f7a8b              # one of them, before it starts
  deployctl history --service portal
  deployctl show 20251127T023912-1a2b3c4d
  deployctl <command> --help                             # each command's options and examples"""

EXIT_CODES = """\
exit codes:
  0  succeeded (history, schedules, show, sign: answered; deploy or rollback --at: planned;
     cancel: cancelled)
  1  the deploy or rollback ran and did not succeed: failed, rolled_back, rollback_failed, interrupted
  2  usage or configuration error: bad arguments, a missing WEBHOOK_SECRET or DEPLOY_READ_TOKEN
  3  refused by the API (4xx): signature, read token, service or image not allowed, already running,
     validation, a stale or replayed request, too many requests (429), a time in the past or beyond
     the API's horizon, a deploy outside the service's deploy window (423: --queue plans it for the
     window's opening), cancelling a deployment that is not planned (409) or unknown (404); the API's
     detail is printed, and after a 429 the seconds to wait
  4  the API is unreachable, or the deployment was still running when --timeout ran out, or an API
     that cannot plan deploys started one given --at at once"""

EXAMPLES = {
    "deploy": """\
examples:
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --commit "$(git rev-parse HEAD)" --message "Update homepage"
  deployctl deploy hello-world                 # the image its compose file names, pulled again
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --no-follow   # print the deployment id and leave
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --at 2026-12-08T02:00:00Z
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --at "2026-12-08 03:00"   # this machine's time zone
  deployctl deploy portal ghcr.io/acme/portal:1.4.2 --queue   # outside its deploy window: at its opening""",
    "rollback": """\
examples:
  deployctl rollback portal                    # back to the previous kept image
  deployctl rollback portal ghcr.io/acme/portal:1.4.1 --message "1.4.2 breaks logins"
  deployctl rollback portal --json | jq -r .outcome
  deployctl rollback portal ghcr.io/acme/portal:1.4.1 --at 2026-12-08T03:00:00+01:00""",
    "history": """\
examples:
  deployctl history
  deployctl history --service portal --outcome rolled_back --limit 5
  deployctl history --json | jq -r '.items[0].id'""",
    "schedules": """\
examples:
  deployctl schedules
  deployctl schedules --service portal
  deployctl schedules --json | jq -r '.items[].next_run'   # the recurring schedules' next runs (UTC)
  deployctl schedules --json | jq -r '.planned[].id'       # the planned deploys' ids""",
    "cancel": """\
examples:
  deployctl cancel 20261201T101500-5e6f7a8b
  deployctl cancel 20261201T101500-5e6f7a8b --json | jq -r .outcome""",
    "show": """\
examples:
  deployctl show 20251127T023912-1a2b3c4d
  deployctl show 20251127T023912-1a2b3c4d --json | jq .steps""",
    "sign": """\
examples:
  deployctl sign body.json                     # for POST /deploy
  printf '{"service":"portal","timestamp":%d}' "$(date +%s)" | deployctl sign --value
  printf '{"service":"portal","timestamp":%d}' "$(date +%s)" | deployctl sign --for rollback --value
  printf %s 20251127T023912-1a2b3c4d | deployctl sign --for read --value   # GET /deployments/ID
  printf %s 20261201T101500-5e6f7a8b | deployctl sign --for cancel --value # DELETE /deployments/ID
  (the signature covers the exact bytes: echo adds a newline, printf without \\n does not;
  the API accepts a signed body once, and only within DEPLOY_REPLAY_WINDOW of its timestamp;
  a signature is valid only for what it was made for: a body signed for /deploy is refused
  by /rollback)""",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = ClientSettings()
    except ValidationError as error:
        return _fail(Exit.USAGE, f"configuration: {error}")
    try:
        return int(args.command(args, settings))
    except ConfigurationError as error:
        return _fail(Exit.USAGE, printable(str(error)))
    except Refused as refusal:
        return _fail(Exit.REFUSED, _refusal_text(refusal))
    except Unavailable as error:
        return _fail(Exit.UNREACHABLE, f"the API did not answer: {printable(str(error))}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deployctl",
        description=DESCRIPTION,
        epilog=f"{EXAMPLES_MAIN}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # --url is accepted before and after the command; SUPPRESS keeps a command's parser from resetting it.
    parser.add_argument("--url", default=None, help=f"the API's base URL (default: DEPLOY_URL, else {DEFAULT_URL})")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="the API's base URL (default: DEPLOY_URL)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=f"{EXAMPLES[name]}\n\n{EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )

    for action, help_text in (
        ("deploy", "deploy IMAGE (or the compose file's image) to SERVICE and follow it until it has finished"),
        ("rollback", "roll SERVICE back to its previous kept image (or to IMAGE) and follow it"),
    ):
        sub = command(action, help_text)
        sub.add_argument("service", metavar="SERVICE", help="a service of the inventory's deploy_services")
        sub.add_argument("image", metavar="IMAGE", nargs="?", help="image reference, e.g. ghcr.io/acme/portal:1.4.2")
        sub.add_argument(
            "--environment", "-e", help="the inventory group to deploy to, e.g. staging (default: the API's)"
        )
        sub.add_argument("--repository", help="recorded with the deployment, e.g. acme/portal")
        sub.add_argument("--commit", help="recorded with the deployment, e.g. the commit SHA")
        sub.add_argument("--message", help="recorded with the deployment, e.g. the commit message")
        sub.add_argument(
            "--at",
            type=_planned_time,
            metavar="TIME",
            help="plan it for TIME instead of starting it now: RFC 3339 with its offset (2026-12-08T02:00:00Z, "
            "2026-12-08T03:00:00+01:00), or a date-time without one (2026-12-08 03:00), in this machine's time zone; "
            "prints the planned deployment's id and does not follow it",
        )
        if action == "deploy":
            sub.add_argument(
                "--queue",
                action="store_true",
                help="outside the service's deploy window, plan it for the window's next opening instead of being "
                "refused (rollbacks are never held to a window)",
            )
        sub.add_argument(
            "--no-follow", dest="follow", action="store_false", help="print the deployment id and return at once"
        )
        sub.add_argument(
            "--timeout",
            type=_positive_seconds,
            default=DEFAULT_TIMEOUT,
            metavar="S",
            help="give up following after S seconds, exit 4 (default: %(default).0f)",
        )
        sub.add_argument("--json", action="store_true", help="print the final record as JSON, nothing else")
        # A rollback has no --queue: no window holds it back.
        sub.set_defaults(command=run_deployment, action=action, queue=False)

    history = command("history", "list deployments, newest first (needs DEPLOY_READ_TOKEN)")
    history.add_argument("--service", help="only this service")
    history.add_argument("--environment", help="only this environment (inventory group)")
    history.add_argument("--outcome", choices=OUTCOMES, metavar="O", help=f"only this outcome: {', '.join(OUTCOMES)}")
    history.add_argument(
        "--limit", type=_bounded(1, 100), default=20, metavar="N", help="at most N (1-100, default 20)"
    )
    history.add_argument("--offset", type=_bounded(0, None), default=0, metavar="K", help="skip the newest K")
    history.add_argument("--json", action="store_true", help="print the API's page as JSON")
    history.set_defaults(command=run_history)

    schedules = command(
        "schedules",
        "list the recurring schedules, then the planned deploys and rollbacks, soonest first (needs DEPLOY_READ_TOKEN)",
    )
    schedules.add_argument("--service", help="only this service")
    schedules.add_argument(
        "--json", action="store_true", help="print the API's answer as JSON (with --service, only that service's)"
    )
    schedules.set_defaults(command=run_schedules)

    cancel = command("cancel", "cancel a planned deploy or rollback before it starts (signed with WEBHOOK_SECRET)")
    cancel.add_argument(
        "deployment_id", metavar="ID", help="a planned deployment's id, as deploy --at and schedules print them"
    )
    cancel.add_argument("--json", action="store_true", help="print the cancelled record as JSON")
    cancel.set_defaults(command=run_cancel)

    show = command(
        "show", "show one deployment: steps, images, error and logs (read token, else signed over read: and the id)"
    )
    show.add_argument("deployment_id", metavar="ID", help="a deployment id, as deploy and history print them")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(command=run_show)

    sign_command = command("sign", "print the X-Hub-Signature-256 header for a body (FILE, or standard input)")
    sign_command.add_argument(
        "body",
        metavar="FILE",
        nargs="?",
        type=argparse.FileType("rb"),
        help="the exact body to sign, or for read the deployment id (- for stdin)",
    )
    sign_command.add_argument(
        "--for",
        dest="purpose",
        choices=PURPOSES,
        default="deploy",
        help="what the signature is for: deploy (a body for POST /deploy), rollback (a body for POST /rollback), "
        "read (a deployment id, for GET /deployments/ID), cancel (a deployment id, for DELETE /deployments/ID); "
        "a signature made for one is refused for the others "
        "(default: %(default)s)",
    )
    sign_command.add_argument("--value", action="store_true", help="print only sha256=<hex>, for scripts")
    sign_command.set_defaults(command=run_sign)
    return parser


def run_deployment(args: argparse.Namespace, settings: ClientSettings) -> int:
    fields: dict[str, str | bool | None] = {
        "service": args.service,
        "image": args.image,
        "environment": args.environment,
        "repository": args.repository,
        "commit": args.commit,
        "message": args.message,
        "queue": args.queue,
    }
    if args.at is not None:
        return plan_deployment(args, settings, {**fields, "at": when.sent(args.at)})
    with _client(args, settings, secret=True) as client:
        accepted = client.start(args.action, fields)
        deployment_id = accepted["deployment_id"]
        if accepted.get("status") == "scheduled":
            # Queued: the service's deploy window is closed, and the API planned it for the window's opening.
            return print_planned(args, accepted, "queued to its deploy window")
        if not args.follow:
            if args.json:
                _print_json(accepted)
            else:
                print(f"{args.action} of {printable(args.service)} started: deployment {deployment_id}")
                print(f"follow it with: deployctl show {deployment_id}")
            return Exit.SUCCEEDED
        progress = None
        if not args.json:
            print(f"{args.action} of {printable(args.service)} started: deployment {deployment_id}", flush=True)
            progress = Progress(sys.stdout, tty=sys.stdout.isatty())
        try:
            record = follow(client, deployment_id, timeout=args.timeout, progress=progress)
        except FollowTimeout:
            return _fail(
                Exit.UNREACHABLE,
                f"deployment {deployment_id} was still running after {args.timeout:g} s; "
                f"it goes on: deployctl show {deployment_id}",
            )
        except KeyboardInterrupt:
            print(f"\nstopped following; deployment {deployment_id} goes on: deployctl show {deployment_id}")
            return 128 + 2  # as a shell reports SIGINT
        finally:
            if progress is not None:
                progress.done()
    if args.json:
        _print_json(record)
    else:
        print("\n".join(outcome_lines(record)))
    return exit_for(record)


def plan_deployment(args: argparse.Namespace, settings: ClientSettings, fields: dict[str, str | bool | None]) -> Exit:
    """POST the deploy or rollback with `at`: the API keeps it until then, so there is nothing to follow yet."""
    with _client(args, settings, secret=True) as client:
        accepted = client.start(args.action, fields)
    deployment_id = printable(str(accepted["deployment_id"]))
    if accepted.get("status") != "scheduled":
        # An API from before planned deploys ignores `at`: the deploy it started cannot be taken back from here.
        return _fail(
            Exit.UNREACHABLE,
            f"the API started {args.action} {deployment_id} now instead of planning it: it does not know `at` "
            f"(a version from before planned deploys); see it with: deployctl show {deployment_id}",
        )
    return print_planned(args, accepted)


def print_planned(args: argparse.Namespace, accepted: dict[str, Any], why: str = "") -> Exit:
    """A deploy the API planned (202, status `scheduled`): its id and when it runs, here and in UTC."""
    if args.json:
        _print_json(accepted)
    else:
        planned = when.utc_and_local(accepted.get("at"))
        because = f" ({why})" if why else ""
        deployment_id = printable(str(accepted["deployment_id"]))
        print(f"Scheduled {deployment_id}: {args.action} {printable(args.service)} at {planned}{because}")
    return Exit.SUCCEEDED


def run_history(args: argparse.Namespace, settings: ClientSettings) -> Exit:
    if settings.deploy_read_token is None:
        raise ConfigurationError("history needs DEPLOY_READ_TOKEN (the API's own, from the environment or .env)")
    with _client(args, settings) as client:
        page = client.deployments(
            service=args.service,
            outcome=args.outcome,
            environment=args.environment,
            limit=args.limit,
            offset=args.offset,
        )
    if args.json:
        _print_json(page)
    else:
        print("\n".join(history_table(page)))
    return Exit.SUCCEEDED


def run_schedules(args: argparse.Namespace, settings: ClientSettings) -> Exit:
    if settings.deploy_read_token is None:
        raise ConfigurationError("schedules needs DEPLOY_READ_TOKEN (the API's own, from the environment or .env)")
    with _client(args, settings) as client:
        answer = client.schedules()
    if args.service is not None:
        # GET /schedules has no filter: it answers every service's, which are few.
        answer = {
            **answer,
            "items": [item for item in answer.get("items", []) if item.get("service") == args.service],
            "planned": [record for record in answer.get("planned", []) if record.get("service") == args.service],
        }
    if args.json:
        _print_json(answer)
    else:
        print("\n".join(schedules_lines(answer)))
    return Exit.SUCCEEDED


def run_cancel(args: argparse.Namespace, settings: ClientSettings) -> Exit:
    _check_deployment_id(args.deployment_id)
    with _client(args, settings, secret=True) as client:
        record = client.cancel(args.deployment_id)
    if args.json:
        _print_json(record)
    else:
        action = shown(record, "action", "deploy")
        planned = when.utc_and_local(record.get("planned_at"))
        print(f"Cancelled {args.deployment_id}: {action} {shown(record, 'service', '?')} planned for {planned}")
    return Exit.SUCCEEDED


def run_show(args: argparse.Namespace, settings: ClientSettings) -> Exit:
    _check_deployment_id(args.deployment_id)
    if settings.deploy_read_token is None and settings.webhook_secret is None:
        raise ConfigurationError("show needs DEPLOY_READ_TOKEN or WEBHOOK_SECRET (from the environment or .env)")
    with _client(args, settings, secret=settings.deploy_read_token is None) as client:
        record = client.deployment(args.deployment_id)
    if args.json:
        _print_json(record)
    else:
        print("\n".join(record_lines(record)))
    return Exit.SUCCEEDED


def run_sign(args: argparse.Namespace, settings: ClientSettings) -> Exit:
    secret = _secret(settings)
    source: BinaryIO
    if args.body is None:
        if sys.stdin.isatty():
            raise ConfigurationError("sign reads the body from FILE or from a pipe: deployctl sign body.json")
        source = sys.stdin.buffer
    else:
        source = args.body
    with source:
        try:
            signature = sign(secret, source.read(), args.purpose)
        except ValueError as error:
            raise ConfigurationError(f"sign: {error}") from None
    print(signature if args.value else f"{HEADER}: {signature}")
    return Exit.SUCCEEDED


def exit_for(record: dict[str, Any]) -> Exit:
    outcome = record.get("outcome")
    if outcome == "succeeded":
        return Exit.SUCCEEDED
    if outcome == "rejected":
        return Exit.REFUSED
    return Exit.DID_NOT_SUCCEED


def _client(args: argparse.Namespace, settings: ClientSettings, *, secret: bool = False) -> Client:
    url = args.url or settings.deploy_url
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"the API's URL must start with http:// or https://, not '{url}'")
    token = settings.deploy_read_token
    return Client(
        url,
        secret=_secret(settings) if secret else None,
        read_token=token.get_secret_value() if token else None,
    )


def _check_deployment_id(text: str) -> None:
    """What goes into a URL's path is an id, nothing else."""
    if not DEPLOYMENT_ID.fullmatch(text):
        raise ConfigurationError(f"'{text}' is not a deployment id")


def _secret(settings: ClientSettings) -> bytes:
    secret = settings.signing_secret
    if secret is None:
        raise ConfigurationError("WEBHOOK_SECRET is not set (the API's own, from the environment or .env)")
    return secret


def _refusal_text(refusal: Refused) -> str:
    """The API's detail, each item on a line of its own, and what to do about it where the detail does not say."""
    detail = refusal.detail
    if isinstance(detail, list):
        text = "".join(f"\n  - {printable(str(item))}" for item in detail)
    else:
        text = f" {printable(str(detail))}"
    hint = None
    if refusal.status == 401:
        hint = "DEPLOY_READ_TOKEN (or WEBHOOK_SECRET, for one deployment) is not the API's"
    elif refusal.status == 403 and detail == "Invalid signature":
        # Other 403s (a stale or replayed request, a secret not allowed for the service) say what is wrong.
        hint = "WEBHOOK_SECRET here is not the API's"
    elif refusal.status == 403 and str(detail).startswith("Invalid signature: it was made for"):
        # deployctl signs each request for its own purpose: the API expects another, so the two differ in version.
        hint = (
            "WEBHOOK_SECRET is the API's, but the signature was made for another request: this deployctl and the "
            "API sign differently; use the deployctl of the API's version"
        )
    elif refusal.status == 429:
        wait = f"in {refusal.retry_after} s" if refusal.retry_after is not None else "later"
        hint = f"too many requests: try again {wait}"
    elif refusal.status == 423:
        hint = "outside the service's deploy window: deploy --queue plans it for the window's opening"
    return f"refused by the API ({refusal.status}):{text}" + (f"\n  ({hint})" if hint else "")


def _fail(code: Exit, message: str) -> Exit:
    print(f"deployctl: {message}", file=sys.stderr)
    return code


def _print_json(document: Any) -> None:
    print(printable_json(document))


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _planned_time(text: str) -> datetime:
    try:
        return when.parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _bounded(low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: '{text}'") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} or more" + (f" and {high} or less" if high else ""))
        return value

    return parse
