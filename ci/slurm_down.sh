#!/usr/bin/env bash
# Stop the one-node SLURM of ci/slurm_up.sh: cancel every job on it (this cluster is the
# tests' own), wait for them to end, then stop slurmd, slurmctld and munged by their pid files.
set -uo pipefail
RUN=${KE_SLURM_RUN:-/run/ke-slurm}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$RUN/slurmctld.pid"; then
    scancel --full --signal=KILL --state=RUNNING --user=root >/dev/null 2>&1 || true
    scancel --user=root >/dev/null 2>&1 || true
    for _ in $(seq 100); do
        [ -z "$(squeue -h -t PD,R,CG,S,CF,RQ -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
    left=$(squeue -h -t PD,R,CG,S,CF,RQ -o %i 2>/dev/null | tr '\n' ' ')
    [ -z "$left" ] || echo "slurm_down: jobs still there: $left" >&2
fi
for name in slurmd slurmctld munged; do
    pidfile="$RUN/$name.pid"
    if alive "$pidfile"; then
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; echo "slurm_down: killed $name ($pid)" >&2; }
        echo "slurm_down: stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done
