//! Child processes of a pipeline run: the pipeline binary re-executed as `worker --mode M ...`
//! ([`WorkerProcess::spawn`]), or the Quix Streams peer run by its venv's Python
//! ([`QuixApp::spawn`]). Both are a [`WorkerProcess`]: a child with its stderr in a log, which
//! the run measures the same way whatever program it runs.

use super::worker::WorkerMode;
use anyhow::{bail, Context as _};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mode's child process, stderr to a log.
pub(super) struct WorkerProcess {
    child: Child,
    pub(super) log: PathBuf,
    pub(super) started: Instant,
}

impl WorkerProcess {
    /// This binary re-executed as `worker --mode <mode> <args>`.
    pub(super) fn spawn(mode: WorkerMode, args: &[String], log: PathBuf) -> anyhow::Result<Self> {
        // `/proc/self/exe` is this process's own image even after `target/release/pipeline`
        // was rebuilt during the run (the target dir is shared): every mode of a run then
        // runs the same code, and a rebuild does not make the next spawn fail.
        let proc_exe = PathBuf::from("/proc/self/exe");
        let exe = if proc_exe.exists() {
            proc_exe
        } else {
            std::env::current_exe().context("locating this binary")?
        };
        let mut command = Command::new(exe);
        command
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
            );
        Self::start(command, log)
    }

    /// Starts `command` with stdout discarded and stderr written to `log`.
    fn start(mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
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

/// The Quix Streams peer: `benches/quix/dedup.py` run by the Python of the venv Quix Streams
/// is installed in (see [`super::quix`]).
#[derive(Debug, Clone)]
pub(super) struct QuixApp {
    /// The venv's `bin/python`.
    pub(super) python: PathBuf,
    /// The app's script.
    pub(super) script: PathBuf,
}

impl QuixApp {
    /// Runs the script with `args`. Python itself is the child (no shell in between), so the
    /// pid measured is the one doing the work.
    pub(super) fn spawn(&self, args: &[String], log: PathBuf) -> anyhow::Result<WorkerProcess> {
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .args(args)
            // Unbuffered, so that a traceback reaches the log even if the process is killed.
            .env("PYTHONUNBUFFERED", "1")
            // No warnings of Quix's dependencies in the log on every start.
            .env("PYTHONWARNINGS", "ignore");
        WorkerProcess::start(command, log)
    }
}
