#!/usr/bin/env bash
# bench/sync.sh — measure eidefs replication between nodes on this machine:
# write-to-visible latency and bulk replication between two mounted nodes A
# and B, bootstrap of a big database onto a fresh node, and the nodes' memory.
#
# Usage: bash bench/sync.sh [OUTPUT_FILE]      (default: bench/results-sync.txt)
#
# Environment:
#   SYNCBENCH_FLAGS  extra flags for `syncbench run`, e.g. "-n 100 -bulk 2000"
#   BIG_ENTRIES      entries in the bootstrap database (default 100000; 0 skips)
#   BENCH_TMPDIR     parent for the scratch directory (default /tmp)
#   KEEP_LOGS=1      copy the node logs next to the output file
#
# All nodes listen on 127.0.0.1 (ports chosen by the kernel). An EXIT trap
# stops every node it started, unmounts what is left and removes the scratch
# directory, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -ge 1 ]]; then
	OUT=$(realpath -m -- "$1")
else
	OUT=$ROOT/bench/results-sync.txt
fi
cd "$ROOT"

BIG_ENTRIES=${BIG_ENTRIES:-100000}
TMP=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/eidefs-syncbench.XXXXXX")
EIDEFS=$TMP/eidefs
MOUNTS=() # mountpoints to unmount on exit
PIDS=()   # node processes to stop on exit
NOTES=()

log() { echo "sync.sh: $*" >&2; }
note() {
	log "$*"
	NOTES+=("$*")
}

is_mounted() { grep -qF " $1 " /proc/mounts; }

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	local mp pid
	# SIGTERM first: a node unmounts itself and closes its store cleanly.
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid did not stop on SIGTERM; killing it"
			kill -KILL "$pid" 2>/dev/null
		fi
		wait "$pid" 2>/dev/null
	done
	# Whatever is still mounted (a killed node leaves a dead mount): detach it.
	for mp in "${MOUNTS[@]}"; do
		if is_mounted "$mp"; then
			fusermount3 -uz -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null
		fi
	done
	if [[ ${KEEP_LOGS:-0} == 1 ]]; then
		cp "$TMP"/*.log "$(dirname "$OUT")/" 2>/dev/null
	fi
	# Only delete the scratch dir when nothing is mounted inside it, so rm
	# never walks into a live filesystem.
	if grep -qF " $TMP/" /proc/mounts; then
		log "WARNING: mounts remain under $TMP; not removing it"
		grep -F " $TMP/" /proc/mounts >&2
	else
		rm -rf --one-file-system -- "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
	log "$*"
	exit 1
}

# in_bg CMD...: run CMD in the background and wait for it, so that a SIGTERM to
# this script runs the trap at once instead of after CMD (bash defers traps
# while a foreground command runs); the trap stops CMD too.
in_bg() {
	local pid rc=0
	"$@" &
	pid=$!
	PIDS+=("$pid")
	wait "$pid" || rc=$?
	unset 'PIDS[-1]'
	return "$rc"
}

# FUSE userspace tools: go-fuse mounts via fusermount3 unless running as root.
if ! command -v fusermount3 >/dev/null && ! command -v fusermount >/dev/null && command -v apt-get >/dev/null; then
	log "installing fuse3 (fusermount3 missing)"
	apt-get install -y fuse3 >&2 || { apt-get update >&2 && apt-get install -y fuse3 >&2; } || true
fi

log "building eidefs and syncbench in $TMP"
go build -o "$EIDEFS" ./cmd/eidefs
go build -o "$TMP/syncbench" ./bench/syncbench

# new_node NAME: an initialised data directory $TMP/NAME with a quiet log.
new_node() {
	local name=$1 d=$TMP/$1
	"$EIDEFS" --data "$d" init >/dev/null
	sed -i -e "s/^name = .*/name = \"$name\"/" -e 's/^log_level = .*/log_level = "warn"/' "$d/eidefs.toml"
	grep -q '^log_level = "warn"' "$d/eidefs.toml" || echo 'log_level = "warn"' >>"$d/eidefs.toml"
}

# wait_for WHAT PID SECONDS CMD...: poll CMD until it succeeds; fail early if
# the node process PID has died.
wait_for() {
	local what=$1 pid=$2 secs=$3 i
	shift 3
	for ((i = 0; i < secs * 20; i++)); do
		"$@" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || die "$what: node process $pid exited; log: $(tail -n 20 "$TMP/$what.log")"
		sleep 0.05
	done
	die "$what: not ready within $secs s; log: $(tail -n 20 "$TMP/$what.log")"
}

# start_mount NAME: run `eidefs mount` for node NAME at $TMP/NAME-mnt; sets PID_<NAME>.
start_mount() {
	local name=$1 mp=$TMP/$1-mnt pid
	mkdir -p "$mp"
	"$EIDEFS" --data "$TMP/$name" mount "$mp" --listen 127.0.0.1:0 >"$TMP/$name.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	MOUNTS+=("$mp")
	wait_for "$name" "$pid" 15 is_mounted "$mp"
	printf -v "PID_$name" %s "$pid"
	log "node $name mounted at $mp (pid $pid)"
}

RUN_FLAGS=()

# Bootstrap source C: built offline through the engine, then served.
if ((BIG_ENTRIES > 0)); then
	new_node C
	new_node D2
	log "populating C with $BIG_ENTRIES entries"
	in_bg "$TMP/syncbench" populate -data "$TMP/C" -db big -entries "$BIG_ENTRIES" -info "$TMP/big.json"
	"$EIDEFS" --data "$TMP/C" serve --listen 127.0.0.1:0 >"$TMP/C.log" 2>&1 &
	PID_C=$!
	PIDS+=("$PID_C")
	wait_for C "$PID_C" 15 test -S "$TMP/C/control.sock"
	BIG_TICKET=$("$EIDEFS" --data "$TMP/C" db share big)
	log "node C serving big (pid $PID_C)"
	RUN_FLAGS+=(-eidefs "$EIDEFS" -ticket "$BIG_TICKET" -d2 "$TMP/D2" -info "$TMP/big.json" -srcpid "$PID_C" -pid "C=$PID_C")
fi

# A and B: both mounted; B joins A's database notes.
new_node A
new_node B
start_mount A
start_mount B
mkdir "$TMP/A-mnt/notes"
TICKET=$("$EIDEFS" --data "$TMP/A" db share notes --write)
"$EIDEFS" --data "$TMP/B" db join "$TICKET" >&2
wait_for B "$PID_B" 10 test -d "$TMP/B-mnt/notes"
# A pushes to B from now on. If A's first push or sync to B failed (a race with the
# join has been seen to do that), A holds its pushes to B until its retry, which
# shows up in the first latency samples: record A's view of B so the result says why.
sleep 0.5
A_PEERS=$("$EIDEFS" --data "$TMP/A" peer list --json | tr -d "\n") || A_PEERS=""
if grep -q '"last_error"\|"consecutive_failures": *[1-9]' <<<"$A_PEERS"; then
	note "after the join, node A reports a failed sync to B (pushes to B wait for the retry): $(grep -o '"status": *"[a-z]*"\|"last_error": *"[^"]*"\|"consecutive_failures": *[0-9]*' <<<"$A_PEERS" | tr '\n' ' ')"
fi
RUN_FLAGS+=(-a "$TMP/A-mnt" -b "$TMP/B-mnt" -db notes -pid "A=$PID_A" -pid "B=$PID_B")

# The benchmark's stdout is only its report (progress goes to stderr).
# shellcheck disable=SC2086 # SYNCBENCH_FLAGS is intentionally word-split.
in_bg "$TMP/syncbench" run "${RUN_FLAGS[@]}" ${SYNCBENCH_FLAGS:-} >"$TMP/report.txt"

report() {
	cat "$TMP/report.txt"
	if ((${#NOTES[@]})); then
		echo "Script notes:"
		printf -- '- %s\n' "${NOTES[@]}"
		echo
	fi
	# The nodes run with log_level = "warn": anything they logged is worth a look.
	local f
	for f in "$TMP"/A.log "$TMP"/B.log "$TMP"/C.log; do
		[[ -s $f ]] || continue
		echo "Log of node $(basename "$f" .log) (warnings and errors, last 10 lines):"
		tail -n 10 "$f" | sed 's/^/    /'
		echo
	done
}

mkdir -p "$(dirname "$OUT")"
report | tee "$OUT"
log "results written to $OUT"
