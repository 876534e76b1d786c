#!/usr/bin/env bash
# The multi-host part of the test rig: three extra Docker engines h1, h2, h3 (each its own
# dockerd, data root, exec root, socket, bridge, address pool and cgroup parent), an sshd on
# loopback with key auth, and $state/hosts.json describing them for the tests
# (tests/support/hosts.py reads it). The main engine is not touched. Engine h3's data root is a
# small filesystem of its own, so that a test can fill it.
#
#   hosts.sh                  bring up what does not answer; a second call only checks
#   hosts.sh verify           the same, then the smoke check on every engine and an Ansible run over SSH
#   hosts.sh down             stop what this script started (engines, sshd), remove bridges and rules
#   hosts.sh stop-engine hN   stop engine hN's dockerd as `systemctl stop docker` does; all else stays
#   hosts.sh start-engine hN  start it again as `hosts.sh` would, without the smoke check
#   hosts.sh stop-sshd        the sshd and every session of it gone at once, as a host off the network
#   hosts.sh start-sshd       the sshd started again as `hosts.sh` would
#
# The stop and start modes are for the fault tests (tests/support/hosts.py: engine_stopped,
# ssh_stopped); they leave hosts.json alone.
#
# Liveness is checked, never files: after a reboot or after the session's processes died, the
# state dir still holds pid files and sockets; whatever does not answer is started again.
# An engine started by this call gets the smoke check: a pull from the loopback registry, a
# compose project whose HEALTHCHECK containers turn healthy, its two containers talk to each
# other, its network comes from the engine's pool, it goes down and leaves nothing behind.
# sshd is checked by logging in with the rig's key.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/rig/lib.sh
. "$here/lib.sh"
ssh_port="${DEPLOY_TEST_SSH_PORT:-2222}"
engines=(1 2 3)
mode="${1:-up}"
ssh_dir="$state/ssh"

# --- processes: only ours, found by pid file and checked by their command line -------------

cmdline_has() { # cmdline_has PID TEXT: PID runs and its command line contains TEXT
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

pid_in() { cat "$1" 2>/dev/null || true; }

wait_gone() { # wait_gone PID: until PID has exited (a zombie counts: it is not ours to reap)
  while [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; do sleep 0.1; done
}

stop_pid() { # stop_pid PID SECONDS: TERM, wait, then KILL
  local pid="$1" deadline=$((SECONDS + $2))
  kill -TERM "$pid" 2>/dev/null || return 0
  while [ -d "/proc/$pid" ] && ((SECONDS < deadline)); do sleep 0.1; done
  if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait_gone "$pid"
}

# --- engines ------------------------------------------------------------------------------

# Engine h3's data root is a tmpfs of 512 MiB, so that a test can fill it (ENOSPC in the middle of
# a pull). tmpfs rather than an ext4 image on a loop device: it needs neither a loop device (many
# containers and CI runners have none) nor mkfs, leaves no image file behind, and `size=` gives
# ENOSPC as a full disk does; overlay2 runs on it (d_type, xattrs). What that costs: its content
# lives in memory (at most 512 MiB) and is gone after `down` or a reboot, so h3 pulls its images
# again; its ID stays, kept in key.json outside the data root.
declare -A data_root_sizes=([3]=512m)

engine_vars() { # sets the names of engine hN
  n="$1"; name="h$n"; dir="$state/engines/$name"; sock="/run/deploytest-$name.sock"
  exec_root="/run/deploytest-$name"; pidfile="$dir/dockerd.pid"; bridge="dt-br$n"
  bridge_addr="10.231.$n.1/24"; bridge_net="10.231.$n.0/24"; pool="10.$((231 + n)).0.0/16"
  cgroup="/deploytest-$name"; data_size="${data_root_sizes[$n]:-}"
}

engine_id() { timeout 10 docker -H "unix://$1" info -f '{{.ID}}' 2>/dev/null; }
declare -A engine_ids=()
engine_answers() { engine_ids[$1]="$(engine_id "$1")" && [ -n "${engine_ids[$1]}" ]; }

write_file() { # write_file PATH: stdin to PATH, replaced atomically and only when it changed
  cat >"$1.new"
  if cmp -s "$1.new" "$1"; then rm -f "$1.new"; else mv "$1.new" "$1"; fi
}

ensure_bridge() {
  ip link show dev "$bridge" >/dev/null 2>&1 || ip link add name "$bridge" type bridge
  ip -4 -o addr show dev "$bridge" | grep -qF " $bridge_addr " || ip addr add "$bridge_addr" dev "$bridge"
  ip link set dev "$bridge" up
}

# The engines run with --iptables=false so that they leave the main engine's chains alone. The
# main engine sets the FORWARD policy to DROP and bridged traffic goes through iptables
# (br_netfilter), so traffic inside an engine's own networks is let through in DOCKER-USER,
# the chain meant for rules like these: source and destination both in the engine's ranges.
forward_rules() { # forward_rules -I|-D: insert once, delete all
  local chain=DOCKER-USER net
  iptables -w -n -L DOCKER-USER >/dev/null 2>&1 || chain=FORWARD
  [ "$1" != -I ] || [ "$chain" = DOCKER-USER ] || iptables -w -S FORWARD | grep -q '^-P FORWARD DROP' || return 0
  for net in "$bridge_net" "$pool"; do
    if [ "$1" = -I ]; then
      iptables -w -C "$chain" -s "$net" -d "$net" -m comment --comment "deploytest-$name" -j ACCEPT 2>/dev/null ||
        iptables -w -I "$chain" -s "$net" -d "$net" -m comment --comment "deploytest-$name" -j ACCEPT
    else
      while iptables -w -D "$chain" -s "$net" -d "$net" -m comment --comment "deploytest-$name" -j ACCEPT 2>/dev/null; do :; done
    fi
  done
}

engine_shims_alive() { # a containerd-shim of this engine still runs (its containers are alive)
  pgrep -f -- "-address $exec_root/containerd/containerd.sock" >/dev/null
}

clear_stale_engine() { # makes way for a fresh dockerd of engine hN
  local pid
  pid="$(pid_in "$pidfile")"
  if cmdline_has "$pid" "--exec-root $exec_root "; then
    log "$name: dockerd $pid does not answer, stopping it"; stop_pid "$pid" 20
  fi
  rm -f "$pidfile"
  # dockerd adopts a containerd whose pid is in this file: it must be ours and alive.
  pid="$(pid_in "$exec_root/containerd/containerd.pid")"
  cmdline_has "$pid" "$exec_root/containerd/" || rm -f "$exec_root/containerd/containerd.pid"
  # Containers whose engine and shims are gone (the session's processes were killed) still run
  # in the engine's cgroup; a new engine would not know them. Stop them by pid.
  if ! cmdline_has "$pid" "$exec_root/containerd/" && ! engine_shims_alive; then
    local procs
    for procs in /sys/fs/cgroup/pids"$cgroup"/*/cgroup.procs /sys/fs/cgroup"$cgroup"/*/cgroup.procs; do
      [ -r "$procs" ] || continue
      while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$procs"
    done
  fi
}

# --- data roots: h3's own filesystem ------------------------------------------------------

data_root_is_mount() { # engine hN's data dir is its own tmpfs, not the disk it lies on (nor a bind mount of it)
  [ "$(findmnt -rn -M "$dir/data" -o SOURCE,FSTYPE | tail -1)" = "deploytest-$name tmpfs" ]
}

unmount_data_root() { # every mount on or under engine hN's data dir, innermost first
  # A dockerd that was killed leaves its data root mounted (dockerd makes it a shared mount) and the
  # overlays of its containers; the next one reuses them, but `make clean` could not remove them.
  findmnt -rn -o TARGET | awk -v d="$dir/data" '$0 == d || index($0, d "/") == 1' | sort -r |
    while read -r target; do umount "$target" 2>/dev/null || umount -l "$target"; done
}

ensure_data_root() { # engine hN's data dir, its own filesystem where it has one; no dockerd of hN runs
  mkdir -p "$dir/data"
  if [ -z "$data_size" ] || data_root_is_mount; then return 0; fi
  unmount_data_root
  # What an older rig kept on the disk there would only be hidden under the new mount.
  rm -rf --one-file-system "$dir/data" && mkdir "$dir/data"
  log "$name: data root $dir/data on a tmpfs of its own (size=$data_size)"
  mount -t tmpfs -o "size=$data_size,mode=0711" "deploytest-$name" "$dir/data"
}

# --- engines, continued -------------------------------------------------------------------

start_engine() {
  # Its own trust key gives each engine its own ID (`docker info -f {{.ID}}`); its own config
  # file keeps it from reading /etc/docker/daemon.json.
  printf '{"deprecated-key-path": "%s"}\n' "$dir/key.json" >"$dir/daemon.json"
  setsid dockerd \
    --config-file "$dir/daemon.json" \
    --data-root "$dir/data" \
    --exec-root "$exec_root" \
    --pidfile "$pidfile" \
    -H "unix://$sock" \
    --bridge "$bridge" \
    --iptables=false --ip6tables=false --ip-masq=false \
    --default-address-pool "base=$pool,size=24" \
    --cgroup-parent "$cgroup" \
    >>"$dir/dockerd.log" 2>&1 </dev/null 9>&- &
}

smoke_engine() { # pull, HEALTHCHECK, compose up/down and traffic inside the project's network
  local project="dt-rigcheck-$name" work="$state/engines/$name/rigcheck" subnet
  local -a d=(docker -H "unix://$sock")
  "${d[@]}" pull -q "$registry/deploytest/healthy:v1" >/dev/null
  mkdir -p "$work"
  cat >"$work/docker-compose.yml" <<YAML
name: $project
services:
  web: &web
    image: $registry/deploytest/healthy:v1
    init: true
    healthcheck: {interval: 200ms, timeout: 2s, retries: 3}
  peer: *web
YAML
  (
    cd "$work"
    export DOCKER_HOST="unix://$sock"
    trap 'docker compose down -t 1 --rmi all >/dev/null 2>&1 || true' EXIT
    docker compose up -d --quiet-pull --wait --wait-timeout 30 >/dev/null 2>&1 ||
      { docker compose ps -a; echo "$name: compose project did not turn healthy"; exit 1; }
    docker compose exec -T peer wget -q -O- http://web:8080/version | grep -qx 'healthy-v1' ||
      { echo "$name: peer cannot reach web inside the project's network"; exit 1; }
    subnet="$(docker network inspect "${project}_default" -f '{{(index .IPAM.Config 0).Subnet}}')"
    [[ "$subnet" == "10.$((231 + n))."* ]] || { echo "$name: network $subnet is not from $pool"; exit 1; }
  )
  rm -rf "$work"
  [ -z "$("${d[@]}" ps -aq --filter "label=com.docker.compose.project=$project")" ] ||
    { echo "$name: containers left behind"; return 1; }
}

stop_engine() { # TERMs engine hN's dockerd and waits until it has exited, as `systemctl stop docker` does
  local pid
  pid="$(pid_in "$pidfile")"
  if ! cmdline_has "$pid" "--exec-root $exec_root "; then
    ! engine_answers "$sock" || { log "$name answers on $sock, but not from a dockerd this script started"; exit 1; }
    return 0
  fi
  log "$name: stopping dockerd $pid"
  # dockerd gives each container its stop timeout (10 s by default) and stops its containerd;
  # systemd would KILL after 90 s.
  stop_pid "$pid" 60
}

# dockerd 20.10, started with --default-address-pool over a data root that holds its default network
# (any restart of an engine), removes the interface named docker0 (removeDefaultBridgeInterface):
# the bridge of the rig's own engine, not its own. It is put back as it was, so that the rig's engine
# keeps its default network (the RUN steps of docker build use it).
main_bridge=()
remember_main_bridge() { mapfile -t main_bridge < <(ip -o -4 addr show dev docker0 2>/dev/null | awk '{print $4}'); }
restore_main_bridge() {
  local addr
  [ "${#main_bridge[@]}" -gt 0 ] && [ "$(id -u)" = 0 ] || return 0
  ! ip link show dev docker0 >/dev/null 2>&1 || return 0
  log "putting back docker0, the rig's own engine's bridge, which starting an extra engine removed"
  ip link add name docker0 type bridge
  for addr in "${main_bridge[@]}"; do ip addr add "$addr" dev docker0; done
  ip link set dev docker0 up
}

ensure_engines() { # sets started_engines
  local n name dir sock exec_root pidfile bridge bridge_addr bridge_net pool cgroup data_size
  started_engines=()
  remember_main_bridge
  for n in "${engines[@]}"; do
    engine_vars "$n"
    if [ "$(id -u)" = 0 ]; then ensure_bridge; forward_rules -I; fi
    if engine_answers "$sock"; then
      if [ -z "$data_size" ] || data_root_is_mount; then continue; fi
      [ "$(id -u)" = 0 ] || { log "$name: its data root is not its own tmpfs, and moving it there needs root"; exit 1; }
      log "$name: its data root is not its own tmpfs (an older rig): restarting it on a new one, empty"
      stop_engine
    fi
    [ "$(id -u)" = 0 ] || { log "$name does not answer on $sock, and starting it needs root"; exit 1; }
    command -v dockerd >/dev/null || { log "dockerd is missing: run tests/rig/up.sh"; exit 1; }
    clear_stale_engine
    ensure_data_root
    log "$name: starting dockerd on $sock (bridge $bridge $bridge_addr, pool $pool)"
    start_engine
    started_engines+=("$n")
  done
  for n in "${started_engines[@]}"; do
    engine_vars "$n"
    wait_for 60 engine_answers "$sock" || { tail -20 "$dir/dockerd.log"; log "$name: dockerd did not start"; exit 1; }
  done
  restore_main_bridge
}

smoke_pids=()
start_smoke() { # start_smoke N...: one smoke check per engine in the background, logs in rigcheck.log
  local n name dir sock exec_root pidfile bridge bridge_addr bridge_net pool cgroup data_size
  for n in "$@"; do
    engine_vars "$n"
    smoke_engine >"$dir/rigcheck.log" 2>&1 &
    smoke_pids+=("$n:$!")
  done
}

wait_smoke() {
  local job n name dir sock exec_root pidfile bridge bridge_addr bridge_net pool cgroup data_size failed=0
  for job in "${smoke_pids[@]}"; do
    engine_vars "${job%%:*}"
    if ! wait "${job#*:}"; then cat "$dir/rigcheck.log"; log "$name: smoke check failed"; failed=1; fi
  done
  smoke_pids=()
  return "$failed"
}

# --- sshd on loopback ---------------------------------------------------------------------

ssh_opts=(-F /dev/null -i "$ssh_dir/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
  -o UserKnownHostsFile="$ssh_dir/known_hosts" -o StrictHostKeyChecking=yes -o ConnectTimeout=5)
ssh_answers() { ssh "${ssh_opts[@]}" -p "$ssh_port" root@127.0.0.1 true </dev/null; }

ensure_sshd() {
  command -v ssh >/dev/null || { log "installing openssh-client"; apt_install openssh-client; }
  [ -x /usr/sbin/sshd ] || { log "installing openssh-server"; apt_install openssh-server; }
  mkdir -p "$ssh_dir" && chmod 0700 "$ssh_dir"
  [ -f "$ssh_dir/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C deploytest-rig-host -f "$ssh_dir/ssh_host_ed25519_key"
  [ -f "$ssh_dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C deploytest-rig -f "$ssh_dir/id_ed25519"
  write_file "$ssh_dir/authorized_keys" <"$ssh_dir/id_ed25519.pub"
  printf '[127.0.0.1]:%s %s\n' "$ssh_port" "$(cut -d' ' -f1,2 "$ssh_dir/ssh_host_ed25519_key.pub")" |
    write_file "$ssh_dir/known_hosts"
  write_file "$ssh_dir/sshd_config" <<CONF
# The test rig's sshd (tests/rig/hosts.sh): loopback only, key auth only.
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $ssh_dir/ssh_host_ed25519_key
PidFile $ssh_dir/sshd.pid
AuthorizedKeysFile $ssh_dir/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 50
Subsystem sftp internal-sftp
CONF
  if ssh_answers >/dev/null 2>&1; then return; fi
  [ "$(id -u)" = 0 ] || { log "no sshd answers on 127.0.0.1:$ssh_port, and starting it needs root"; exit 1; }
  local pid
  pid="$(pid_in "$ssh_dir/sshd.pid")"
  if cmdline_has "$pid" "-f $ssh_dir/sshd_config"; then stop_pid "$pid" 5; fi
  rm -f "$ssh_dir/sshd.pid"
  mkdir -p /run/sshd && chmod 0755 /run/sshd # privilege separation directory
  log "starting sshd on 127.0.0.1:$ssh_port"
  /usr/sbin/sshd -t -f "$ssh_dir/sshd_config"
  /usr/sbin/sshd -f "$ssh_dir/sshd_config" -E "$ssh_dir/sshd.log" 9>&-
  wait_for 10 ssh_answers || { tail -20 "$ssh_dir/sshd.log"; log "sshd did not answer on 127.0.0.1:$ssh_port"; exit 1; }
}

# As a host that drops off the network: the listener and every session (the per-connection sshd
# processes and the commands under them) end at once, without a word to the clients. Each process
# found is stopped (SIGSTOP) before its children are looked for, so none forks a session the sweep
# would miss; then all are killed.
stop_sshd() {
  local listener pid child found
  local -a frozen=()
  listener="$(pid_in "$ssh_dir/sshd.pid")"
  cmdline_has "$listener" "-f $ssh_dir/sshd_config" || return 0
  kill -STOP "$listener"
  frozen=("$listener")
  found=1
  while [ "$found" = 1 ]; do
    found=0
    for pid in "${frozen[@]}"; do
      for child in $(pgrep -P "$pid" || true); do
        [[ " ${frozen[*]} " == *" $child "* ]] && continue
        kill -STOP "$child" 2>/dev/null || true
        frozen+=("$child"); found=1
      done
    done
  done
  log "stopping sshd $listener and its sessions (${#frozen[@]} processes)"
  for pid in "${frozen[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${frozen[@]}"; do wait_gone "$pid"; done
  rm -f "$ssh_dir/sshd.pid"
}

# Ansible over SSH to 127.0.0.1 reaches the main engine by default and engine h3 with
# DOCKER_HOST in the task's environment (community.docker answers with h3's ID).
smoke_ansible() {
  local work expected
  work="$(mktemp -d "$state/ansible-check.XXXXXX")"
  expected="${engine_ids[/run/deploytest-h3.sock]}"
  cat >"$work/inventory.yml" <<YAML
all:
  hosts:
    sshhost:
      ansible_connection: ssh
      ansible_host: 127.0.0.1
      ansible_port: $ssh_port
      ansible_user: root
      ansible_ssh_private_key_file: $ssh_dir/id_ed25519
      ansible_ssh_common_args: -o UserKnownHostsFile=$ssh_dir/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes
      ansible_python_interpreter: $venv/bin/python
YAML
  cat >"$work/check.yml" <<'YAML'
- name: Ansible reaches the rig's engines over SSH
  hosts: sshhost
  gather_facts: false
  tasks:
    - name: The docker CLI answers over SSH
      ansible.builtin.command: docker version
      changed_when: false
    - name: DOCKER_HOST picks the engine
      community.docker.docker_host_info:
      environment:
        DOCKER_HOST: unix:///run/deploytest-h3.sock
      register: h3
    - name: It is engine h3
      ansible.builtin.assert:
        that: h3.host_info.ID == expected_id
        quiet: true
YAML
  if ! ANSIBLE_CONFIG="$top/ansible.cfg" "$venv/bin/ansible-playbook" -i "$work/inventory.yml" \
    -e "expected_id=$expected" "$work/check.yml" >"$work/out.log" 2>&1 9>&-; then
    cat "$work/out.log"; log "Ansible over SSH failed"; return 1
  fi
  rm -rf "$work"
}

# --- hosts.json ---------------------------------------------------------------------------

write_hosts_json() {
  local n name dir sock exec_root pidfile bridge bridge_addr bridge_net pool cgroup data_size mounted sep=""
  {
    printf '{\n  "hosts": {\n'
    for n in "${engines[@]}"; do
      engine_vars "$n"
      mounted=false; if data_root_is_mount; then mounted=true; fi
      printf '%s    "%s": {"docker_host": "unix://%s", "engine_id": "%s", "bridge": "%s", "address_pool": "%s", "data_root": "%s", "data_root_mount": %s}' \
        "$sep" "$name" "$sock" "${engine_ids[$sock]}" "$bridge" "$pool" "$dir/data" "$mounted"
      sep=$',\n'
    done
    printf '\n  },\n'
    printf '  "ssh": {"host": "127.0.0.1", "port": %s, "user": "root", "key": "%s", "known_hosts": "%s"},\n' \
      "$ssh_port" "$ssh_dir/id_ed25519" "$ssh_dir/known_hosts"
    printf '  "python": "%s",\n  "registry": "%s"\n}\n' "$venv/bin/python" "$registry"
  } | write_file "$state/hosts.json"
}

down() {
  local n name dir sock exec_root pidfile bridge bridge_addr bridge_net pool cgroup data_size pid
  local -a pids=()
  for n in "${engines[@]}"; do
    engine_vars "$n"
    pid="$(pid_in "$pidfile")"
    if cmdline_has "$pid" "--exec-root $exec_root "; then log "$name: stopping dockerd $pid"; pids+=("$pid"); fi
  done
  pid="$(pid_in "$ssh_dir/sshd.pid")"
  if cmdline_has "$pid" "-f $ssh_dir/sshd_config"; then log "stopping sshd $pid"; pids+=("$pid"); fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do stop_pid "$pid" 60; done
  for n in "${engines[@]}"; do
    engine_vars "$n"
    unmount_data_root # h3's tmpfs too: its content goes with it
    forward_rules -D
    ! ip link show dev "$bridge" >/dev/null 2>&1 || ip link del dev "$bridge"
  done
  rm -f "$state/hosts.json"
}

# One call at a time: two would start the same engine twice. Daemons started here get 9>&-,
# or they would hold the lock for as long as they run.
exec 9>"$state/hosts.lock"
flock 9

usage() { echo "usage: $0 [up|verify|down|stop-engine hN|start-engine hN|stop-sshd|start-sshd]" >&2; exit 2; }

engine_number() { # engine_number hN: N, when hN is one of the engines
  local n
  for n in "${engines[@]}"; do [ "${1:-}" != "h$n" ] || { echo "$n"; return; }; done
  usage
}

case "$mode" in
  down) down; exit 0 ;;
  stop-engine)
    n="$(engine_number "${2:-}")" # exits with usage's status when $2 is not an engine
    engine_vars "$n"
    stop_engine
    exit 0 ;;
  start-engine)
    n="$(engine_number "${2:-}")"
    engines=("$n")
    ensure_engines
    exit 0 ;;
  stop-sshd) stop_sshd; exit 0 ;;
  start-sshd) ensure_sshd; exit 0 ;;
  up | verify) ;;
  *) usage ;;
esac

ensure_engines
if [ "$mode" = verify ]; then started_engines=("${engines[@]}"); fi
start_smoke "${started_engines[@]}"
ensure_sshd
write_hosts_json
wait_smoke
# About 5 s (ansible-playbook over SSH with two docker tasks): only on request.
if [ "$mode" = verify ]; then smoke_ansible; fi
log "hosts ready: engines h1 h2 h3 on unix:///run/deploytest-hN.sock, sshd on 127.0.0.1:$ssh_port, $state/hosts.json"
