#!/usr/bin/env bash
# Prepare, on this machine, what bench/gpu_run.sh needs on a lent GPU machine, where nothing can
# be downloaded: the wheels of bench/gpu_wheels.txt for its Python in .whl/, and a link shared ->
# ../shared so that the ISBI 2012 stack can travel (carry shared/data/isbi2012/isbi2012_train.npz).
# Both are ignored through .git/info/exclude, never committed.
#
#     bash bench/gpu_prepare.sh [PYTHON_VERSION]      # default 3.12, the CUDA image's
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
for ignored in /.whl/ /shared; do
    grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
[ -e shared ] || [ ! -d ../shared ] || ln -s ../shared shared
rm -rf .whl && mkdir .whl
platforms=()
for tag in manylinux1 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
           manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done
grep -v '^#' bench/gpu_wheels.txt | while read -r requirement; do
    [ -n "$requirement" ] || continue
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
            "${platforms[@]}" -d .whl "$requirement" 2>/dev/null; then
        # No wheel on the index (intern): build one here, which serves the image only if pure Python.
        built=$(mktemp -d)
        python3 -m pip wheel -q --no-deps --no-build-isolation -w "$built" "$requirement"
        ls "$built"/*-none-any.whl > /dev/null 2>&1 || { echo "$requirement: no wheel for Python $version" >&2; exit 1; }
        mv "$built"/*.whl .whl/ && rmdir "$built"
    fi
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ for Python $version"
