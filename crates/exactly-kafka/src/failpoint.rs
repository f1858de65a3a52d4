//! Crash points for process-level tests: `TEST_FAILPOINT=<point>:<n>` makes the process
//! SIGKILL itself the `n`-th time (1-based, counted over all stream threads) it reaches
//! `point`; `<point>:<n>:stop` makes it SIGSTOP itself there instead (a zombie frozen at a
//! known step; SIGCONT continues it), and `<point>:<n>:panic` panics the stream thread there
//! (a bug outside the processor, in the engine, a store or a sink). Unset (the normal case)
//! it costs one relaxed load per point reached.
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

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Stop,
    Panic,
}

static ARMED: OnceLock<Option<(Point, u64, Action)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<(Point, u64, Action)> {
    *ARMED.get_or_init(|| {
        let v = std::env::var("TEST_FAILPOINT").ok().filter(|v| !v.is_empty())?;
        let mut parts = v.split(':');
        let parsed = (|| {
            let point = Point::parse(parts.next()?)?;
            let n = parts.next()?.parse::<u64>().ok()?;
            let action = match parts.next() {
                None => Action::Kill,
                Some("stop") => Action::Stop,
                Some("panic") => Action::Panic,
                Some(_) => return None,
            };
            parts.next().is_none().then_some((point, n, action))
        })();
        match parsed {
            Some(a) => {
                tracing::warn!(failpoint = %v, "TEST_FAILPOINT is set: this process will SIGKILL, SIGSTOP or panic itself (test hook)");
                Some(a)
            }
            None => {
                tracing::error!(value = %v, "TEST_FAILPOINT must be <before_send|after_send|during_commit|after_commit>:<n>[:stop|:panic]; ignored");
                None
            }
        }
    })
}

/// Called when the protocol reaches `point`; kills the process if that is the armed hit.
pub(crate) fn hit(point: Point) {
    let Some((armed_point, n, action)) = armed() else {
        return;
    };
    if armed_point != point || HITS.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return;
    }
    if action == Action::Panic {
        panic!("TEST_FAILPOINT: panic at {point:?} (hit {n})");
    }
    if action == Action::Stop {
        eprintln!("TEST_FAILPOINT: SIGSTOP at {point:?} (hit {n})");
        // SAFETY: kill(2) on our own pid; the process stops here until SIGCONT.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
        eprintln!("TEST_FAILPOINT: continued after SIGSTOP at {point:?}");
        return;
    }
    eprintln!("TEST_FAILPOINT: SIGKILL at {point:?} (hit {n})");
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
