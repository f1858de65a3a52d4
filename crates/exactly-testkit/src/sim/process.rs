//! A simulated OS process (one app instance): it can be killed (SIGKILL) at any operation or
//! protocol step, paused (SIGSTOP), or frozen in the middle of an operation while the rest of
//! the simulation goes on.

use exactly_core::engine::{ClientError, ClientErrorKind, Step};
use std::sync::{Mutex, MutexGuard};

/// Where a simulated process is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillPoint {
    /// At its `n`-th operation (1-based: a client call or a store write), before it takes
    /// effect.
    Before(u64),
    /// Right after its `n`-th operation took effect: the caller never learns the result.
    After(u64),
    /// When the protocol reaches this step.
    Step(Step),
    /// At the next operation named `during` (e.g. `"commit_transaction"`), before it takes
    /// effect.
    BeforeCall(&'static str),
    /// Right after the next operation named `during` took effect.
    AfterCall(&'static str),
}

type Hook = Box<dyn FnOnce() + Send>;

/// Where a freeze happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FreezeAt {
    Op(u64),
    Call(&'static str),
}

#[derive(Default)]
struct State {
    killed: bool,
    paused: bool,
    ops: u64,
    kill: Option<KillPoint>,
    /// At this operation the process freezes and the hook runs (the world goes on).
    freeze: Option<(FreezeAt, Hook)>,
}

/// A simulated process. Its clients and stores check it at every operation.
pub struct SimProcess {
    name: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for SimProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SimProcess")
            .field("name", &self.name)
            .field("killed", &s.killed)
            .field("paused", &s.paused)
            .field("ops", &s.ops)
            .finish()
    }
}

fn terminated(during: &'static str) -> ClientError {
    ClientError::new(
        ClientErrorKind::Terminated,
        during,
        "the process was killed",
    )
}

impl SimProcess {
    /// A running process.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kills it at `point`.
    pub fn arm(&self, point: KillPoint) {
        self.lock().kill = Some(point);
    }

    /// Freezes it at its `op`-th operation: `hook` runs (the rest of the simulation goes on,
    /// this process is paused meanwhile), then the operation proceeds.
    pub fn freeze_at(&self, op: u64, hook: impl FnOnce() + Send + 'static) {
        self.lock().freeze = Some((FreezeAt::Op(op), Box::new(hook)));
    }

    /// Freezes it at its next operation named `during` (before it takes effect), as
    /// [`freeze_at`](Self::freeze_at) does.
    pub fn freeze_at_call(&self, during: &'static str, hook: impl FnOnce() + Send + 'static) {
        self.lock().freeze = Some((FreezeAt::Call(during), Box::new(hook)));
    }

    /// Removes an armed kill point that was not reached.
    pub fn disarm(&self) {
        self.lock().kill = None;
    }

    /// Removes a freeze that was not reached.
    pub fn thaw(&self) {
        self.lock().freeze = None;
    }

    /// Kills it now.
    pub fn kill(&self) {
        self.lock().killed = true;
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) it.
    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
    }

    /// Whether it was killed.
    pub fn is_killed(&self) -> bool {
        self.lock().killed
    }

    /// Whether it runs (its group members heartbeat).
    pub fn is_live(&self) -> bool {
        let s = self.lock();
        !s.killed && !s.paused
    }

    /// Operations so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The start of an operation. `Err`: the process is (now) dead. `Ok(true)`: it dies right
    /// after the operation took effect (call [`end_op`](Self::end_op)).
    pub(crate) fn begin_op(&self, during: &'static str) -> Result<bool, ClientError> {
        let hook = {
            let mut s = self.lock();
            if s.killed {
                return Err(terminated(during));
            }
            s.ops += 1;
            let n = s.ops;
            match s.kill {
                Some(KillPoint::BeforeCall(name)) if name == during => {
                    s.killed = true;
                    tracing::debug!(process = %self.name, op = n, during, "killed before the operation");
                    return Err(terminated(during));
                }
                Some(KillPoint::Before(k)) if k == n => {
                    s.killed = true;
                    tracing::debug!(process = %self.name, op = n, during, "killed before the operation");
                    return Err(terminated(during));
                }
                _ => {}
            }
            match &s.freeze {
                Some((FreezeAt::Op(k), _)) if *k == n => s.freeze.take().map(|(_, h)| h),
                Some((FreezeAt::Call(name), _)) if *name == during => {
                    s.freeze.take().map(|(_, h)| h)
                }
                _ => None,
            }
        };
        if let Some(hook) = hook {
            self.set_paused(true);
            hook();
            self.set_paused(false);
            if self.is_killed() {
                return Err(terminated(during));
            }
        }
        let s = self.lock();
        Ok(match s.kill {
            Some(KillPoint::After(k)) => k == s.ops,
            Some(KillPoint::AfterCall(name)) => name == during,
            _ => false,
        })
    }

    /// The end of an operation that [`begin_op`](Self::begin_op) said to die after.
    pub(crate) fn end_op(&self, die: bool, during: &'static str) -> Result<(), ClientError> {
        if die {
            tracing::debug!(process = %self.name, during, "killed after the operation");
            self.kill();
            return Err(terminated(during));
        }
        Ok(())
    }

    /// The protocol reached `step`.
    pub(crate) fn reached(&self, step: Step) -> Result<(), ClientError> {
        let mut s = self.lock();
        if s.killed {
            return Err(terminated("step"));
        }
        if s.kill == Some(KillPoint::Step(step)) {
            s.killed = true;
            tracing::debug!(process = %self.name, ?step, "killed at a protocol step");
            return Err(terminated("step"));
        }
        Ok(())
    }
}
