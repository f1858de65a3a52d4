# Shared helpers for the scripts in this folder. Source it; do not run it.
#
# Defines:
#   REPO_ROOT          absolute path of the repository (computed from this file's location)
#   NOIDA_VERSION      the pinned test-broker version (DESIGN.md: noida-db==0.2.3)
#   NOIDA_VENV         the venv holding it: $REPO_ROOT/target/noida-venv
#   BROKER_PORT        local Kafka port (default 29092)
#   BROKER_DATA_DIR    local broker data dir, absolute (default $REPO_ROOT/target/broker-data)
#   BROKER_LOCAL_ADDR  127.0.0.1:$BROKER_PORT
# and the functions below.

REPO_ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
NOIDA_VERSION="0.2.3"
NOIDA_VENV="$REPO_ROOT/target/noida-venv"
BROKER_PORT="${BROKER_PORT:-29092}"
BROKER_DATA_DIR="${BROKER_DATA_DIR:-$REPO_ROOT/target/broker-data}"
# A relative BROKER_DATA_DIR is taken relative to the caller's working directory.
case "$BROKER_DATA_DIR" in
/*) ;;
*) BROKER_DATA_DIR="$PWD/$BROKER_DATA_DIR" ;;
esac
BROKER_LOCAL_ADDR="127.0.0.1:$BROKER_PORT"

log() { printf '%s: %s\n' "$(basename -- "$0")" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$(basename -- "$0")" "$*" >&2
	exit 1
}

# tcp_open HOST PORT: true when something accepts a TCP connection there (2 s bound, so a
# black-holed address cannot hang a script).
tcp_open() {
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# True when KAFKA_BOOTSTRAP names a cluster other than the local test broker.
uses_external_kafka() {
	[[ -n "${KAFKA_BOOTSTRAP:-}" ]] || return 1
	case "$KAFKA_BOOTSTRAP" in
	"$BROKER_LOCAL_ADDR" | "localhost:$BROKER_PORT") return 1 ;;
	*) return 0 ;;
	esac
}

# Prints the installed noida-db version in the venv, or nothing.
noida_installed_version() {
	[[ -x "$NOIDA_VENV/bin/python" ]] || return 0
	"$NOIDA_VENV/bin/python" - <<'EOF' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("noida-db"))
except m.PackageNotFoundError:
    pass
EOF
}

noida_ready() {
	[[ "$(noida_installed_version)" == "$NOIDA_VERSION" && -x "$NOIDA_VENV/bin/noida-db" ]]
}

# Runs the venv's noida-db, output to stderr. Its bundled binary prints a GLIBC "weak version"
# warning at every start; that is harmless (DESIGN.md), so it is filtered out, as are the lines
# about the services we did not enable.
noida() {
	local out rc=0
	out="$("$NOIDA_VENV/bin/noida-db" "$@" 2>&1)" || rc=$?
	printf '%s\n' "$out" | grep -v -e "weak version \`GLIBC_" -e '^[[:space:]]*○ ' | sed '/^$/d' >&2 || true
	return "$rc"
}
