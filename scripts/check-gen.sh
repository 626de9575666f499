#!/usr/bin/env bash
# Fails when gen/ differs from what `npm run generate` makes of the protos.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bash scripts/generate.sh "$tmp"
if ! diff -r "$tmp/gen" gen >/dev/null; then
  diff -r "$tmp/gen" gen | head -20 >&2 || true
  echo "gen/ is stale: run 'npm run generate' and commit gen/." >&2
  exit 1
fi
echo "gen/ is fresh"
