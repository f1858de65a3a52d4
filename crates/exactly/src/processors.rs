//! Ready-made processors.

use exactly_core::{Context, Output, ProcessError, Processor, Record};

/// Forwards each record's key, value and headers unchanged to one output topic: with the
/// runtime's dedup, once per message ID.
#[derive(Debug, Clone)]
pub struct Forward {
    output: String,
}

impl Forward {
    /// Forwards to `output`.
    pub fn to(output: impl Into<String>) -> Self {
        Self {
            output: output.into(),
        }
    }
}

impl Processor for Forward {
    fn process(&mut self, record: &Record<'_>, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        ctx.send(Output::forward(self.output.clone(), record));
        Ok(())
    }
}
