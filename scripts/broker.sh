#!/usr/bin/env bash
# The local Kafka-compatible test broker (noida-db, see DESIGN.md "Test broker and real Kafka").
#
#   scripts/broker.sh up       start it unless a broker already answers on the port; wait for it
#   scripts/broker.sh down     stop it and wait for the server process to exit (data is kept)
#   scripts/broker.sh status   say whether it is up and where (exit 0 up, 1 not up)
#   scripts/broker.sh env      print `export KAFKA_BOOTSTRAP=...` (use: eval "$(scripts/broker.sh env)"),
#                              and for the local broker `export EXACTLY_RESTORE_FROM=start`
#                              and `export EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE=true`
#
# EXACTLY_RESTORE_FROM=start (the apps' `--restore-from start`, config key `restore_from`): the
# local broker mis-filters read_committed fetches that start after an aborted transaction (they
# skip that producer's later committed records), so against it restores replay each changelog
# from its start. Apache Kafka and any cluster KAFKA_BOOTSTRAP names get the default, restores
# from the store's checkpoint (docs/configuration.md).
#
# EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE=true (config key `renew_producer_after_outage`): once
# restarted, the local broker no longer aborts the open transaction of a producer initialised
# before the restart when its transactional.id is initialised again (and it has no transaction
# timeout), so a crash in such a transaction holds the partitions' last stable offset for ever.
# Against it, a producer that saw all brokers down is replaced before the next transaction.
#
# Environment:
#   BROKER_PORT        Kafka port on 127.0.0.1 (default 29092)
#   BROKER_DATA_DIR    data dir (default target/broker-data); give each long test run its own,
#                      the broker keeps every record in memory
#   BROKER_START_WAIT  seconds `up` waits for the port (default 60)
#   BROKER_STOP_WAIT   seconds `down` waits for the server to exit (default 120)
#   KAFKA_BOOTSTRAP    if it names another cluster, `up` starts nothing and everything uses it
#
# The server's pid is in "$BROKER_DATA_DIR/noida.control.json"
# ({"pid":N,"port":CONTROL_PORT,"token":...}). `noida-db down` deletes that file at once but the
# server may go on snapshotting its in-memory data to kafka.json for a while, so `down` reads the
# pid first and waits for it. It never SIGKILLs the broker: that loses its data.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

CONTROL_FILE="$BROKER_DATA_DIR/noida.control.json"

# Prints the pid of the noida-db server running from BROKER_DATA_DIR, or nothing. Checks the
# command line too, so a recycled pid of a stale control file is not mistaken for the broker.
server_pid() {
	[[ -f "$CONTROL_FILE" ]] || return 0
	local pid
	pid="$(sed -n 's/.*"pid":[[:space:]]*\([0-9][0-9]*\).*/\1/p' "$CONTROL_FILE")"
	[[ -n "$pid" ]] || return 0
	if kill -0 "$pid" 2>/dev/null && server_cmdline "$pid" | grep -q noida-db; then
		echo "$pid"
	fi
}

server_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# The Kafka port the server PID was started with (from its command line), or nothing.
server_kafka_port() {
	server_cmdline "$1" | sed -n 's/.*--kafka-port[ =]\([0-9][0-9]*\).*/\1/p'
}

port_open() { tcp_open 127.0.0.1 "$BROKER_PORT"; }

cmd_up() {
	if uses_external_kafka; then
		log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP: using that cluster, not starting a local broker"
		return
	fi
	local pid
	pid="$(server_pid)"
	if [[ -n "$pid" && "$(server_kafka_port "$pid")" != "$BROKER_PORT" ]]; then
		die "the noida-db server of $BROKER_DATA_DIR (pid $pid) serves Kafka on port" \
			"$(server_kafka_port "$pid"), not $BROKER_PORT: stop it with '$0 down' or set BROKER_DATA_DIR"
	fi
	if port_open; then
		if [[ -n "$pid" ]]; then
			log "broker already up at $BROKER_LOCAL_ADDR (pid $pid, data dir $BROKER_DATA_DIR)"
		else
			log "a broker already answers at $BROKER_LOCAL_ADDR (not started from $BROKER_DATA_DIR); using it"
		fi
		return
	fi
	noida_ready || "$REPO_ROOT/scripts/setup.sh" venv
	mkdir -p "$BROKER_DATA_DIR"
	log "starting noida-db $NOIDA_VERSION: kafka on $BROKER_LOCAL_ADDR, data dir $BROKER_DATA_DIR"
	# `up` returns once the server is forked; the port may open a moment later.
	noida up --data-dir "$BROKER_DATA_DIR" --only kafka --kafka-port "$BROKER_PORT" ||
		log "noida-db up exited non-zero; waiting for the port anyway"
	local wait_s="${BROKER_START_WAIT:-60}" deadline=$((SECONDS + ${BROKER_START_WAIT:-60}))
	until port_open; do
		if ((SECONDS >= deadline)); then
			[[ -f "$BROKER_DATA_DIR/noida.log" ]] &&
				grep -v "weak version \`GLIBC_" "$BROKER_DATA_DIR/noida.log" | tail -n 20 >&2
			die "Kafka did not accept connections on $BROKER_LOCAL_ADDR within ${wait_s}s (log: $BROKER_DATA_DIR/noida.log)"
		fi
		sleep 0.2
	done
	log "broker up at $BROKER_LOCAL_ADDR (pid $(server_pid))"
}

cmd_down() {
	local pid
	pid="$(server_pid)"
	if [[ -z "$pid" ]]; then
		log "no broker running from $BROKER_DATA_DIR"
		return
	fi
	noida_ready || "$REPO_ROOT/scripts/setup.sh" venv
	noida down --data-dir "$BROKER_DATA_DIR"
	local wait_s="${BROKER_STOP_WAIT:-120}" deadline=$((SECONDS + ${BROKER_STOP_WAIT:-120}))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "broker pid $pid is still running after ${wait_s}s (probably still saving its data to" \
				"$BROKER_DATA_DIR); not killing it, since that loses data. Check again with: $0 status"
			exit 1
		fi
		sleep 0.2
	done
	log "broker stopped (pid $pid exited; data kept in $BROKER_DATA_DIR)"
}

cmd_status() {
	if uses_external_kafka; then
		local first="${KAFKA_BOOTSTRAP%%,*}"
		if tcp_open "${first%:*}" "${first##*:}"; then
			echo "external cluster KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP: $first accepts connections"
			return 0
		fi
		echo "external cluster KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP: $first does not accept connections"
		return 1
	fi
	local pid
	pid="$(server_pid)"
	if [[ -n "$pid" && "$(server_kafka_port "$pid")" != "$BROKER_PORT" ]]; then
		echo "not here: the noida-db server of $BROKER_DATA_DIR (pid $pid) serves Kafka on port $(server_kafka_port "$pid"), not $BROKER_PORT"
		return 1
	fi
	if port_open; then
		if [[ -n "$pid" ]]; then
			echo "up: kafka at $BROKER_LOCAL_ADDR (noida-db pid $pid, data dir $BROKER_DATA_DIR)"
		else
			echo "up: kafka at $BROKER_LOCAL_ADDR (not started from $BROKER_DATA_DIR)"
		fi
		return 0
	fi
	if [[ -n "$pid" ]]; then
		echo "not answering: noida-db pid $pid runs from $BROKER_DATA_DIR but $BROKER_LOCAL_ADDR is closed (starting, stopping, or another port)"
	else
		echo "down: nothing on $BROKER_LOCAL_ADDR (data dir $BROKER_DATA_DIR); start it with: $0 up"
	fi
	return 1
}

cmd_env() {
	if uses_external_kafka; then
		echo "export KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP"
	else
		echo "export KAFKA_BOOTSTRAP=$BROKER_LOCAL_ADDR"
		echo "export EXACTLY_RESTORE_FROM=${EXACTLY_RESTORE_FROM:-start}"
		echo "export EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE=${EXACTLY_RENEW_PRODUCER_AFTER_OUTAGE:-true}"
	fi
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
env) cmd_env ;;
*)
	echo "usage: $0 up|down|status|env" >&2
	exit 2
	;;
esac
