//! The Quix Streams peer's installation: Quix Streams at a pinned version in a venv of the
//! benchmark's own under the target directory, and the app script (`benches/quix/dedup.py`,
//! built into this binary) written into the run's work directory.

use super::process::QuixApp;
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The quixstreams release the peer runs: the newest on PyPI when the row was added; it
/// supports Python 3.9 and later, and its confluent-kafka wheel bundles librdkafka 2.12.1,
/// the librdkafka version exactly's rdkafka builds, so both sides use the same Kafka client.
pub const QUIXSTREAMS_VERSION: &str = "3.28.1";

/// The interpreter the venv is made from (Debian's Python 3.11 on the project's machines).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// The app, compiled in so that a run always uses the script of the binary it runs.
const SCRIPT: &str = include_str!("../../quix/dedup.py");

/// The quixstreams version the venv's Python imports, if it imports one.
fn installed_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import quixstreams; print(quixstreams.__version__)"])
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs one installation step; its output goes into the error if it fails.
fn step(what: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("[quix] {what}");
    let out = command
        .output()
        .with_context(|| format!("{what}: starting {command:?}"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            lines[lines.len().saturating_sub(15)..].join("\n")
        );
    }
    Ok(())
}

fn install(venv: &Path, python: &Path) -> anyhow::Result<()> {
    if !python.exists() {
        step(
            &format!("creating the venv {}", venv.display()),
            Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(venv),
        )?;
    }
    step(
        &format!(
            "installing quixstreams=={QUIXSTREAMS_VERSION} into {}",
            venv.display()
        ),
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .arg(format!("quixstreams=={QUIXSTREAMS_VERSION}")),
    )?;
    match installed_version(python) {
        Some(v) if v == QUIXSTREAMS_VERSION => Ok(()),
        other => bail!("after pip install, the venv's quixstreams is {other:?}"),
    }
}

/// Makes sure `venv` holds quixstreams [`QUIXSTREAMS_VERSION`] (reusing it if it does,
/// creating or updating it if not) and writes the app script into `work_dir`. The error says
/// what to run by hand, or to pass `--skip-quix`.
pub(super) fn prepare(venv: &Path, work_dir: &Path) -> anyhow::Result<QuixApp> {
    let python = venv.join("bin").join("python");
    if installed_version(&python).as_deref() == Some(QUIXSTREAMS_VERSION) {
        eprintln!(
            "[quix] reusing {} (quixstreams {QUIXSTREAMS_VERSION})",
            venv.display()
        );
    } else if let Err(e) = install(venv, &python) {
        bail!(
            "could not install Quix Streams {QUIXSTREAMS_VERSION} for the quix-streams row: {e:#}\n\
             Install it by hand and run again:\n  \
             {SYSTEM_PYTHON} -m venv {venv} && {venv}/bin/python -m pip install quixstreams=={QUIXSTREAMS_VERSION}\n\
             (`apt-get install python3-venv` if the venv module is missing), or pass --skip-quix to leave the row out.",
            venv = venv.display(),
        );
    }
    let script: PathBuf = work_dir.join("quix-dedup.py");
    std::fs::write(&script, SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    Ok(QuixApp { python, script })
}
