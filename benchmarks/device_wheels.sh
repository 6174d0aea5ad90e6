#!/usr/bin/env bash
# What a bare GPU machine lacks, carried as wheels (issue 24), then the device check.
#
#   bash benchmarks/device_wheels.sh download     # here, with network: wheels into .whl/ (ignored)
#   bash benchmarks/device_wheels.sh run [ARGS]   # there, offline, from the repository root:
#                                                 # install .whl/ into /tmp/site with pip
#                                                 # --no-index, then benchmarks/device_check.py ARGS
#
# The stock CUDA image is assumed to hold jax[cuda], flax, optax, orbax-checkpoint, torch and
# their dependencies (numpy, absl-py, etils, protobuf, pyarrow, pillow, pyyaml, wrapt, ...; the
# device tool's KINDS.md lists them). What this project needs beyond it, pinned to the versions
# its tests run with: TFDS and grain with the dependencies they add, ml-collections,
# pycocotools, tensorboardX, segment-anything (the parity reference). Python 3.12 on x86-64
# (the image's); WHEEL_PYTHON / WHEEL_DIR override. The folder stays under 40 MiB (checked).
set -euo pipefail

WHEEL_DIR=${WHEEL_DIR:-.whl}
WHEEL_PYTHON=${WHEEL_PYTHON:-3.12}
SITE=${SITE:-/tmp/site}
MAX_MIB=40

# Binary wheels (some are compiled: array_record, dm-tree, grain, pycocotools).
BINARY=(
  tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 array_record==0.8.6 dm-tree==0.1.10
  grain==0.2.18 portpicker==1.6.0 ml_collections==1.1.0 pycocotools==2.0.11
  tensorboardX==2.6.5 segment-anything==1.0 immutabledict==4.3.1 simple-parsing==0.1.9
  docstring_parser==0.18.0 termcolor==3.3.0 toml==0.10.2 importlib_resources==7.1.0
  googleapis-common-protos==1.76.0
)
# Published as source only (pure Python): built into a wheel here.
SOURCE_ONLY=(promise==2.3)

download() {
  mkdir -p "$WHEEL_DIR"
  local platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  python3 -m pip download --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON" \
    --implementation cp "${platforms[@]}" -d "$WHEEL_DIR" "${BINARY[@]}"
  python3 -m pip wheel --no-deps -w "$WHEEL_DIR" "${SOURCE_ONLY[@]}"
  local mib
  mib=$(du -sm "$WHEEL_DIR" | cut -f1)
  echo "$WHEEL_DIR: $(ls "$WHEEL_DIR" | wc -l) wheels, ${mib} MiB"
  if ((mib >= MAX_MIB)); then
    echo "error: $WHEEL_DIR is ${mib} MiB, over the ${MAX_MIB} MiB the device call carries" >&2
    exit 1
  fi
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEEL_DIR"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  python3 benchmarks/device_check.py "$@"
}

case "${1:-}" in
  download) download ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 download | run [device_check.py arguments]" >&2; exit 2 ;;
esac
