//! order-validation: a realistic exactly app. Reads JSON orders, validates them against a
//! small product catalogue, prices them, and writes each valid order once to `--output` as an
//! enriched JSON record, keyed by customer. Orders that can never be valid go to the
//! dead-letter topic in the same transaction, with the reason in the `exactly.error` header:
//! records that are not JSON orders with `exactly.error.kind = deserialization` (the typed
//! input topic decodes them), unknown SKUs and non-positive quantities with `processor_error`.
//! A resent order is neither priced nor dead-lettered twice, and each priced order carries its
//! input's message ID, so a downstream exactly app dedups it without code.
//!
//! ```text
//! cargo run -p exactly-examples --bin order-validation -- \
//!     --input orders --output orders-priced --app-id order-validation --instance-id 0
//! ```
//!
//! Input value: `{"order_id":"o-1","customer":"c-7","sku":"kb-01","quantity":2}` with the
//! message ID in the `message-id` header (the order id is a good choice).

use clap::Parser;
use exactly::cli::RunArgs;
use exactly::{Context, InitContext, ProcessError, Processor, Record, Topic};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    about = "Validate and price orders, exactly once; invalid orders go to the dead-letter topic"
)]
struct Args {
    /// Input topic of JSON orders.
    #[arg(long, default_value = "orders")]
    input: String,
    /// Output topic of priced orders (must exist).
    #[arg(long, default_value = "orders-priced")]
    output: String,
    /// Application id (consumer group, internal topic prefix; DLQ `{app-id}-dlq`).
    #[arg(long, default_value = "order-validation")]
    app_id: String,
    #[command(flatten)]
    run: RunArgs,
}

/// An incoming order.
#[derive(Debug, Deserialize)]
struct Order {
    order_id: String,
    customer: String,
    sku: String,
    quantity: i64,
}

/// What the app writes for a valid order.
#[derive(Debug, Serialize)]
struct PricedOrder {
    order_id: String,
    customer: String,
    sku: String,
    quantity: i64,
    unit_price_cents: i64,
    total_cents: i64,
    /// Input partition and offset: where this order came from.
    source: String,
}

/// Unit prices in cents, by SKU. Shared read-only by every task.
type Catalogue = Arc<HashMap<String, i64>>;

struct ValidateOrders {
    orders: Topic<Order>,
    priced_orders: Topic<PricedOrder>,
    catalogue: Catalogue,
    /// Valid orders this task priced since it started (logged at close).
    priced: u64,
}

impl Processor for ValidateOrders {
    fn init(&mut self, ctx: &mut InitContext<'_>) -> Result<(), ProcessError> {
        tracing::info!(task = %ctx.task(), skus = self.catalogue.len(), "order validation task started");
        Ok(())
    }

    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let order = self.orders.value(record)?;
        let unit = *self
            .catalogue
            .get(&order.sku)
            .ok_or_else(|| ProcessError::dead_letter(format!("unknown sku `{}`", order.sku)))?;
        if order.quantity <= 0 {
            return Err(ProcessError::dead_letter(format!(
                "quantity must be positive, got {}",
                order.quantity
            )));
        }
        let total = unit.checked_mul(order.quantity).ok_or_else(|| {
            ProcessError::dead_letter(format!("total overflows for quantity {}", order.quantity))
        })?;
        let priced = PricedOrder {
            quantity: order.quantity,
            unit_price_cents: unit,
            total_cents: total,
            source: format!("{}-{}@{}", record.topic, record.partition, record.offset),
            order_id: order.order_id,
            customer: order.customer,
            sku: order.sku,
        };
        ctx.send(self.priced_orders.output(&priced.customer, &priced)?);
        self.priced += 1;
        Ok(())
    }

    fn close(&mut self) {
        tracing::info!(priced = self.priced, "order validation task closed");
    }
}

/// The demo catalogue; a real app would load it at start (e.g. from a compacted topic).
fn catalogue() -> Catalogue {
    Arc::new(
        [
            ("kb-01", 4_999),
            ("ms-02", 2_499),
            ("hd-03", 8_900),
            ("cb-04", 999),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
}

fn main() -> anyhow::Result<()> {
    exactly::logging::init();
    let args = Args::parse();
    let orders: Topic<Order> = Topic::new(args.input);
    let priced_orders: Topic<PricedOrder> = Topic::new(args.output);
    let app = args
        .run
        .app(args.app_id)?
        .input(&orders)
        .output(&priced_orders);
    let catalogue = catalogue();
    app.run(move |_| ValidateOrders {
        orders: orders.clone(),
        priced_orders: priced_orders.clone(),
        catalogue: catalogue.clone(),
        priced: 0,
    })?;
    Ok(())
}
