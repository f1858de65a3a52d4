"""Quix Streams peer of the pipeline benchmark: exactly-once deduplication by message ID.

The pipeline benchmark (`cargo run --release -p exactly-benches --bin pipeline`) installs
Quix Streams into its own venv and starts this file as one of its modes ("quix-streams"):

    <venv>/bin/python dedup.py --bootstrap HOST:PORT --input IN --output OUT \
        --group GROUP --state-dir DIR --commit-interval 0.1 [--commit-every N] [--kafka K=V]...

It follows Quix's own deduplication recipe (docs: "Stateful Applications", fixed-window
dedup, without the TTL): a stateful `StreamingDataFrame.filter` looks the record's message
ID up in the RocksDB-backed `State` of its key and drops the record if the ID was seen,
else records the ID and lets it through. `to_topic` forwards the survivors unchanged: key,
value, headers and timestamp. The input's key is the message ID, so a resent ID lands on its
original's partition and key, where the per-key state holds it. Quix commits with Kafka
transactions (`processing_guarantee="exactly-once"`). SIGTERM stops it gracefully. Nothing is
printed per record.
"""

import argparse

from quixstreams import Application, State

HEADER = "message-id"


def message_id(key, headers):
    """The `message-id` header, else the key: the ID to deduplicate on, as text (state keys
    are JSON-serialised, and the benchmark's IDs are ASCII)."""
    for name, value in headers or ():
        if name == HEADER and value is not None:
            return value.decode("ascii", "replace")
    return key.decode("ascii", "replace")


def is_new(value, key, timestamp, headers, state: State) -> bool:
    """Quix's dedup recipe: keep a record only the first time its ID is seen."""
    msg_id = message_id(key, headers)
    if state.get(msg_id) is not None:
        return False
    state.set(msg_id, 1)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--commit-interval", type=float, required=True, help="seconds")
    parser.add_argument("--commit-every", type=int, default=0, help="records, 0: off")
    parser.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    # librdkafka properties the benchmark gives every mode's clients.
    extra = dict(kv.split("=", 1) for kv in args.kafka)
    # As exactly's consumers do: the local test broker ignores fetch.max.bytes and answers a
    # fetch with all it has, which a backlog makes larger than librdkafka's default limit.
    consumer_extra = {"receive.message.max.bytes": "1000000000", **extra}

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        state_dir=args.state_dir,
        processing_guarantee="exactly-once",
        consumer_extra_config=consumer_extra,
        producer_extra_config=extra,
    )
    # Bytes in, bytes out: the records pass through as they are.
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="bytes")
    sdf = app.dataframe(source)
    sdf = sdf.filter(is_new, stateful=True, metadata=True)
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
