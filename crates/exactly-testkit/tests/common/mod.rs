#![allow(dead_code)]
use exactly_core::{Context, Output, ProcessError, Processor, Record, TaskId};
use exactly_testkit::{check_exactly_once, ExactlyOnceReport, SimRecord};

/// Emits `value` (a decimal digit) outputs per record, each tagged with the input's message
/// ID and its index, so the oracle can count outputs per ID.
pub struct Fanout;

impl Processor for Fanout {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let n = fanout_of(record.value.unwrap_or(b"1"));
        let id = ctx.message_id().unwrap_or(b"").to_vec();
        for i in 0..n {
            ctx.send(
                Output::to("out")
                    .key(record.key.unwrap_or(b"").to_vec())
                    .value(record.value.unwrap_or(b"").to_vec())
                    .header("message-id", id.clone())
                    .header("n", i.to_string()),
            );
        }
        Ok(())
    }
}

pub fn fanout(_: &TaskId) -> Fanout {
    Fanout
}

pub fn fanout_of(value: &[u8]) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

pub fn id_of(r: &SimRecord) -> String {
    String::from_utf8_lossy(r.header("message-id").unwrap_or(b"<none>")).into_owned()
}

/// Checks the committed outputs: each input ID produced exactly `fanout` outputs, and each
/// (ID, index) pair appears once.
pub fn oracle(inputs: &[(String, u64)], outputs: &[SimRecord]) -> ExactlyOnceReport {
    let fan: std::collections::HashMap<&str, u64> =
        inputs.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    let report = check_exactly_once(
        inputs.iter().map(|(id, _)| id.clone()),
        outputs.iter().map(id_of),
        |id| fan[id.as_str()],
    );
    let pairs = check_exactly_once(
        inputs
            .iter()
            .flat_map(|(id, n)| (0..*n).map(move |i| format!("{id}#{i}"))),
        outputs.iter().map(|r| {
            format!(
                "{}#{}",
                id_of(r),
                String::from_utf8_lossy(r.header("n").unwrap_or(b"?"))
            )
        }),
        |_| 1,
    );
    assert!(
        pairs.duplicated.is_empty() && pairs.missing.is_empty(),
        "per-index check:\n{pairs}"
    );
    report
}
