#!/usr/bin/env bash
# Every molecule scenario of every role (roles/*/molecule/*), side by side: each scenario has a compose project, a
# directory and history tags of its own on the rig's engine, so none waits for another. (molecule's own --workers
# runs scenarios in parallel for collections only.) Each scenario's output is printed whole once all have ended; the
# run fails when one failed, and names it. The rig (tests/rig/up.sh) must be up.
set -uo pipefail
cd "$(dirname "$0")/../.."

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
names=()
pids=()
for config in roles/*/molecule/*/molecule.yml; do
	scenario_dir="$(dirname "$config")"
	role="$(basename "$(dirname "$(dirname "$scenario_dir")")")"
	scenario="$(basename "$scenario_dir")"
	(cd "roles/$role" && exec molecule test --scenario-name "$scenario") >"$logs/$role.$scenario.log" 2>&1 &
	names+=("$role/$scenario")
	pids+=("$!")
done

failed=()
for index in "${!pids[@]}"; do
	wait "${pids[$index]}" || failed+=("${names[$index]}")
done
for index in "${!names[@]}"; do
	echo "== molecule: ${names[$index]}"
	cat "$logs/${names[$index]/\//.}.log"
done
if ((${#failed[@]})); then
	echo "molecule failed: ${failed[*]}" >&2
	exit 1
fi
echo "molecule passed: ${names[*]}"
