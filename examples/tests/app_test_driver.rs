//! `App::test_driver`: a TestDriver built from the app itself (its input topics, app id,
//! stores, timers and dead-letter topic), with several typed input topics, typed reads of the
//! outputs, and the crash points as for any TestDriver. No broker.

use exactly::codec::{Text, Utf8};
use exactly::{
    App, Context, ProcessError, Processor, Record, TaskId, Timer, TimerKind, Topic, TypedStore,
};
use exactly_testkit::{CrashPoint, StepOutcome, TestRecord};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reminder {
    order: String,
    open_cents: i64,
}

/// Orders (JSON) open an amount per order id; refunds (decimal text) on their own topic lower
/// it; an order still open 60 s of stream time after it came gets one reminder.
#[derive(Clone)]
struct Shop {
    orders: Topic<Order>,
    refunds: Topic<i64, String, Text, Utf8>,
    reminders: Topic<Reminder>,
    open: TypedStore<String, i64>,
}

impl Processor for Shop {
    fn process(&mut self, r: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        if self.orders.matches(r) {
            let m = self.orders.decode(r)?;
            let id = m
                .key
                .ok_or_else(|| ProcessError::dead_letter("no order id"))?;
            self.open.put(ctx, &id, &m.value.cents)?;
            return ctx.schedule(TimerKind::Stream, &id, r.timestamp.unwrap_or(0) + 60_000);
        }
        // A refund: its own task (another input topic), its own store instance.
        let m = self.refunds.decode(r)?;
        let id = m
            .key
            .ok_or_else(|| ProcessError::dead_letter("no order id"))?;
        let left = self.open.get(ctx, &id)?.unwrap_or(0) - m.value;
        self.open.put(ctx, &id, &left)
    }

    fn on_timer(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let order = String::from_utf8_lossy(&timer.key).into_owned();
        let open_cents = self.open.get(ctx, &order)?.unwrap_or(0);
        ctx.send(self.reminders.output(
            &order,
            &Reminder {
                order: order.clone(),
                open_cents,
            },
        )?);
        Ok(())
    }
}

fn app() -> (App, Shop) {
    let shop = Shop {
        orders: Topic::new("orders"),
        refunds: Topic::new("refunds"),
        reminders: Topic::new("reminders"),
        open: TypedStore::new("open"),
    };
    let app = App::new("shop")
        .input(&shop.orders)
        .input(&shop.refunds)
        .output(&shop.reminders)
        .store(&shop.open)
        .timers();
    (app, shop)
}

const T0: i64 = 1_700_000_000_000;

#[test]
fn the_driver_runs_the_apps_own_topics_stores_timers_and_dead_letter_topic() {
    let (app, shop) = app();
    let s = shop.clone();
    let mut d = app
        .test_driver(move |_: &TaskId| s.clone())
        .input("orders", 2)
        .build();
    assert_eq!(
        d.input_topics(),
        [("orders".to_owned(), 2), ("refunds".to_owned(), 1)]
    );
    let order = |id: &str, key: &str, cents: i64, at: i64| {
        TestRecord::with_id(id)
            .typed_key(&shop.orders, &key.to_owned())
            .typed_value(&shop.orders, &Order { cents })
            .timestamp(T0 + at)
    };
    d.pipe(order("m1", "o-1", 500, 0));
    d.pipe(order("m1", "o-1", 500, 0)); // a resend
    d.pipe(order("m2", "o-2", 700, 1_000));
    d.pipe(
        TestRecord::with_id("m3")
            .key("o-3")
            .value("{")
            .topic("orders")
            .timestamp(T0),
    );
    d.pipe(
        TestRecord::with_id("r1")
            .typed_key(&shop.refunds, &"o-1".to_owned())
            .typed_value(&shop.refunds, &200)
            .timestamp(T0 + 2_000),
    );
    d.pipe(
        TestRecord::with_id("r2")
            .key("o-1")
            .value("two")
            .topic("refunds")
            .timestamp(T0 + 2_000),
    );
    // A crash between the commit and the store apply: the restart restores both inputs' tasks.
    assert_eq!(
        d.step_and_crash(CrashPoint::AfterCommitBeforeApply)
            .unwrap(),
        StepOutcome::Crashed(CrashPoint::AfterCommitBeforeApply)
    );
    d.restart().unwrap();
    d.run_until_idle().unwrap();
    assert_eq!(d.read_output(&shop.reminders), []);
    // Stream time of o-1's and o-2's tasks passes their reminders only with later orders in
    // their own partitions.
    for (id, key) in [("m4", "o-1"), ("m5", "o-2")] {
        d.pipe(order(id, &format!("{key}-next"), 1, 61_000).partition(partition_of(key)));
    }
    d.run_until_idle().unwrap();
    let mut reminders: Vec<Reminder> = d
        .read_output(&shop.reminders)
        .into_iter()
        .map(|m| m.value)
        .collect();
    reminders.sort_by(|a, b| a.order.cmp(&b.order));
    assert_eq!(
        reminders,
        [
            // The refund went to the refunds topic's task: the order's own store still
            // holds 500 (tasks are per input partition; see docs/state.md).
            Reminder {
                order: "o-1".into(),
                open_cents: 500
            },
            Reminder {
                order: "o-2".into(),
                open_cents: 700
            },
        ]
    );
    // Records that do not decode, on either input, went to the app's dead-letter topic.
    let mut kinds: Vec<(String, String)> = d
        .dead_letters()
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(r.header("exactly.source.topic").unwrap()).into_owned(),
                String::from_utf8_lossy(r.header("exactly.error.kind").unwrap()).into_owned(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("orders".to_owned(), "deserialization".to_owned()),
            ("refunds".to_owned(), "deserialization".to_owned())
        ]
    );
    assert_eq!(d.committed_offset_of("refunds", 0), Some(2));
}

/// The partition the driver pipes `key` to on `orders` (2 partitions).
fn partition_of(key: &str) -> i32 {
    exactly_testkit::sim::partition_of(key.as_bytes(), 2)
}
