#!/usr/bin/env bash
# bench/soak.sh — soak test: three eidefs nodes with mounts under a mixed
# write/read/sync load for MINUTES, nodes b and c stopped (SIGKILL, sometimes
# SIGTERM) and restarted at random; then checks convergence, that no acknowledged
# write was lost, and that memory, goroutines and open files stayed flat.
# Not part of CI (it runs for minutes); see docs/soak.md.
#
# Usage: bash bench/soak.sh [MINUTES]            (default 10)
#
# Environment:
#   SOAK_FLAGS     extra flags for bench/soak, e.g. "-seed 42 -writers 2"
#   SOAK_TMPDIR    parent for the scratch directory (default /tmp)
#   KEEP=1         keep the scratch directory (node logs, acks.jsonl) afterwards;
#                  it is kept anyway when the run fails
#
# The report goes to stdout; the exit status is bench/soak's (0: all checks
# passed). An EXIT trap stops the soak program (which stops its nodes), then any
# node it left running (by the pids it recorded) and detaches every mount under
# the scratch directory, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${1:-10}
cd "$ROOT"

TMP=$(mktemp -d "${SOAK_TMPDIR:-/tmp}/eidefs-soak.XXXXXX")
SOAK_PID=""

log() { echo "soak.sh: $*" >&2; }

# alive PID: true while PID runs and is not a zombie.
alive() { [[ -e /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# stop_pid PID SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop_pid() {
	local pid=$1 secs=$2
	alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq $((secs * 10))); do
		alive "$pid" || return 0
		sleep 0.1
	done
	log "pid $pid still running ${secs}s after SIGTERM; killing it"
	kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	# The soak program stops its nodes itself on SIGTERM.
	if [[ -n $SOAK_PID ]]; then
		stop_pid "$SOAK_PID" 60
		wait "$SOAK_PID" 2>/dev/null
	fi
	# Nodes it could not stop: each NAME.pid holds a running node's pid.
	local f pid mp
	for f in "$TMP"/run/*.pid; do
		[[ -e $f ]] || continue
		pid=$(<"$f")
		# (timeout: reading the cmdline of a process stuck on FUSE can block)
		if [[ $pid =~ ^[0-9]+$ ]] && timeout 5 grep -qF -- "$TMP/" "/proc/$pid/cmdline" 2>/dev/null; then
			stop_pid "$pid" 20
		fi
	done
	# Mounts left by killed nodes: umount -f first aborts the FUSE connection of
	# one whose process is stuck (see docs/soak.md), then detach.
	while read -r mp; do
		umount -f -- "$mp" 2>/dev/null || fusermount3 -uz -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null
	done < <(awk -v p="$TMP/" 'index($2, p) == 1 { print $2 }' /proc/mounts)
	if grep -qF " $TMP/" /proc/mounts; then
		log "WARNING: mounts remain under $TMP; not removing it"
		grep -F " $TMP/" /proc/mounts >&2
	elif [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then
		log "scratch directory kept: $TMP (node logs run/*.log, run/acks.jsonl)"
	else
		rm -rf --one-file-system -- "$TMP"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! command -v fusermount3 >/dev/null && command -v apt-get >/dev/null; then
	log "installing fuse3 (fusermount3 missing)"
	apt-get install -y fuse3 >&2 || { apt-get update >&2 && apt-get install -y fuse3 >&2; } || true
fi

log "building eidefs and soak in $TMP"
go build -o "$TMP/eidefs" ./cmd/eidefs
# Built rather than `go run`: go run does not pass a SIGTERM on to the program,
# which must get it to stop its nodes.
go build -o "$TMP/soak" ./bench/soak

# In the background with wait, so a signal to this script runs the trap at once
# (bash defers traps while a foreground command runs).
# shellcheck disable=SC2086 # SOAK_FLAGS is intentionally word-split.
"$TMP/soak" -bin "$TMP/eidefs" -dir "$TMP/run" -minutes "$MINUTES" ${SOAK_FLAGS:-} &
SOAK_PID=$!
rc=0
wait "$SOAK_PID" || rc=$?
SOAK_PID=""
exit "$rc"
