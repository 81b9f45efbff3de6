#!/usr/bin/env bash
# Generates the TypeScript code of the contract (proto/oarcloud/v1) into packages/api/src/gen,
# with Debian's protoc and the ts-proto plugin, plus a binary descriptor set that the servers
# load for gRPC server reflection. Deterministic: CI regenerates and fails on any diff.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/packages/api/src/gen"
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
cd "$root/proto"
mapfile -t files < <(find oarcloud -name '*.proto' | LC_ALL=C sort)
protoc \
  --plugin=protoc-gen-ts_proto="$root/node_modules/.bin/protoc-gen-ts_proto" \
  --ts_proto_out="$out" \
  --ts_proto_opt=outputServices=grpc-js,esModuleInterop=true,importSuffix=.js,env=node,forceLong=number,useOptionals=none,oneof=unions-value,unrecognizedEnum=false,outputTypeRegistry=false,exportCommonSymbols=false \
  "${files[@]}"
protoc --include_imports --descriptor_set_out="$out/descriptor.binpb" "${files[@]}"
echo "generated $(find "$out" -type f | wc -l) files into ${out#"$root"/}"
