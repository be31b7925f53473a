#!/usr/bin/env bash
# Starts a single-node Slurm on this machine for the srun launcher's tests:
# slurmctld and slurmd as root, auth/none (so: for a throwaway test machine
# only; the daemons listen on 127.0.0.1 alone), state under /var/tmp/buckshot-slurm,
# the configuration in /etc/slurm/slurm.conf (written only if there is none, or
# if it is ours). Idempotent: does nothing if the node already answers.
# Usage: slurm-localhost.sh start | stop
set -euo pipefail
CONF=/etc/slurm/slurm.conf
D=/var/tmp/buckshot-slurm
MARK="# written by buckshot's .ci/slurm-localhost.sh"

case "${1:-start}" in
stop)
    for daemon in slurmd slurmctld; do
        [ -s "$D/$daemon.pid" ] && kill "$(cat "$D/$daemon.pid")" 2>/dev/null || true
    done
    exit 0
    ;;
esac

command -v slurmctld >/dev/null || { echo "slurm-localhost: slurm-wlm is not installed" >&2; exit 1; }
if sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    exit 0
fi
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "slurm-localhost: $CONF exists and is not ours; not touching it" >&2
    exit 1
fi
mkdir -p "$D/state" "$D/spool" /etc/slurm
H=$(hostname -s)
cat > "$CONF" <<CFG
$MARK
ClusterName=buckshot
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=$H NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CFG
slurmctld -f "$CONF"
slurmd -f "$CONF"
for _ in $(seq 100); do
    sinfo -h -o %t 2>/dev/null | grep -qE 'idle|mix|alloc' && exit 0
    sleep 0.2
done
echo "slurm-localhost: the node did not come up; see $D/*.log" >&2
exit 1
