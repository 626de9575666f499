#!/usr/bin/env bash
# Builds dist/, what bin/vmabackup.js and npm start run: src/ and gen/ compiled
# by tsc (a type error stops the build), plus the data files the code reads at
# run time next to its modules (gen/*.binpb: the descriptors reflection serves).
# test/build-dist.ts does the same for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
tsc -p tsconfig.build.json
cp gen/*.binpb dist/gen/
