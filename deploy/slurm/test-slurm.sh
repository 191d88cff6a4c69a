#!/usr/bin/env bash
# A real Slurm on this machine: installs Debian's slurm-wlm and munge (as root), starts a
# single-node cluster (slurmctld + slurmd), submits deploy/slurm/caption-array.sbatch as a
# 4-task array over 11 x 30 copies of ../shared/images with the tiny BLIP fixture, requeues one
# task part-way through its part (Slurm kills it and runs it again; glance resumes the part), runs
# deploy/slurm/merge.sbatch after the array, and checks that every image is in the merged file
# exactly once. Stops the cluster at the end. Run from anywhere:
#
#     deploy/slurm/test-slurm.sh            # GLANCE=path/to/glance to skip the cargo build
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)

if [ "$(id -u)" != 0 ]; then
    echo "test-slurm.sh: needs root (it installs and starts Slurm)" >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    (apt-get install -y slurm-wlm munge >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y slurm-wlm munge >/dev/null 2>&1; }) || {
        echo "test-slurm.sh: could not install slurm-wlm and munge" >&2
        exit 2
    }
fi
if [ -z "${GLANCE:-}" ]; then
    cargo build --locked --quiet
    GLANCE=$repo/target/debug/glance
fi

work=$(mktemp -d /tmp/glance-slurm.XXXXXX)
chmod 755 "$work"
host=$(hostname -s)
export SLURM_CONF=$work/slurm.conf
keep=1
cleanup() {
    scancel --quiet --full --user=root 2>/dev/null || true
    for daemon in slurmd slurmctld munged; do
        [ -f "$work/$daemon.pid" ] && kill "$(cat "$work/$daemon.pid")" 2>/dev/null || true
    done
    sleep 1
    if [ "$keep" = 0 ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# munge: a key, and the daemon with its socket in the work directory.
mkdir -p "$work/munge"
chown munge:munge "$work/munge" 2>/dev/null || true
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
socket=$work/munge/munge.socket
runuser -u munge -- munged --socket="$socket" --pid-file="$work/munge/munged.pid" \
    --log-file="$work/munge/munged.log" --seed-file="$work/munge/munged.seed"
cp "$work/munge/munged.pid" "$work/munged.pid"

cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat >"$SLURM_CONF" <<CONF
ClusterName=glance-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
mkdir -p "$work/state" "$work/spool"
slurmctld
slurmd
for _ in $(seq 60); do
    sinfo --noheader --states=idle 2>/dev/null | grep -q . && break
    sleep 1
done
sinfo --noheader --states=idle | grep -q . || { echo "test-slurm.sh: the Slurm node never became idle" >&2; cat "$work"/slurm*.log >&2; exit 2; }
echo "slurm: $(sinfo --version), node $host with $cpus CPUs idle (${SECONDS}s)"

# 330 images, so that a task runs long enough to be interrupted.
images=$work/images
mkdir -p "$images"
for i in $(seq -w 1 30); do
    mkdir -p "$images/copy$i"
    cp "$repo"/../shared/images/*.{png,jpg} "$images/copy$i/"
done
out=$work/out
export IMAGES=$images OUT=$out GLANCE MODEL=$repo/tests/fixtures/blip-tiny
export GLANCE_ARGS="--max-new-tokens 4 --batch-size 1"
cd "$work"
array=$(sbatch --parsable --array=0-3 --cpus-per-task=1 "$repo/deploy/slurm/caption-array.sbatch")
merge=$(sbatch --parsable --dependency=afterok:"$array" "$repo/deploy/slurm/merge.sbatch")
echo "submitted array $array (4 tasks) and merge $merge (${SECONDS}s)"

# Requeue task 1 once its part has some records: Slurm kills it and runs it again.
part=$out/captions-2.jsonl
for _ in $(seq 600); do
    [ -f "$part" ] && [ "$(wc -l <"$part")" -ge 5 ] && break
    sleep 0.1
done
if [ ! -f "$part" ]; then
    echo "test-slurm.sh: task 1 never started writing its part; Slurm logs in $work" >&2
    exit 2
fi
before=$(wc -l <"$part")
if ! scontrol requeue "${array}_1"; then
    echo "test-slurm.sh: could not requeue task 1 (already finished?): the scenario did not run" >&2
    exit 2
fi
# Slurm holds a requeued task back for a couple of minutes before it may start again; let it
# start at once.
for _ in $(seq 50); do
    scontrol update JobId="${array}_1" StartTime=now 2>/dev/null && break
    sleep 0.2
done
echo "requeued ${array}_1 with $before records in its part (${SECONDS}s)"

for _ in $(seq 600); do
    state=$(squeue --noheader --jobs="$merge" --format=%T 2>/dev/null || true)
    [ -z "$state" ] && break
    sleep 1
done
echo "task states: $(sacct 2>/dev/null | head -0; scontrol show job "$array" 2>/dev/null | grep -o 'JobState=[A-Z]*\|Restarts=[0-9]*' | sort | uniq -c | tr '\n' ' ')"
restarts=$(scontrol show job "${array}_1" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2 || echo "?")
merged=$out/captions.jsonl
if [ ! -s "$merged" ]; then
    echo "FAILED: no merged file; merge log:" >&2
    cat "$work"/glance-merge-*.log >&2 || true
    exit 1
fi
total=$(wc -l <"$merged")
unique=$(python3 -c 'import json,sys; print(len({json.loads(l)["file"] for l in open(sys.argv[1])}))' "$merged")
expected=$(find "$images" -type f | wc -l)
errors=$(grep -c '"error"' "$merged" || true)
echo "(${SECONDS}s) merged: $total records, $unique distinct images, $expected expected, $errors errors; task 1 restarts: $restarts"
cat "$work"/glance-merge-*.log
if [ "$total" = "$expected" ] && [ "$unique" = "$expected" ] && [ "$errors" = 0 ]; then
    echo "1 passed, 0 failed"
    keep=0
else
    echo "0 passed, 1 failed (logs in $work)"
    exit 1
fi
