//! Crash points for process-level tests: `EXACTLY_FAILPOINT=<point>:<n>` makes the process
//! SIGKILL itself the `n`-th time (1-based, counted over all stream threads) it reaches
//! `point`. Unset (the normal case) it costs one relaxed load per point reached.
//!
//! | point | where the process dies |
//! |---|---|
//! | `before_send` | a batch was processed, before its first record is handed to the producer |
//! | `after_send` | every record of the transaction was sent, before its offsets are sent |
//! | `during_commit` | a helper thread kills the process 0–2 ms into `commit_transaction` |
//! | `after_commit` | the transaction committed, before the stores apply its IDs |

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A place in the protocol where a test may crash the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before the first send of a transaction.
    BeforeSend,
    /// All sends done; before the offsets and the commit.
    AfterSend,
    /// While `commit_transaction` is in flight (outcome unknown to the process).
    DuringCommit,
    /// Committed; before the store apply.
    AfterCommit,
}

impl Point {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "before_send" => Self::BeforeSend,
            "after_send" => Self::AfterSend,
            "during_commit" => Self::DuringCommit,
            "after_commit" => Self::AfterCommit,
            _ => return None,
        })
    }
}

static ARMED: OnceLock<Option<(Point, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<(Point, u64)> {
    *ARMED.get_or_init(|| {
        let v = std::env::var("EXACTLY_FAILPOINT").ok().filter(|v| !v.is_empty())?;
        let parsed = v.split_once(':').and_then(|(p, n)| Some((Point::parse(p)?, n.parse::<u64>().ok()?)));
        match parsed {
            Some(a) => {
                tracing::warn!(failpoint = %v, "EXACTLY_FAILPOINT is set: this process will SIGKILL itself (test hook)");
                Some(a)
            }
            None => {
                tracing::error!(value = %v, "EXACTLY_FAILPOINT must be <before_send|after_send|during_commit|after_commit>:<n>; ignored");
                None
            }
        }
    })
}

/// Called when the protocol reaches `point`; kills the process if that is the armed hit.
pub(crate) fn hit(point: Point) {
    let Some((armed_point, n)) = armed() else {
        return;
    };
    if armed_point != point || HITS.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return;
    }
    eprintln!("EXACTLY_FAILPOINT: SIGKILL at {point:?} (hit {n})");
    if point == Point::DuringCommit {
        // Die while the commit request is in flight, not before it is sent.
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_micros(rand_delay_us()));
            kill_self();
        });
    } else {
        kill_self();
    }
}

fn rand_delay_us() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos % 2_000)
}

fn kill_self() {
    // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, the process ends here.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
