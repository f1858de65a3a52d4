#!/usr/bin/env bash
# Checks that the library crates are publishable and their docs and feature sets are clean:
#
#   scripts/check-publish.sh [--quick]
#
# 1. `cargo package --no-verify` of every library crate (metadata, file list), no warning;
# 2. `cargo doc --no-deps` with warnings denied: of every library crate, or with --quick (what
#    scripts/test.sh runs) of those that do not link RocksDB or librdkafka. rustdoc needs a
#    check-mode build of its dependencies, and cargo does not share the -sys crates' build
#    between check and build mode: documenting exactly-state, exactly-kafka, exactly and
#    exactly-cli builds RocksDB and librdkafka a second time (about 20 minutes on 2 cores);
# 3. the facade `exactly` with each of its features alone (and none) builds without a warning
#    (build mode: it reuses the test build's RocksDB and librdkafka).
# Exits non-zero if any step fails or warns.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

quick=0
[[ "${1:-}" == --quick ]] && quick=1
rc=0
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# step NAME CMD...: runs CMD; fails the script if it fails or prints a warning.
step() {
	local name="$1"
	shift
	log "$name: $*"
	if ! "$@" >"$out" 2>&1; then
		cat "$out"
		log "$name: FAILED"
		rc=1
	elif grep -E '^warning' "$out"; then
		log "$name: warnings (above)"
		rc=1
	fi
}

unpublished=(--exclude exactly-examples --exclude exactly-benches)
step "package" cargo package --workspace --no-verify --allow-dirty "${unpublished[@]}"
if ((quick)); then
	step "docs (crates without RocksDB/librdkafka)" env RUSTDOCFLAGS="-D warnings" \
		cargo doc --no-deps -p exactly-core -p exactly-metrics -p exactly-testkit -p exactly-sinks
else
	step "docs" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps "${unpublished[@]}"
fi
for features in "" logging cli postgres redis testkit failpoints; do
	step "exactly with features [${features}]" cargo build -p exactly --no-default-features \
		${features:+--features "$features"}
done
if ((rc == 0)); then
	log "publishable: packages, docs and feature sets without warnings"
fi
exit "$rc"
