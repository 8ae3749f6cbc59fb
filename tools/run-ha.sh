#!/usr/bin/env bash
# run-ha.sh (`make run-ha`): the control plane in etcd mode on loopback, for
# trying failover by hand. It starts
#   - 3 etcd members (tools/bin/etcd): clients on 2379, 22379, 32379;
#   - 2 replicas of every service, each its own backlogd process (-store=etcd,
#     -etcd-prefix=/backlog): credential 9101/9111, automation 9102/9112,
#     agent 9103/9113, vault 9104/9114; every process is told every
#     replica's address (comma lists) and listens on its own;
#   - the REST gateway on 127.0.0.1:8080;
# prints the addresses, and on Ctrl-C stops the gateway, the replicas, then
# etcd. The key files every replica shares (service-token, credential.key,
# operator-token, vault.kek), etcd's data and every process's log live in
# ./data-ha (RUN_HA_DIR overrides); a second run reuses them.
#
# For development only: the vault's key-encryption key sits beside the data
# it protects, and etcd runs without TLS.
set -euo pipefail
# Job control: every background process gets its own process group, so a
# Ctrl-C reaches this script alone and the processes stop in order.
set -m

cd "$(dirname "$0")/.."
BACKLOGD=${BACKLOGD:-bin/backlogd}
ETCD=${ETCD:-tools/bin/etcd}
DIR=${RUN_HA_DIR:-./data-ha}
PREFIX=${RUN_HA_ETCD_PREFIX:-/backlog}
HTTP_ADDR=127.0.0.1:8080

ETCD_NAMES=(etcd-1 etcd-2 etcd-3)
ETCD_CLIENT_PORTS=(2379 22379 32379)
ETCD_PEER_PORTS=(2380 22380 32380)
SERVICES=(credential automation agent vault)
declare -A PORTS=([credential]="9101 9111" [automation]="9102 9112" [agent]="9103 9113" [vault]="9104 9114")

die() { echo "run-ha: $*" >&2; exit 1; }

# backlogd reads BACKLOG_<FLAG> and etcd ETCD_<FLAG> for every flag not
# given: keep a developer's settings away from them.
for v in $(compgen -e | grep -E '^(BACKLOG|ETCD)_' || true); do unset "$v"; done

for f in "$BACKLOGD" "$ETCD"; do
  [ -x "$f" ] || die "$f is missing: run make run-ha (it builds bin/backlogd and tools/bin/etcd)"
done
usage=$("$BACKLOGD" -help 2>&1 || true)
[[ $usage == *-store* ]] || die "$BACKLOGD has no -store flag (etcd mode): rebuild it with make build"

# port_open HOST PORT: something accepts connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# http_ok HOST PORT PATH: GET answers 200 (plain HTTP, no curl needed).
http_ok() {
  local status
  { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
  IFS=' ' read -r -t 2 _ status _ <&3 || status=
  exec 3<&- 3>&-
  [ "$status" = 200 ]
}

all_ports=("${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" 8080)
for s in "${SERVICES[@]}"; do all_ports+=(${PORTS[$s]}); done
for p in "${all_ports[@]}"; do
  ! port_open 127.0.0.1 "$p" || die "127.0.0.1:$p is in use (another make run or run-ha?): stop it first"
done

mkdir -p "$DIR/logs" "$DIR/etcd"
chmod 700 "$DIR" "$DIR/etcd" "$DIR/logs"

pids=() names=()
declare -A pid_of
stopping=
stop_all() {
  [ -n "$stopping" ] && return
  stopping=1
  trap "" INT TERM HUP # a second Ctrl-C must not cut the stop short
  set +m # no job-status lines while they stop
  [ ${#pids[@]} -gt 0 ] || return 0
  echo
  echo "run-ha: stopping"
  # The gateway and the replicas first, then etcd (they need it to stop
  # cleanly).
  local phase i
  for phase in backlogd etcd; do
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      [[ ${names[$i]} == etcd-* ]] && [ "$phase" = backlogd ] && continue
      [[ ${names[$i]} != etcd-* ]] && [ "$phase" = etcd ] && continue
      [ -n "${pids[$i]}" ] && kill -TERM "${pids[$i]}" 2>/dev/null || true
    done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
      [[ ${names[$i]} == etcd-* ]] && [ "$phase" = backlogd ] && continue
      [[ ${names[$i]} != etcd-* ]] && [ "$phase" = etcd ] && continue
      wait_gone "$i"
    done
  done
  echo "run-ha: stopped (data and logs in $DIR)"
}
# wait_gone I: wait up to 10 s for process I to exit, then SIGKILL it.
wait_gone() {
  local pid=${pids[$1]} n=0
  [ -n "$pid" ] || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if ((n++ == 100)); then
      echo "run-ha: ${names[$1]} did not stop within 10 s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
  pids[$1]=
}
trap 'stop_all; exit 130' INT TERM HUP
trap 'stop_all' EXIT

# start NAME CMD...: run in the background, output to $DIR/logs/NAME.log
# (this run only: readiness is read from it).
start() {
  local name=$1
  shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
  pid_of[$name]=$!
}

# wait_for NAME WHAT CHECK...: poll CHECK until it passes (30 s).
wait_for() {
  local name=$1 what=$2 n=0
  shift 2
  until "$@"; do
    if ! kill -0 "${pid_of[$name]}" 2>/dev/null; then
      tail -n 20 "$DIR/logs/$name.log" >&2
      die "$name exited before $what (log: $DIR/logs/$name.log)"
    fi
    if ((n++ >= 300)); then
      tail -n 20 "$DIR/logs/$name.log" >&2
      die "$name: no $what after 30 s (log: $DIR/logs/$name.log)"
    fi
    sleep 0.1
  done
}

# --- etcd ---
initial=() endpoints=()
for i in 0 1 2; do
  initial+=("${ETCD_NAMES[$i]}=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}")
  endpoints+=("127.0.0.1:${ETCD_CLIENT_PORTS[$i]}")
done
ETCD_ENDPOINTS=$(IFS=,; echo "${endpoints[*]}")
for i in 0 1 2; do
  n=${ETCD_NAMES[$i]} c=127.0.0.1:${ETCD_CLIENT_PORTS[$i]} p=127.0.0.1:${ETCD_PEER_PORTS[$i]}
  start "$n" "$ETCD" --name="$n" --data-dir="$DIR/etcd/$n" \
    --listen-client-urls="http://$c" --advertise-client-urls="http://$c" \
    --listen-peer-urls="http://$p" --initial-advertise-peer-urls="http://$p" \
    --initial-cluster="$(IFS=,; echo "${initial[*]}")" --initial-cluster-state=new \
    --initial-cluster-token=backlog-run-ha --logger=zap --log-outputs=stderr
done
for i in 0 1 2; do
  wait_for "${ETCD_NAMES[$i]}" "a healthy member" http_ok 127.0.0.1 "${ETCD_CLIENT_PORTS[$i]}" /health
done
echo "run-ha: etcd is up on $ETCD_ENDPOINTS"

# --- backlogd replicas ---
"$BACKLOGD" vault gen-kek -out "$DIR/vault.kek" >/dev/null

addr_flags=()
for s in "${SERVICES[@]}"; do
  list=()
  for p in ${PORTS[$s]}; do list+=("127.0.0.1:$p"); done
  addr_flags+=("-$s-addr=$(IFS=,; echo "${list[*]}")")
done
common=(-data-dir="$DIR" -service-token-file="$DIR/service-token" -http-addr="$HTTP_ADDR" "${addr_flags[@]}")
store=(-store=etcd -etcd-endpoints="$ETCD_ENDPOINTS" -etcd-prefix="$PREFIX")

# Dependencies first, one replica at a time: the first credential replica
# creates the shared key files (service-token, credential.key,
# operator-token) that the others then read.
for s in "${SERVICES[@]}"; do
  r=0
  for p in ${PORTS[$s]}; do
    r=$((r + 1))
    extra=()
    [ "$s" = vault ] && extra=(-vault-kek-file="$DIR/vault.kek")
    start "$s-$r" "$BACKLOGD" -target="$s" "${common[@]}" "${store[@]}" -"$s"-listen-addr="127.0.0.1:$p" "${extra[@]}"
    wait_for "$s-$r" "serving on 127.0.0.1:$p" grep -qs "\"addr\":\"127.0.0.1:$p\"" "$DIR/logs/$s-$r.log"
  done
done
start gateway "$BACKLOGD" -target=gateway "${common[@]}"
wait_for gateway "GET /readyz 200 on $HTTP_ADDR" http_ok 127.0.0.1 8080 /readyz

cat <<EOF

run-ha: up (etcd mode, prefix $PREFIX)
  REST gateway   http://$HTTP_ADDR
  etcd           $ETCD_ENDPOINTS
EOF
for s in "${SERVICES[@]}"; do
  printf '  %-14s' "$s"
  for p in ${PORTS[$s]}; do printf ' 127.0.0.1:%s' "$p"; done
  echo
done
cat <<EOF
  operator token $DIR/operator-token
  logs           $DIR/logs/<process>.log
Try a failover: kill -9 one replica's pid, or an etcd member's; see ps -o pid,args -p ${pids[*]}.
Ctrl-C stops everything.
EOF

# Run until Ctrl-C, reporting (not restarting) any process that exits.
while true; do
  wait -n || true
  [ -n "$stopping" ] && break
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if [ -n "${pids[$i]}" ] && ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run-ha: ${names[$i]} (pid ${pids[$i]}) exited; log: $DIR/logs/${names[$i]}.log" >&2
      wait "${pids[$i]}" 2>/dev/null || true
      pids[$i]=
    fi
  done
  alive=0
  for p in "${pids[@]}"; do [ -n "$p" ] && alive=1; done
  [ "$alive" = 1 ] || break
done
