#!/usr/bin/env bash
# Start a one-node SLURM on this Debian machine for `make test-slurm` (root only).
#
#   bash ci/slurm_up.sh      # install (apt) if needed, configure, start munged/slurmctld/slurmd
#   bash ci/slurm_down.sh    # cancel every job, then stop the three daemons by their pid files
#
# Exit status: 0 the node is idle; 3 this machine cannot have one (not root, no apt, another
# SLURM already running): the one line on stderr says why; 1 a step failed (logs named).
# The daemons run without systemd (a container's policy-rc.d forbids service starts); their pid
# files are under $KE_SLURM_RUN. Requeued jobs wait cred_expire seconds before they may start
# again (120 s by default): 10 s here, and the scheduler runs every 2 s, so that a pre-emption
# test takes seconds instead of minutes.
# KE_SLURM_CPUS: the CPUs the node offers (default: the machine's, at least 4). More than the
# machine has is allowed (SlurmdParameters=config_overrides): the tests' jobs are tiny, and the
# pre-emption test's job runs beside the 2-point sweep instead of after it.
set -euo pipefail

RUN=${KE_SLURM_RUN:-/run/ke-slurm}
STATE=${KE_SLURM_STATE:-/var/lib/ke-slurm}
LOGS=${KE_SLURM_LOGS:-/var/log/ke-slurm}
CONF=/etc/slurm/slurm.conf
PARTITION=${KE_SLURM_PARTITION:-debug}

cannot() { echo "slurm_up: $*" >&2; exit 3; }
fail() { echo "slurm_up: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || cannot "not root (uid $(id -u)); SLURM's daemons need root"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || cannot "SLURM is not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || cannot "apt-get update failed"
    # the packages' postinst cannot start services in a container ("policy-rc.d denied"): fine
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || cannot "apt-get install slurmctld slurmd slurm-client munge failed"
fi

mkdir -p "$RUN"
if ! alive "$RUN/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q UP; then
    cannot "a SLURM controller this script did not start is running; stop it first"
fi

HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts   # slurmd looks itself up

# MUNGE: the key (the package makes one) readable by munge only
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
chown munge:munge "$RUN" 2>/dev/null || true

# the node as slurmd sees it: "NodeName=vm CPUs=2 Boards=1 ... ThreadsPerCore=1 RealMemory=24105"
HW=$(slurmd -C | head -1)
MEM=$(( $(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$HW") * 9 / 10 ))
HW_CPUS=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$HW")
CPUS=${KE_SLURM_CPUS:-$(( HW_CPUS > 4 ? HW_CPUS : 4 ))}
if [ "$CPUS" = "$HW_CPUS" ]; then
    TOPOLOGY=$(sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//' <<<"$HW")
else
    TOPOLOGY="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
fi

install -d -o slurm -g slurm -m 0755 "$STATE/ctld" "$LOGS"
install -d -m 0755 "$STATE/slurmd" /etc/slurm
cat > "$CONF.ke-new" <<CONF
# one-node SLURM for the KE toolkit's tests, written by ci/slurm_up.sh
ClusterName=ke
SlurmctldHost=$HOST
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
AuthInfo=cred_expire=10
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2000
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$HOST $TOPOLOGY RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
changed=0
if ! cmp -s "$CONF.ke-new" "$CONF" 2>/dev/null; then
    mv "$CONF.ke-new" "$CONF"
    changed=1
else
    rm -f "$CONF.ke-new"
fi
chmod 0644 "$CONF"

stop() {   # pid file, name
    if alive "$1"; then
        local pid; pid=$(cat "$1")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    rm -f "$1"
}

if ! alive "$RUN/munged.pid"; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$RUN/munged.pid"
    for _ in $(seq 50); do alive "$RUN/munged.pid" && break; sleep 0.1; done
    alive "$RUN/munged.pid" || fail "munged did not start; see /var/log/munge/munged.log"
fi
munge -n | unmunge >/dev/null || fail "munge round trip failed"

if [ "$changed" = 1 ]; then
    stop "$RUN/slurmd.pid"
    stop "$RUN/slurmctld.pid"
fi
if ! alive "$RUN/slurmctld.pid"; then
    /usr/sbin/slurmctld
    for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
    scontrol ping 2>/dev/null | grep -q UP || fail "slurmctld is not up; see $LOGS/slurmctld.log"
fi
alive "$RUN/slurmd.pid" || /usr/sbin/slurmd

state=
for _ in $(seq 100); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.2
done
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) scontrol update nodename="$HOST" state=resume 2>/dev/null || true   # left down earlier
       sleep 1
       state=$(sinfo -h -n "$HOST" -o %T) ;;
esac
case "$state" in
    idle*|mixed*|allocated*) echo "slurm_up: node $HOST $state in partition $PARTITION; logs in $LOGS" ;;
    *) fail "node $HOST is '$state'; see $LOGS/slurmd.log" ;;
esac
