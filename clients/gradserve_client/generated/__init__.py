"""Generated from proto/inference.proto by scripts/gen_proto.sh; do not edit."""
