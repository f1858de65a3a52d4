//! Worker child processes: the pipeline binary re-executed as `worker --mode M ...`.

use super::worker::WorkerMode;
use anyhow::{bail, Context as _};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A worker child process: this binary re-executed as `worker --mode M ...`, stderr to a log.
pub(super) struct WorkerProcess {
    child: Child,
    pub(super) log: PathBuf,
    pub(super) started: Instant,
}

impl WorkerProcess {
    pub(super) fn spawn(mode: WorkerMode, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this binary")?;
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(exe)
            .arg("worker")
            .arg("--mode")
            .arg(
                clap::ValueEnum::to_possible_value(&mode)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default(),
            )
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting a worker process")?;
        Ok(Self {
            child,
            log,
            started: Instant::now(),
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails if the worker has ended on its own.
    pub(super) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "worker exited unexpectedly ({status}); log {}:\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait for a graceful exit.
    pub(super) fn terminate(self, timeout: Duration) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait(timeout)
    }

    /// Waits for the worker to end and checks it succeeded.
    pub(super) fn wait(mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "worker failed ({status}); log {}:\n{}",
                        self.log.display(),
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "worker did not stop within {timeout:?}; log {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
