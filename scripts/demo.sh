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
# Build only what the demo runs, the `exactly` CLI (crates/exactly-cli); scripts/test.sh builds
# the rest of the workspace later with the same rocksdb and librdkafka.
cargo build -p exactly-cli --bin exactly
exec "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/exactly" demo "$@"
