#!/usr/bin/env bash
# Test inputs that are not installed: clip-retrieval's wheel, whose clip_client.py the serve tests
# load directly (the package itself cannot be installed beside our pins). Downloaded once.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${LAION_HF_TEST_WHEELS:-.ci/wheels}"
mkdir -p "$dest"
if ! ls "$dest"/clip_retrieval-2.45.0-*.whl >/dev/null 2>&1; then
  pip download --no-deps clip-retrieval==2.45.0 -d "$dest"
fi
