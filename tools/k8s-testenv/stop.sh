#!/usr/bin/env bash
# Stops what start.sh started: SIGTERM to the env.py process by its PID; it stops its
# children (kwok, scheduler, controller-manager, apiserver, kine) by PID and removes WORK_DIR.
#
# Usage: tools/k8s-testenv/stop.sh [WORK_DIR]   (same default as start.sh)
set -euo pipefail

work="${1:-${CVMH_K8S_WORK:-${TMPDIR:-/tmp}/cvmharness-k8s-testenv}}"
work="$(realpath -m "$work")"

if [[ ! -f "$work.pid" ]]; then
  echo "not running (no $work.pid)"
  exit 0
fi
pid="$(cat "$work.pid")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 1 120); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "pid $pid still running after 60s; sending SIGKILL" >&2
    kill -KILL "$pid"
  fi
fi
rm -f "$work.pid"
echo "stopped (pid $pid); log kept at $work.log"
