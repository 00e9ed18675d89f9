#!/usr/bin/env bash
# Builds the wheel of the `jimbot` Python package from a build tree, offline.
#
#   scripts/python_wheel.sh BUILD_DIR [OUT_DIR]     (OUT_DIR defaults to BUILD_DIR/dist)
#
# BUILD_DIR/python/jimbot is the package the build assembled (generated modules plus
# python/jimbot/*.py). It is staged with pyproject.toml in a temporary folder, so that
# setuptools' work files (build/, *.egg-info) never land in the build tree, and packed by
# /usr/bin/python3's pip with Debian's setuptools and wheel: no build isolation, no index.
set -euo pipefail

build=$(cd "${1:?usage: python_wheel.sh BUILD_DIR [OUT_DIR]}" && pwd)
out=${2:-$build/dist}
src=$(cd "$(dirname "$0")/.." && pwd)
py=${JB_WHEEL_PYTHON:-/usr/bin/python3}

[ -f "$build/python/jimbot/__init__.py" ] || {
  echo "python_wheel.sh: $build/python/jimbot is missing: run make build first" >&2
  exit 1
}
stage=$(mktemp -d "${TMPDIR:-/tmp}/jimbot-wheel.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage/build/python" "$out"
cp "$src/pyproject.toml" "$stage/"
cp -r "$build/python/jimbot" "$stage/build/python/"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +

"$py" -m pip wheel --quiet --no-deps --no-build-isolation --no-index --disable-pip-version-check \
  --wheel-dir "$out" "$stage"
ls "$out"/jimbot-*.whl
