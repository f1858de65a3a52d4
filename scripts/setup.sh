#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test exactly. Idempotent: a second
# run changes nothing and says so.
#
#   scripts/setup.sh          everything: apt packages, the test-broker venv, cargo-nextest
#   scripts/setup.sh venv     only the test-broker venv (used by broker.sh)
#
# apt packages: libclang-dev (bindgen for librocksdb-sys), libssl-dev + pkg-config (rdkafka's
# `ssl` feature against the machine's OpenSSL), python3-venv (the venv below).
# venv: target/noida-venv with noida-db==0.2.3, the local Kafka-compatible test broker.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(libclang-dev libssl-dev pkg-config python3-venv)

as_root() {
	if [[ "$(id -u)" == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

ensure_apt_packages() {
	local missing=() p
	for p in "${APT_PACKAGES[@]}"; do
		if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
			missing+=("$p")
		fi
	done
	if ((${#missing[@]} == 0)); then
		log "apt packages present: ${APT_PACKAGES[*]}"
		return
	fi
	log "installing apt packages: ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The interpreter the venv is made from: $PYTHON if set, else Debian's python3 (python3-venv
# above belongs to it), else whatever python3 is on PATH.
venv_python() {
	if [[ -n "${PYTHON:-}" ]]; then
		echo "$PYTHON"
	elif [[ -x /usr/bin/python3 ]]; then
		echo /usr/bin/python3
	else
		command -v python3 || die "python3 not found; install Debian's python3"
	fi
}

ensure_noida_venv() {
	if noida_ready; then
		log "noida-db $NOIDA_VERSION present in $NOIDA_VENV"
		return
	fi
	if [[ ! -x "$NOIDA_VENV/bin/python" ]] || ! "$NOIDA_VENV/bin/python" -m pip --version >/dev/null 2>&1; then
		local py
		py="$(venv_python)"
		log "creating venv $NOIDA_VENV (from $py)"
		mkdir -p "$(dirname -- "$NOIDA_VENV")"
		"$py" -m venv --clear "$NOIDA_VENV"
	fi
	log "installing noida-db==$NOIDA_VERSION into $NOIDA_VENV"
	"$NOIDA_VENV/bin/python" -m pip install -q --disable-pip-version-check "noida-db==$NOIDA_VERSION"
	noida_ready || die "noida-db $NOIDA_VERSION is not usable in $NOIDA_VENV after installing it"
}

ensure_nextest() {
	command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"
	if cargo nextest --version >/dev/null 2>&1; then
		log "cargo-nextest present ($(cargo nextest --version 2>/dev/null | head -n1))"
		return
	fi
	log "installing cargo-nextest"
	cargo install cargo-nextest --locked
}

case "${1:-all}" in
all)
	ensure_apt_packages
	ensure_noida_venv
	ensure_nextest
	;;
venv) ensure_noida_venv ;;
*) die "usage: $0 [all|venv]" ;;
esac
