#!/usr/bin/env bash
# The test command: every test of the workspace, against the local test broker (or the cluster
# KAFKA_BOOTSTRAP names).
#
#   scripts/test.sh [extra `cargo nextest run` arguments, e.g. a test filter]
#
# 1. scripts/setup.sh (installs what is missing), 2. scripts/broker.sh up, unless KAFKA_BOOTSTRAP
# names another cluster, 3. `cargo nextest run --workspace --no-fail-fast` (profile `ci` from
# .config/nextest.toml when CI=true), 4. `cargo test --workspace --doc` (nextest does not run
# doctests), 5. scripts/check-publish.sh --quick (packaging, docs, feature sets). Every
# step runs even if an earlier one fails; the exit code is non-zero if any did.
# The broker is left running for the next run; STOP_BROKER=1 stops it at the end.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"

if uses_external_kafka; then
	log "testing against KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
else
	"$REPO_ROOT/scripts/broker.sh" up
	if [[ "${STOP_BROKER:-0}" == 1 ]]; then
		trap '"$REPO_ROOT/scripts/broker.sh" down || true' EXIT
	fi
fi
eval "$("$REPO_ROOT/scripts/broker.sh" env)"
export KAFKA_BOOTSTRAP

profile_args=()
if [[ "${CI:-}" == true || "${CI:-}" == 1 ]] && [[ -z "${NEXTEST_PROFILE:-}" ]]; then
	profile_args=(--profile ci)
fi

LOG_DIR="$REPO_ROOT/target/test-logs"
mkdir -p "$LOG_DIR"
# Tests that find no broker, PostgreSQL or Redis skip outside CI (under CI=true they fail) and
# are reported as passed by the runner; they append a line here, counted in the closing line.
# Not an `EXACTLY_*` name: those configure the apps, and their loader refuses unknown keys.
export TEST_SKIP_LOG="$LOG_DIR/skipped-for-missing-service.txt"
rm -f "$TEST_SKIP_LOG"

# run_logged NAME CMD...: runs CMD with its output shown and kept in $LOG_DIR/NAME.log; returns
# its exit code (not tee's).
run_logged() {
	local name="$1" rc
	shift
	log "running: $*"
	set +e
	"$@" 2>&1 | tee "$LOG_DIR/$name.log"
	rc=${PIPESTATUS[0]}
	set -e
	return "$rc"
}

strip_ansi() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$@"; }
# count WORD LINE: the number before WORD in LINE, or 0.
count() { grep -oE "[0-9]+ $1" <<<"$2" | head -n1 | grep -oE '^[0-9]+' || echo 0; }

nextest_rc=0
run_logged nextest cargo nextest run --workspace --no-fail-fast "${profile_args[@]}" "$@" || nextest_rc=$?
doc_rc=0
run_logged doctest cargo test --workspace --doc || doc_rc=$?
# The library crates are publishable: `cargo package` takes them (metadata, file list); the
# API docs of the crates that do not link RocksDB or librdkafka build without a warning (those
# four need a second, check-mode build of both, about 20 minutes on 2 cores:
# scripts/check-publish.sh documents every crate); each feature set of the facade, which an
# app may pick (the workspace build unifies them all), compiles without a warning.
publish_rc=0
run_logged package "$REPO_ROOT/scripts/check-publish.sh" --quick || publish_rc=$?

# One closing line for both runners: nextest's summary plus the doctests' `test result:` lines.
summary="$(strip_ansi "$LOG_DIR/nextest.log" | grep -E '^ *Summary \[' | tail -n1 || true)"
passed=$(count passed "$summary")
failed=$(($(count failed "$summary") + $(count 'timed out' "$summary")))
skipped=$(count skipped "$summary")
while read -r line; do
	passed=$((passed + $(count passed "$line")))
	failed=$((failed + $(count failed "$line")))
	skipped=$((skipped + $(count ignored "$line")))
done < <(strip_ansi "$LOG_DIR/doctest.log" | grep -E '^test result:' || true)

echo
echo "nextest: $([[ $nextest_rc == 0 ]] && echo ok || echo "FAILED (exit $nextest_rc)")${summary:+ —$(sed 's/^ *Summary//' <<<"$summary")}"
echo "doctests: $([[ $doc_rc == 0 ]] && echo ok || echo "FAILED (exit $doc_rc)")"
echo "scripts/check-publish.sh --quick (cargo package, docs, facade feature sets; no warnings): $([[ $publish_rc == 0 ]] && echo ok || echo "FAILED (see $LOG_DIR/package.log)")"
if [[ -z "$summary" && $nextest_rc != 0 ]]; then
	echo "nextest printed no summary: the build failed or no test ran (see $LOG_DIR/nextest.log)"
fi
missing_service=0
if [[ -f "$TEST_SKIP_LOG" ]]; then
	missing_service=$(wc -l <"$TEST_SKIP_LOG")
fi
if ((missing_service > 0)); then
	echo "$missing_service of the tests reported passed skipped for a missing service (listed in $TEST_SKIP_LOG)"
fi
echo "total: $passed passed, $failed failed, $skipped skipped, $missing_service skipped for a missing service"
((nextest_rc == 0 && doc_rc == 0 && publish_rc == 0))
