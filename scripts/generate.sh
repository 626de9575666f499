#!/usr/bin/env bash
# Generates everything under gen/ (or under OUT/gen when OUT is given):
# TypeScript from proto/ and the third-party protos of proto-deps.sh, and
# descriptors.binpb, the FileDescriptorSet with source info (comments) that
# server reflection serves.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
bash scripts/proto-deps.sh
# From scratch, so that nothing of a removed proto stays behind.
rm -rf "$out/gen"
npx buf generate --template buf.gen.yaml -o "$out"
# One set from the two workspaces; a file both import (duration.proto) comes
# twice, and src/server/descriptor-index.ts keeps the first.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npx buf build proto --as-file-descriptor-set -o "$tmp/api.binpb"
npx buf build .build/proto-deps --as-file-descriptor-set -o "$tmp/deps.binpb"
cat "$tmp/api.binpb" "$tmp/deps.binpb" >"$out/gen/descriptors.binpb"
