#!/usr/bin/env bash
# Lays out the third-party protos we generate code and descriptors for, in a
# gitignored build folder that is a buf workspace of its own (buf.gen.yaml
# names it as a second input; buf.yaml leaves it out, so that `buf lint` and
# `buf breaking` need nothing but proto/). They are never committed:
#   google.rpc status and error details   from google-proto-files
#   grpc.health.v1                        from grpc-health-check
#   grpc.reflection.v1 and v1alpha        from @grpc/reflection
set -euo pipefail
cd "$(dirname "$0")/.."
dst=.build/proto-deps
rm -rf "$dst"
mkdir -p "$dst/google/rpc" "$dst/grpc/health/v1" "$dst/grpc/reflection/v1" "$dst/grpc/reflection/v1alpha"
rpc=node_modules/google-proto-files/google/rpc
cp "$rpc/status.proto" "$rpc/error_details.proto" "$dst/google/rpc/"
cp node_modules/grpc-health-check/proto/health/v1/health.proto "$dst/grpc/health/v1/"
for version in v1 v1alpha; do
  cp "node_modules/@grpc/reflection/build/proto/grpc/reflection/$version/reflection.proto" \
    "$dst/grpc/reflection/$version/"
done
printf 'version: v2\n' >"$dst/buf.yaml"
