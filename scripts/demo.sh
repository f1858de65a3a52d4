#!/usr/bin/env bash
# The demo command: sets up, starts the local test broker (unless KAFKA_BOOTSTRAP names another
# cluster) and runs `exactly demo` with this script's arguments.
#
#   scripts/demo.sh [exactly demo arguments]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"
"$REPO_ROOT/scripts/broker.sh" up
eval "$("$REPO_ROOT/scripts/broker.sh" env)"
export KAFKA_BOOTSTRAP
# Build the whole workspace the way scripts/test.sh does (same features, one build of rocksdb
# and librdkafka for both commands), then run the demo.
cargo build --workspace --all-targets
exec "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/exactly" demo "$@"
