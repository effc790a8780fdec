//! [`Proc`]: a daemon (`dsnode`, `dsha`, `dswan`) started in a namespace as an operator
//! would, its standard output and log in files, stopped with SIGINT.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One process, its output in files.
pub(crate) struct Proc {
    name: String,
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(
        ns: &ds_testbed::Netns,
        name: &str,
        prog: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Proc> {
        let out = dir.join(format!("{name}.out"));
        let log = dir.join(format!("{name}.log"));
        let child = ns
            .command(&prog.to_string_lossy())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
            out,
            log,
        })
    }

    /// Its standard output so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub(crate) fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Wait until its log says `pattern` (it is up), at most 20 s.
    pub(crate) fn ready(&mut self, pattern: &str) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(pattern)) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited early ({st}):\n{}", self.name, self.tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} not ready after 20 s:\n{}", self.name, self.tail())
    }

    /// SIGINT, then wait (SIGKILL after 5 s); its standard output. With `DSPERF_SHOW_LOGS`
    /// set, its log goes to our standard error.
    pub(crate) fn stop(mut self) -> Result<String> {
        if std::env::var_os("DSPERF_SHOW_LOGS").is_some() {
            eprintln!(
                "== {} log\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    tracing::warn!("{} exited with {st}:\n{}", self.name, self.tail());
                }
                break;
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not stop on SIGINT:\n{}", self.name, self.tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(std::fs::read_to_string(&self.out)?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
