#!/usr/bin/env bash
# Generate the Python gRPC stubs from proto/inference.proto into both packages that
# ship them: the service (service/gradserve/grpc/generated) and the client SDK
# (clients/gradserve_client/generated).
#
#   bash scripts/gen_proto.sh          regenerate in place   (make proto)
#   bash scripts/gen_proto.sh --check  regenerate into a temp dir and diff; exit 1 on
#                                      drift                  (make proto-check; a test)
#
# Both copies come from the same file under the same proto path ("inference.proto"),
# so their serialized descriptors are byte-identical: protobuf's default pool accepts
# an identical file twice, and both modules can be imported in one process.
# protoc writes `import inference_pb2` in the _grpc module (a top-level import); we
# turn it into a relative import so each copy uses its own package's messages.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="python3"
BIN="$(dirname "$PY")"
TARGETS=("service/gradserve/grpc/generated" "clients/gradserve_client/generated")

generate() {  # generate OUT_DIR: write the stubs and __init__.py into OUT_DIR
    local out="$1"
    mkdir -p "$out"
    local plugins=()
    # .pyi stubs via mypy-protobuf when installed, so mypy checks callers of the stubs.
    if [ -x "$BIN/protoc-gen-mypy" ] && [ -x "$BIN/protoc-gen-mypy_grpc" ]; then
        plugins=(
            "--plugin=protoc-gen-mypy=$BIN/protoc-gen-mypy" "--mypy_out=$out"
            "--plugin=protoc-gen-mypy_grpc=$BIN/protoc-gen-mypy_grpc" "--mypy_grpc_out=$out"
        )
    fi
    # (mypy-protobuf prints "Writing mypy to ..." per file; only real errors are shown.)
    (cd "$ROOT/proto" && "$PY" -m grpc_tools.protoc -I. \
        --python_out="$out" --grpc_python_out="$out" "${plugins[@]}" inference.proto) \
        2> >(grep -v '^Writing mypy to' >&2)
    sed -i 's/^import inference_pb2 as inference__pb2$/from . import inference_pb2 as inference__pb2/' \
        "$out/inference_pb2_grpc.py"
    if [ -f "$out/inference_pb2_grpc.pyi" ]; then
        sed -i 's/^import inference_pb2$/from . import inference_pb2/' "$out/inference_pb2_grpc.pyi"
    fi
    cat >"$out/__init__.py" <<'EOF'
"""Generated from proto/inference.proto by scripts/gen_proto.sh; do not edit."""
EOF
}

if [ "${1:-}" = "--check" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    generate "$tmp/gen"
    status=0
    for target in "${TARGETS[@]}"; do
        if ! diff -r -q -x '__pycache__' "$tmp/gen" "$ROOT/$target" >/dev/null 2>&1; then
            echo "gen_proto: $target is out of date with proto/inference.proto; run: make proto" >&2
            diff -r -u -x '__pycache__' "$tmp/gen" "$ROOT/$target" | head -n 40 >&2 || true
            status=1
        fi
    done
    [ "$status" = 0 ] && echo "gen_proto: stubs match proto/inference.proto"
    exit "$status"
fi

for target in "${TARGETS[@]}"; do
    rm -f "$ROOT/$target"/inference_pb2*.py "$ROOT/$target"/inference_pb2*.pyi
    generate "$ROOT/$target"
    echo "gen_proto: wrote $target"
done
