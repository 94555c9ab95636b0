#!/usr/bin/env bash
# Entrypoint of the qsmflow images (docker/podman ENTRYPOINT, Apptainer %runscript).
#
#   IMAGE [QSMFLOW ARGS...]    runs `qsmflow QSMFLOW ARGS...` (default: --help)
#   IMAGE exec CMD [ARGS...]   runs CMD (python, pytest, bash, ...) in the same environment
#
# The image must work with a read-only root file system, as any UID:GID (one without a passwd
# entry or a home directory) and with only the output bind writable. Python, Nipype,
# matplotlib and torch write small files outside the output folder (multiprocessing's
# forkserver socket and other temporary files, matplotlib's font cache, Nipype's config dir),
# so this script gives them one private scratch folder and removes it when the command ends:
#
#   1. $QSMFLOW_SCRATCH when set (created if missing; must be writable), else
#   2. ${TMPDIR:-/tmp} when it is writable (docker/podman without --read-only, Apptainer,
#      Charliecloud), else
#   3. the last command-line argument that is a writable directory (or a path to be created
#      whose parent is a writable directory): with `run BIDS_DIR OUTPUT_DIR participant
#      [--work-dir WORK]` that is WORK or OUTPUT_DIR. A hidden `.qsmflow-tmp.XXXXXX` folder
#      is made there and removed at the end, else
#   4. /dev/shm (small files only) when nothing else is writable.
#
# Inside the scratch folder: TMPDIR, MPLCONFIGDIR, XDG_CACHE_HOME, XDG_CONFIG_HOME,
# NIPYPE_CONFIG_DIR and TORCH_HOME (each only when not already set), and HOME when $HOME is
# not a writable directory. LOGNAME/USER are set when missing (Nipype and getpass need a user
# name; an arbitrary UID has no passwd entry). QSMFLOW_KEEP_SCRATCH=1 keeps the folder.
# With no writable place at all the command runs as is.
set -euo pipefail

if [ "${1:-}" = exec ]; then
    shift
    [ "$#" -gt 0 ] || { echo "qsmflow-entrypoint: 'exec' needs a command" >&2; exit 2; }
    cmd=("$@")
else
    cmd=(qsmflow "$@")
fi

writable_dir() { [ -d "$1" ] && [ -w "$1" ] && [ -x "$1" ]; }

scratch=""
if [ -n "${QSMFLOW_SCRATCH:-}" ]; then
    mkdir -p -- "$QSMFLOW_SCRATCH"
    scratch=$(mktemp -d "$QSMFLOW_SCRATCH/qsmflow.XXXXXX")
elif writable_dir "${TMPDIR:-/tmp}"; then
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/qsmflow.XXXXXX")
else
    # Last argument first: outputs and --work-dir come after the inputs.
    for ((i = $#; i >= 1; i--)); do
        arg=${!i}
        case "$arg" in
            --*=/*) arg=${arg#*=} ;;
            /*) ;;
            *) continue ;;
        esac
        arg=${arg%/}
        if writable_dir "$arg"; then
            parent=$arg
        elif [ ! -e "$arg" ] && writable_dir "$(dirname -- "$arg")"; then
            parent=$(dirname -- "$arg")
        else
            continue
        fi
        # Short name: multiprocessing's forkserver socket lives under TMPDIR (108-byte limit).
        scratch=$(mktemp -d "${parent%/}/.qsmflow-tmp.XXXXXX") && break
        scratch=""
    done
    # Last resort, nothing else writable (e.g. the output bound read-only): the shared-memory
    # tmpfs that docker, podman, Apptainer and Charliecloud provide, for the few small files
    # Python needs to start (matplotlib refuses to import without a writable folder), so that
    # qsmflow itself can report what is wrong.
    if [ -z "$scratch" ] && writable_dir /dev/shm; then
        scratch=$(mktemp -d /dev/shm/qsmflow.XXXXXX) || scratch=""
    fi
fi

if [ -z "${LOGNAME:-}" ]; then
    LOGNAME=$(id -un 2>/dev/null || echo "qsmflow-$(id -u)")
    export LOGNAME
fi
export USER="${USER:-$LOGNAME}"

if [ -z "$scratch" ]; then
    exec "${cmd[@]}"
fi

mkdir -p "$scratch/t" "$scratch/home"
export TMPDIR="$scratch/t"
export MPLCONFIGDIR="${MPLCONFIGDIR:-$scratch/matplotlib}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$scratch/cache}"
export XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$scratch/config}"
export NIPYPE_CONFIG_DIR="${NIPYPE_CONFIG_DIR:-$scratch/nipype}"
export TORCH_HOME="${TORCH_HOME:-$scratch/torch}"
if ! writable_dir "${HOME:-/nonexistent}"; then
    export HOME="$scratch/home"
fi

cleanup() {
    if [ "${QSMFLOW_KEEP_SCRATCH:-0}" = 1 ]; then
        echo "qsmflow-entrypoint: scratch kept in $scratch" >&2
    else
        rm -rf -- "$scratch"
    fi
}

# Run the command as a child (not exec) so the scratch folder can be removed afterwards;
# forward the stop signals of `docker stop`, Ctrl-C and SLURM to it.
exec 3<&0
"${cmd[@]}" <&3 3<&- &
child=$!
exec 3<&-
for sig in TERM INT HUP USR1 USR2; do
    # shellcheck disable=SC2064  # expand $sig and $child now
    trap "kill -s $sig $child 2>/dev/null || true" "$sig"
done
rc=0
while :; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break # wait returned for a trapped signal: keep waiting
done
cleanup
exit "$rc"
