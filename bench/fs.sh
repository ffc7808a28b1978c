#!/usr/bin/env bash
# bench/fs.sh — compare native disk, go-fuse's loopback example (and the same
# without FUSE passthrough) and (when it builds and mounts) eidefs in a single
# fsbench run.
#
# Usage: bash bench/fs.sh [OUTPUT_FILE]        (default: bench/results-fs.txt)
#
# Environment:
#   FSBENCH_FLAGS  extra flags for fsbench, e.g. "-files 500 -lskeys 2000"
#   BENCH_TMPDIR   parent for the scratch directory (default /tmp); native
#                  and loopback targets both live there, so they share a disk
#   MEMCHECK=0     skip printing the RSS of the FUSE server processes
#   NOPASS=0       skip the lb-nopass column (loopback without passthrough)
#   NOPW=0         skip the eidefs-nopw column (eidefs with passthrough_writes = false)
#
# Everything is mounted under one scratch directory; an EXIT trap unmounts
# it all and kills the servers, also on failure or Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Resolve the output path against the caller's cwd before we cd away.
if [[ $# -ge 1 ]]; then
	OUT=$(realpath -m -- "$1")
else
	OUT=$ROOT/bench/results-fs.txt
fi
cd "$ROOT"

TMP=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/eidefs-bench.XXXXXX")
MOUNTS=() # mountpoints to unmount on exit
PIDS=()   # background server processes to kill on exit
LB_PID=""
EIDE_PID=""
NOTES=() # lines appended to the result file

log() { echo "fs.sh: $*" >&2; }
note() {
	log "$*"
	NOTES+=("$*")
}

is_mounted() { mountpoint -q -- "$1" 2>/dev/null; }

unmount() {
	local mp=$1
	is_mounted "$mp" || return 0
	if command -v fusermount3 >/dev/null && fusermount3 -u -- "$mp" 2>/dev/null; then
		return 0
	fi
	if command -v fusermount >/dev/null && fusermount -u -- "$mp" 2>/dev/null; then
		return 0
	fi
	# Busy or no fusermount: detach lazily so nothing is left mounted.
	umount -l -- "$mp" 2>/dev/null || umount -f -- "$mp" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	local mp pid
	# Unmount first: a FUSE server exits on its own once unmounted.
	for mp in "${MOUNTS[@]}"; do unmount "$mp"; done
	for pid in "${PIDS[@]}"; do
		kill -0 "$pid" 2>/dev/null || continue
		kill -TERM "$pid" 2>/dev/null
		for _ in $(seq 30); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	# A killed server may leave a dead ("Transport endpoint not connected")
	# mount behind; detach it too.
	for mp in "${MOUNTS[@]}"; do
		if grep -qF " $mp " /proc/mounts; then umount -l -- "$mp" 2>/dev/null; fi
	done
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

# wait_mount MOUNTPOINT PID SECONDS: poll until MOUNTPOINT is a live mount;
# fail early if the server process has died.
wait_mount() {
	local mp=$1 pid=$2 secs=$3 i
	for ((i = 0; i < secs * 10; i++)); do
		is_mounted "$mp" && return 0
		kill -0 "$pid" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

# FUSE userspace tools: go-fuse mounts via fusermount3 (or fusermount).
DIRECT=()
if ! command -v fusermount3 >/dev/null && ! command -v fusermount >/dev/null; then
	if command -v apt-get >/dev/null; then
		log "installing fuse3 (fusermount3 missing)"
		apt-get install -y fuse3 >&2 || { apt-get update >&2 && apt-get install -y fuse3 >&2; } || true
	fi
fi
if ! command -v fusermount3 >/dev/null && ! command -v fusermount >/dev/null; then
	# As root the mount(2) syscall works without the helper.
	log "no fusermount available; using -directmount for loopback"
	DIRECT=(-directmount)
fi

TARGETS=()

# 1. Native directory on the same disk as the loopback source.
mkdir -p "$TMP/native"
TARGETS+=(-target "native=$TMP/native")

# 2. go-fuse's loopback example over $TMP/lb-src.
log "building go-fuse loopback example"
go build -o "$TMP/loopback" github.com/hanwen/go-fuse/v2/example/loopback
mkdir -p "$TMP/lb-src" "$TMP/lb-mnt"
"$TMP/loopback" -q "${DIRECT[@]}" "$TMP/lb-mnt" "$TMP/lb-src" >"$TMP/loopback.log" 2>&1 &
LB_PID=$!
PIDS+=("$LB_PID")
MOUNTS+=("$TMP/lb-mnt")
if wait_mount "$TMP/lb-mnt" "$LB_PID" 10; then
	TARGETS+=(-target "loopback=$TMP/lb-mnt")
	log "loopback mounted at $TMP/lb-mnt (pid $LB_PID)"
else
	note "loopback: did not mount within 10 s; skipped. Log:"
	cat "$TMP/loopback.log" >&2
	LB_PID=""
fi

# 3. The same loopback with FUSE passthrough declined (bench/lbnopass): every
#    read and write goes through its process, the path eidefs's writes take.
#    Skipped with NOPASS=0.
NP_PID=""
if [[ ${NOPASS:-1} != 0 ]]; then
	go build -o "$TMP/lbnopass" ./bench/lbnopass
	mkdir -p "$TMP/np-src" "$TMP/np-mnt"
	"$TMP/lbnopass" "${DIRECT[@]}" "$TMP/np-mnt" "$TMP/np-src" >"$TMP/lbnopass.log" 2>&1 &
	NP_PID=$!
	PIDS+=("$NP_PID")
	MOUNTS+=("$TMP/np-mnt")
	if wait_mount "$TMP/np-mnt" "$NP_PID" 10; then
		TARGETS+=(-target "lb-nopass=$TMP/np-mnt")
	else
		note "lb-nopass: did not mount within 10 s; skipped."
		cat "$TMP/lbnopass.log" >&2
		NP_PID=""
	fi
fi

# mount_eidefs NAME [TOML_LINE]: mount eidefs (its own data directory, TOML_LINE
# added to its eidefs.toml) as the column NAME; sets MOUNTED_PID.
mount_eidefs() {
	local name=$1 line=${2:-}
	MOUNTED_PID=""
	local mnt=$TMP/m-$name
	mkdir -p "$TMP/$name-data" "$mnt"
	"$TMP/eidefs" --data "$TMP/$name-data" init >"$TMP/$name-init.log" 2>&1 || true
	if [[ -n $line ]]; then echo "$line" >>"$TMP/$name-data/eidefs.toml"; fi
	"$TMP/eidefs" --data "$TMP/$name-data" mount "$mnt" >"$TMP/$name.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	MOUNTS+=("$mnt")
	if wait_mount "$mnt" "$pid" 10 &&
		mkdir "$mnt/bench" "$mnt/bench/files"; then
		TARGETS+=(-target "$name=$mnt/bench/files")
		log "$name mounted at $mnt (pid $pid)"
		MOUNTED_PID=$pid
	else
		note "$name: built but did not mount within 10 s (or mkdir failed); $name column skipped."
		sed "s/^/    $name.log: /" "$TMP/$name.log" | tail -n 20 >&2 || true
	fi
}

# 4. eidefs (its defaults), if ./cmd/eidefs builds and its mount command works; and
# (NOPW=0 skips it) eidefs with passthrough_writes = false, column eidefs-nopw.
NOPW_PID=""
if [[ -d cmd/eidefs ]] && go build -o "$TMP/eidefs" ./cmd/eidefs 2>"$TMP/eidefs-build.log"; then
	mount_eidefs eidefs
	EIDE_PID=$MOUNTED_PID
	if [[ ${NOPW:-1} != 0 ]]; then
		mount_eidefs eidefs-nopw "passthrough_writes = false"
		NOPW_PID=$MOUNTED_PID
	fi
else
	note "eidefs: ./cmd/eidefs missing or not buildable; eidefs column not measured."
	if [[ -s $TMP/eidefs-build.log ]]; then tail -n 20 "$TMP/eidefs-build.log" >&2; fi
fi

# rss_of NAME PID: print resident (current and peak) memory of a server.
rss_of() {
	local name=$1 pid=$2
	if [[ -n $pid && -r /proc/$pid/status ]]; then
		echo "- $name (pid $pid): $(awk '/^VmRSS|^VmHWM/ {printf "%s %s %s  ", $1, $2, $3}' "/proc/$pid/status")"
	else
		echo "- $name: not running"
	fi
}

run_all() {
	# shellcheck disable=SC2086 # FSBENCH_FLAGS is intentionally word-split.
	go run ./bench/fsbench "${TARGETS[@]}" ${FSBENCH_FLAGS:-}
	if ((${#NOTES[@]})); then
		echo "Notes:"
		printf -- '- %s\n' "${NOTES[@]}"
		echo
	fi
	if [[ ${MEMCHECK:-1} != 0 ]]; then
		echo "Memory after the runs (VmRSS = current, VmHWM = peak):"
		rss_of loopback "$LB_PID"
		if [[ -n $NP_PID ]]; then rss_of lb-nopass "$NP_PID"; fi
		if [[ -n $EIDE_PID ]]; then rss_of eidefs "$EIDE_PID"; fi
		if [[ -n $NOPW_PID ]]; then rss_of eidefs-nopw "$NOPW_PID"; fi
	fi
}

mkdir -p "$(dirname "$OUT")"
run_all | tee "$OUT"
log "results written to $OUT"
