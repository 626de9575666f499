#!/usr/bin/env bash
# Lays out the third-party protos we generate code for (google.rpc status and
# error details, from the google-proto-files package) in a gitignored build
# folder that buf.yaml names as a second module. They are never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=node_modules/google-proto-files/google/rpc
dst=.build/proto-deps/google/rpc
mkdir -p "$dst"
cp "$src/status.proto" "$src/error_details.proto" "$dst/"
