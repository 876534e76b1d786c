"""Recovery: the records a stopped process left running, and the services a deploy could not bring back itself.

A record awaits reconciliation (to_inspect = 1) when its deploy could not leave the service on a known image: its
rollback failed (`rollback_failed`: most often the Docker engine did not answer within deploy_engine_wait), or it was
`interrupted` (its timeout, a shutdown, a crash of the API, ansible-playbook killed, a host that became unreachable
before it published its record). Each check (Recovery.attempt; api/reconciler.py repeats them with a backoff) reads
what the service runs on the affected hosts (playbooks/status.yml with deploy_engine_wait=0: an engine that is down
costs one quick run), then brings back the previous image where the deploy had replaced it with one that never passed
its health check, or, after a first deploy, removes the container it half-started (DEPLOY_RECOVER_INTERRUPTED). What it
found and did is kept in the record's own fields (running_*, recovery, recovery_action, recovered_by), beside the
deploy's error. A later deploy or rollback of the service that succeeded on a host supersedes the reconciliation
there: the service then runs an image that passed its health check, and nothing is undone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api import contract, logs
from api.deployer import DeployConflict, Deployer
from api.history import Record
from api.history import now as history_now
from api.models import DeployRequest
from api.runner import RunResult, run_playbook, stop_leftover_run

log = logging.getLogger("deploy")

# The outcomes a host's deploy can end with that leave nothing to reconcile there.
SETTLED = ("succeeded", "rolled_back", "failed", "not_reached")
# Run directories of the status reads and engine checks, under DEPLOY_STATE_DIR/probes/runs, apart from the deploys'.
PROBES_DIR = "probes"
PROBE_KEEP_RUNS = 50
STATUS_READ_TIMEOUT = 120


def probe_run_id(name: str) -> str:
    """A probe's run directory: its start time first, so that the oldest are pruned first, and unique."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{name}-{secrets.token_hex(2)}"


def host_entry(record: Mapping[str, Any], host: str) -> Mapping[str, Any]:
    """A host's part of a record: its entry of `hosts`, else (a record of one host) the record itself."""
    hosts = record.get("hosts") or {}
    entry: Mapping[str, Any] = hosts.get(host) or ({} if len(hosts) > 1 else record)
    return entry


def host_steps(record: Mapping[str, Any], host: str) -> list[dict[str, Any]]:
    return [step for step in record.get("steps") or [] if step.get("host", host) == host]


def restore_reason(record: Mapping[str, Any], status: Mapping[str, Any] | None) -> str | None:
    """Why an interrupted deploy's service should go back to its previous image, or None when it should not.

    Only when the deploy had replaced the previous image (the service runs something else, or nothing) and the
    new one never passed its health check. A first deploy has nothing to go back to (removal_reason).
    """
    if status is None or not record.get("old_image_id"):
        return None
    healthy = any(step.get("step") == "health_check" and step.get("success") for step in record.get("steps", []))
    if healthy or status.get("image_id") == record["old_image_id"]:
        return None
    if not status.get("image_id"):
        return "the service has no container"
    return "the service runs an image that never passed its health check"


def removal_reason(record: Mapping[str, Any], status: Mapping[str, Any] | None) -> str | None:
    """Why the container of a first deploy should be removed, or None.

    Only when the deploy's own capture found no container of the service (a first deploy: nothing to go back to),
    and the service's container now runs the image the deploy pulled, which never passed its health check: it is what
    the deploy half-started. Anything else (the capture never finished, a container of another image) is left alone.
    """
    steps = record.get("steps") or []
    captured = next((step for step in steps if step.get("step") == "capture_state" and step.get("success")), None)
    if status is None or captured is None or captured.get("image_id") or record.get("old_image_id"):
        return None
    new_image_id = record.get("new_image_id")
    if not new_image_id or not status.get("container_id") or status.get("image_id") != new_image_id:
        return None
    if any(step.get("step") == "health_check" and step.get("success") for step in steps):
        return None
    return "the first deploy's container never passed its health check"


def settle_decision(record: Mapping[str, Any], status: Mapping[str, Any] | None) -> Decision | None:
    """What to keep of a blue-green deploy that died while several containers of the service ran (or one stopped
    by its drain was left): the new one once it was proven (its health check and the observation are in the record),
    else the old one. None with one container, or when no running container runs the image to keep."""
    containers = (status or {}).get("containers") or []
    if len(containers) < 2:
        return None
    proven = any(step.get("step") == "observe" and step.get("success") for step in record.get("steps") or [])
    keep = record.get("new_image_id") if proven else record.get("old_image_id")
    if not keep or not any(c.get("image_id") == keep and c.get("state") == "running" for c in containers):
        return None
    which = (
        "the new one passed its health check and the observation: it stays, the old one drains"
        if proven
        else "the new one was never proven: the old one stays, the new one goes"
    )
    return Decision("settle", f"{len(containers)} containers of the service were left; {which}", keep, proven)


@dataclass(frozen=True)
class Decision:
    """What reconciliation does on one host: `rollback` (to the previous image), `remove` (a first deploy's
    container) or `settle` (keep the container of `keep_image_id`, the new one when `keeps_new`), and why."""

    action: str
    reason: str
    keep_image_id: str = ""
    keeps_new: bool = False


def decide(record: Mapping[str, Any], statuses: Mapping[str, Mapping[str, Any]]) -> dict[str, Decision]:
    """The hosts of a record to act on, given what each runs now: restore the previous image, or remove what a first
    deploy half-started. A host the record never reached (another host of the environment) is left alone."""
    hosts = record.get("hosts") or {}
    decisions = {}
    for host, status in statuses.items():
        if hosts and host not in hosts and len(statuses) > 1:
            continue
        images = host_entry(record, host)
        entry = {
            "old_image_id": images.get("old_image_id"),
            "new_image_id": images.get("new_image_id"),
            "steps": host_steps(record, host),
        }
        if settled := settle_decision(entry, status):
            decisions[host] = settled
        elif reason := restore_reason(entry, status):
            decisions[host] = Decision("rollback", reason)
        elif reason := removal_reason(entry, status):
            decisions[host] = Decision("remove", reason)
    return decisions


def restore_hosts(record: Mapping[str, Any], statuses: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """The hosts of an interrupted deploy to restore to their previous image, and why (restore_reason)."""
    return {
        host: decision.reason
        for host, decision in decide(record, statuses or {}).items()
        if decision.action == "rollback"
    }


def affected_hosts(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The hosts of a record that may need reconciling: those the run was for (else those it recorded) whose deploy did
    not end settled (SETTLED): still `running` when the run ended, `rollback_failed`, `interrupted`, or no record at
    all. Empty when the record names no host (older records): every host of its environment is read then."""
    hosts = record.get("hosts") or {}
    targets = list(record.get("targets") or hosts)
    return tuple(host for host in targets if (hosts.get(host) or {}).get("outcome") not in SETTLED)


def superseding(record: Mapping[str, Any], hosts: Iterable[str], later: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The hosts where a later deployment of the service (deploy, rollback or removal, by anyone) succeeded, and the
    first such deployment: the service runs an image that passed its health check there, or a first deploy's
    container is gone, so reconciling the older record would only undo it. A later one that failed (rolled back, say)
    supersedes nothing: it may have restored the very image this record left behind."""
    found: dict[str, str] = {}
    for other in later:
        if other.get("id") == record.get("id") or other.get("outcome") == "running":
            continue
        for host in hosts:
            if host not in found and host_entry(other, host).get("outcome") == "succeeded":
                reached = other.get("targets") or list(other.get("hosts") or {})
                if not reached or host in reached:
                    found[host] = str(other["id"])
    return found


def backoff(checks: int, interval: float, first: float = 2.0) -> float:
    """Seconds until the next check of a record after `checks` checks that left it waiting: `first` after the first,
    twice as long after each further one, at most `interval`."""
    return float(min(interval, first * 2 ** max(0, checks - 1)))


def read_problem(run: RunResult, host: str) -> str:
    """Why the status read has no answer from `host`, in a few words."""
    if host in run.unreachable:
        return f"{host} cannot be reached ({run.unreachable[host]})"
    if host in run.engine_unreachable:
        return f"the Docker engine of {host} does not answer"
    if host in run.failures:
        return f"the status read of {host} failed: {run.failures[host]}"
    return f"the status read of {host} ended {run.status} (exit code {run.rc}) without an answer"


def awaiting_line(problems: Iterable[str], checks: int, when: datetime) -> str:
    """The record's `recovery` while it waits: why, how many checks, the last one's time."""
    what = "; ".join(dict.fromkeys(problems))
    return f"Awaiting reconciliation: {what} ({checks} check{'s' if checks != 1 else ''}, last {when:%H:%M:%S} UTC)"


def running_verdict(status: Mapping[str, Any], images: Mapping[str, Any]) -> str:
    """What a host's service runs, said against the images of the deploy there."""
    image_id = status.get("image_id")
    if not image_id:
        return "no container of the service exists"
    if image_id == images.get("new_image_id"):
        return f"the service runs the new image {status.get('image')}, {status.get('state')}"
    if image_id == images.get("old_image_id"):
        return f"the service runs the previous image {status.get('image')}, {status.get('state')}"
    return f"the service runs {status.get('image')} ({image_id[7:19]}), {status.get('state')}"


@dataclass(frozen=True)
class Acted:
    """What one reconciling action became: `done` (the record may end) and how (a `reconciliation` word), its note
    for recovery_action, its deployment's id."""

    done: bool
    note: str
    deployment_id: str | None = None
    result: str = "failed"


# When actions on several hosts ended differently, the record's `reconciliation` is the first of these among them.
RESULTS_FIRST = ("failed", "restored", "completed", "removed", "superseded")


class Recovery:
    """Recovers for a Deployer: at start (recover), and for each record awaiting reconciliation (attempt).

    `on_engine(host, reachable, detail, host_unreachable)` hears what each status read learnt of a host's engine
    (api/engines.py); `inventory_hosts()` are the hosts of the inventory now: one that left it is no longer waited for.
    """

    def __init__(
        self,
        deployer: Deployer,
        on_engine: Callable[[str, bool, str, bool], None] | None = None,
        inventory_hosts: Callable[[], Iterable[str]] | None = None,
    ):
        self.deployer = deployer
        self.settings = deployer.settings
        self.history = deployer.history
        self.on_engine = on_engine
        self.inventory_hosts = inventory_hosts

    def recover(self) -> list[str]:
        """Mark the records a dead process left `running` as interrupted and awaiting reconciliation; the ids of every
        record awaiting it (those a shutdown stopped, and those still waiting when the API stopped, too).

        A rollback or removal of reconciliation's own (source `recovery`) does not wait itself: the record it acted
        for still does, and is checked again."""
        for record in self.history.unfinished():
            if record["outcome"] != "running":
                continue
            step = record["current_step"] or "its start"
            own = record.get("source") == "recovery"
            self.history.update(
                record["id"],
                outcome="interrupted",
                finished_at=history_now(),
                current_step=None,
                waiting=None,
                waiting_since=None,
                error=f"Interrupted: the deployment API stopped during {step}",
                http_status=None,
                to_inspect=0 if own else 1,
                awaiting_since=None if own else history_now(),
            )
            log.error(
                "⚠️  [%s] %s of %s was interrupted during %s",
                record["id"],
                record["action"],
                record["service"],
                step,
            )
            if own:
                self.deployer.finished(record["id"])
        return [record["id"] for record in self.history.awaiting()]

    async def attempt(self, deployment_id: str) -> bool:
        """One check of a record awaiting reconciliation; True when it awaits no more (reconciled, superseded, or
        nothing to do), False when it must be checked again (a host does not answer, the service is being deployed).

        The on_finished callbacks hear of the record after its first check, whatever it found (metrics count the
        deploy once, and the notification says what runs now or why it waits), and again when a record that had to
        wait is reconciled (its `reconciled_at` set: the notification says what reconciliation did, and after how
        long)."""
        record = self.history.get(deployment_id, internal=True)
        if record is None or not record.get("to_inspect"):
            return True
        if not record["service"]:
            self.history.update(deployment_id, to_inspect=0)
            return True
        logs.bind(deployment_id=deployment_id, service=record["service"])
        checked_before = record.get("reconcile_checks") or 0
        checks = checked_before + 1
        self.history.update(deployment_id, reconcile_checks=checks)
        affected = affected_hosts(record)
        superseded = superseding(record, affected, self.history.started_after(record["service"], record["started_at"]))
        remaining = tuple(host for host in affected if host not in superseded)
        known = set(self.inventory_hosts()) if self.inventory_hosts is not None else set(remaining)
        gone = tuple(host for host in remaining if host not in known)
        remaining = tuple(host for host in remaining if host in known)
        if record.get("targets") or record.get("hosts"):
            if superseded and not remaining:
                note = self._superseded_note(record, superseded)
                return self._end(record, checked_before, "superseded", recovery_action=note)
            if gone and not remaining:
                note = f"Not reconciled: {', '.join(gone)} left the inventory"
                return self._end(record, checked_before, "nothing", recovery_action=note)
            if not remaining:
                return self._end(record, checked_before, "nothing")
        run_dir = self.settings.deploy_state_dir / "runs" / deployment_id
        left = await asyncio.to_thread(stop_leftover_run, run_dir)
        if left:
            log.warning("[%s] stopped %d process(es) left from the interrupted run", deployment_id, left)
        read = await asyncio.to_thread(self._read_status, record, remaining)
        expected = remaining or tuple(read.results) or ("",)
        problems = [read_problem(read, host) for host in expected if host not in read.results]
        if problems:
            line = awaiting_line(problems, checks, datetime.now(UTC))
            self.history.update(deployment_id, recovery=line)
            log.warning("[%s] %s", deployment_id, line)
            return self._wait(deployment_id, checked_before)
        statuses = {host: read.results[host] for host in expected}
        self._record_running_state(deployment_id, record, statuses)
        decisions = decide(record, statuses)
        if not decisions or self.settings.deploy_recover_interrupted == "report":
            return self._end(record, checked_before, "nothing")
        notes = []
        results = []
        acted_by = None
        groups = [
            (
                action,
                keep,
                {host: d.reason for host, d in decisions.items() if (d.action, d.keep_image_id) == (action, keep)},
            )
            for action, keep in dict.fromkeys((d.action, d.keep_image_id) for d in decisions.values())
        ]
        for action, keep, chosen in groups:
            keeps_new = any(d.keeps_new for d in decisions.values() if d.keep_image_id == keep and keep)
            acted = await self._act(record, action, chosen, keep, keeps_new)
            # The action bound its own id; what follows is about the record again.
            logs.bind(deployment_id=deployment_id, service=record["service"])
            if not acted.done:
                line = awaiting_line([acted.note], checks, datetime.now(UTC))
                self.history.update(deployment_id, recovery=line, recovered_by=acted.deployment_id or acted_by)
                log.warning("[%s] %s", deployment_id, line)
                return self._wait(deployment_id, checked_before)
            notes.append(acted.note)
            results.append(acted.result)
            acted_by = acted.deployment_id or acted_by
        result = next(word for word in RESULTS_FIRST if word in results)
        return self._end(record, checked_before, result, recovery_action="; ".join(notes), recovered_by=acted_by)

    def _wait(self, deployment_id: str, checked_before: int) -> bool:
        if checked_before == 0:
            self.deployer.finished(deployment_id)
        return False

    def _end(self, record: Record, checked_before: int, result: str, **fields: Any) -> bool:
        """The record awaits reconciliation no more, `result` says how; the on_finished callbacks hear of it."""
        reconciled_at = history_now() if checked_before else None
        self.history.update(record["id"], to_inspect=0, reconciled_at=reconciled_at, reconciliation=result, **fields)
        if fields.get("recovery_action"):
            log.warning("[%s] %s", record["id"], fields["recovery_action"])
        self.deployer.finished(record["id"])
        return True

    @staticmethod
    def _superseded_note(record: Record, superseded: Mapping[str, str]) -> str:
        by: dict[str, list[str]] = {}
        for host, later_id in superseded.items():
            by.setdefault(later_id, []).append(host)
        where = "; ".join(f"{later_id} succeeded on {', '.join(hosts)}" for later_id, hosts in by.items())
        return f"Not reconciled: a later deployment of {record['service']} superseded it ({where})"

    async def _act(
        self, record: Record, action: str, reasons: dict[str, str], keep_image_id: str = "", keeps_new: bool = False
    ) -> Acted:
        """Roll back (or remove) on the hosts given, under a claim of the service there; a later success found under
        the claim wins (nothing is undone), a deploy of the service running there makes the record wait."""
        deployment_id = record["id"]
        service = record.get("service") or ""
        hosts = tuple(reasons)
        reason = (
            next(iter(reasons.values()))
            if len(reasons) == 1
            else "; ".join(f"{host}: {why}" for host, why in reasons.items())
        )
        try:
            claim = self.deployer.claim(service, hosts)
        except DeployConflict as conflict:
            return Acted(False, f"{conflict} on {', '.join(hosts)}")
        later = superseding(record, hosts, self.history.started_after(service, record["started_at"]))
        if set(later) == set(hosts):
            self.deployer.release(claim)
            return Acted(True, self._superseded_note(record, later), result="superseded")
        what = {
            "rollback": "Automatic rollback",
            "remove": "Removal of what the first deploy half-started",
            "settle": "Settling of the unfinished blue-green deploy",
        }[action]
        request = DeployRequest(
            service=service,
            environment=record.get("environment"),
            message=f"{what} after the deployment {deployment_id} ({record['outcome']}): {reason}",
        )
        doing = {
            "rollback": "rolling back to the previous image",
            "remove": "removing what it half-started",
            "settle": f"keeping the container of {keep_image_id[7:19]}",
        }[action]
        log.warning("⏪ [%s] %s: %s", deployment_id, reason, doing)
        extra = {contract.VAR_KEEP_IMAGE_ID: keep_image_id} if action == "settle" else {}
        started, code, _ = await self.deployer.start(
            request, "recovery", action=action, hosts=hosts, claim=claim, extravars=extra, trigger="recovery"
        )
        result: Mapping[str, Any] = self.history.get(started) or {}
        outcome = result.get("outcome")
        if code == 400:
            # Refused by the playbook's preflight before anything changed (the API's own service): it would be again.
            return Acted(True, f"Not reconciled: {started} was refused: {result.get('error')}", started)
        if action == "settle":
            if outcome == "succeeded":
                result_word = "completed" if keeps_new else "restored"
                return Acted(True, f"{reason[0].upper()}{reason[1:]} (settled by {started})", started, result_word)
            return Acted(False, f"the settling {started} ended {outcome}: {result.get('error')}", started)
        if action == "remove":
            if outcome == "succeeded":
                return Acted(True, f"Removed what the first deploy half-started by {started}", started, "removed")
            return Acted(False, f"the removal {started} ended {outcome}: {result.get('error')}", started)
        restored = all(
            host_entry(result, host).get("new_image_id") == host_entry(record, host).get("old_image_id")
            for host in hosts
        )
        if outcome == "succeeded" and restored:
            return Acted(True, f"Rolled back to the previous image by {started}", started, "restored")
        if outcome in ("rollback_failed", "interrupted"):
            # Its engine went away again, or the API is stopping: the next check tries again.
            return Acted(False, f"the automatic rollback {started} ended {outcome}: {result.get('error')}", started)
        return Acted(True, f"The automatic rollback {started} ended {outcome}: {result.get('error')}", started)

    def _read_status(self, record: Record, hosts: tuple[str, ...]) -> RunResult:
        """What the service runs on `hosts` (every host of the record's environment when empty), without waiting for
        an engine that does not answer; what each read says of its host's engine goes to on_engine."""
        extravars: dict[str, Any] = {contract.VAR_SERVICE: record["service"], contract.VAR_ENGINE_WAIT: 0}
        if record.get("environment"):
            extravars[contract.VAR_ENVIRONMENT] = record["environment"]
        run = run_playbook(
            run_id=probe_run_id(f"{record['id']}-status"),
            playbook=self.deployer.playbook("status"),
            extravars=extravars,
            limit=hosts or None,
            inventory=self.settings.deploy_inventory,
            state_dir=self.settings.deploy_state_dir / PROBES_DIR,
            timeout=min(self.settings.deploy_timeout, STATUS_READ_TIMEOUT),
            keep_runs=PROBE_KEEP_RUNS,
            cancel=self.deployer.shutting_down,
            stats_key=contract.STATUS_KEY,
        )
        if self.on_engine is not None:
            for host in run.results:
                self.on_engine(host, True, "The status read of the service had an answer", False)
            for host, message in run.engine_unreachable.items():
                self.on_engine(host, False, message, False)
            for host, message in run.unreachable.items():
                self.on_engine(host, False, f"Host unreachable: {message}", True)
        return run

    def _record_running_state(
        self, deployment_id: str, record: Record, statuses: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """What the service runs on each host read, in the record."""
        verdicts = {host: running_verdict(status, host_entry(record, host)) for host, status in statuses.items()}
        verdict = (
            next(iter(verdicts.values()))
            if len(verdicts) == 1
            else "; ".join(f"on {host} {text}" for host, text in verdicts.items())
        )
        status = next(iter(statuses.values()))
        self.history.update(
            deployment_id,
            running_image=status.get("image"),
            running_image_id=status.get("image_id"),
            running_state=status.get("state"),
            recovery=f"Now {verdict}",
        )
        log.warning("[%s] %s: now %s", deployment_id, record.get("service"), verdict)
