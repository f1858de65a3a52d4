//! The errors of this crate.

use std::net::SocketAddr;

/// What can go wrong while defining metrics or serving them.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric definition was rejected by the registry. This is a bug in this crate (a bad
    /// name, a duplicate, inconsistent labels), not something a user's configuration causes.
    #[error("defining metric `{metric}` failed: {source}")]
    Define {
        /// The metric's full name.
        metric: String,
        /// The registry's reason.
        #[source]
        source: prometheus::Error,
    },
    /// The `app` or `instance` label value is empty.
    #[error("the `{label}` label of the metrics must not be empty")]
    EmptyLabel {
        /// `app` or `instance`.
        label: &'static str,
    },
    /// The HTTP endpoint could not listen on its address.
    #[error(
        "cannot listen for /metrics on {addr}: {source}. Another process may use that port: \
         change `metrics.addr` (port 0 picks a free one)"
    )]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener could not tell its own address.
    #[error("cannot read the local address of the /metrics listener: {0}")]
    LocalAddr(#[source] std::io::Error),
}
