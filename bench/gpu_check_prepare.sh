#!/usr/bin/env bash
# Download what bench/gpu_check.sh carries to the lent GPU machine (no network there) into
# .whl/ (git-ignored), as Python 3.12 x86-64 wheels, and print the total size: with the
# working tree it must stay under the device tool's 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -v '^#' bench/gpu_check_wheels.txt | grep . | xargs python3 -m pip download -q --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl
# nvdiffrast is not on PyPI: its source at the Dockerfile's NVDIFFRAST_COMMIT, from a git
# copy of github.com/NVlabs/nvdiffrast (NVDIFFRAST_GIT: a clone or bare git directory),
# built there with nvcc by bench/gpu_check.sh
if [ -n "${NVDIFFRAST_GIT:-}" ]; then
    commit=$(grep -oP 'NVDIFFRAST_COMMIT=\K[0-9a-f]+' Dockerfile)
    git --git-dir="$NVDIFFRAST_GIT" archive --format=tar.gz -o ".whl/nvdiffrast-${commit:0:7}.tar.gz" \
        "$commit" csrc nvdiffrast setup.py pyproject.toml LICENSE.txt README.md
fi
du -cb .whl/* | tail -1
# what travels, file by file (tests/test_gpu_check.py holds it under the carry limit)
(cd .whl && du -b -- *) | sort -k2 >bench/gpu_check_carry.txt
