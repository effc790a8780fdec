//! Named network namespaces with RAII cleanup, command execution inside them,
//! and running Rust closures on a thread that joined them.

use anyhow::{anyhow, ensure, Context, Result};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use tracing::{debug, warn};

/// Directory where `ip netns` keeps its namespace bind mounts.
pub const NETNS_DIR: &str = "/run/netns";

/// Lock file serialising `ip netns add`/`delete` across processes: the first
/// `ip netns add` on a machine bind-mounts [`NETNS_DIR`] onto itself, which
/// races when several test binaries start at once.
const LOCK_FILE: &str = "/run/ds-testbed.lock";

static NS_COUNTER: AtomicU64 = AtomicU64::new(0);
static SWEEP_ONCE: Once = Once::new();
static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// Held while adding or deleting namespaces: an in-process mutex plus an
/// exclusive `flock` on [`LOCK_FILE`] (released when the file is closed).
struct NsLock {
    _file: Option<File>,
    _guard: MutexGuard<'static, ()>,
}

fn ns_lock() -> NsLock {
    let guard = PROCESS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = match File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
    {
        Ok(f) => {
            // SAFETY: the descriptor is valid for the lifetime of `f`; flock
            // only takes an advisory lock on it.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc != 0 {
                debug!(
                    "flock({LOCK_FILE}) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            Some(f)
        }
        Err(e) => {
            debug!("cannot open {LOCK_FILE}: {e}; continuing without it");
            None
        }
    };
    NsLock {
        _file: file,
        _guard: guard,
    }
}

/// Runs a command to completion and turns a non-zero exit into an error that
/// carries the command line and its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    debug!("run: {line}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    check_status(&line, &out, "")?;
    Ok(out)
}

/// A non-zero exit of `line` as an error with its status and stderr (and `extra` after them).
pub(crate) fn check_status(line: &str, out: &Output, extra: &str) -> Result<()> {
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}{extra}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Human-readable command line of `cmd`, for logs and error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Joins the calling thread to the network namespace whose nsfs file is
/// `path` (e.g. `/run/netns/NAME`).
fn setns_path(path: &Path) -> Result<()> {
    let file =
        File::open(path).with_context(|| format!("cannot open namespace {}", path.display()))?;
    // SAFETY: `file` owns a valid open descriptor for the duration of the
    // call; setns(2) only reads it and changes this thread's namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
    }
    Ok(())
}

/// Keeps only characters that cannot confuse the `ds-<prefix>-<pid>-<n>`
/// parser of the sweeper (no `-`, `/` or whitespace).
fn sanitize_prefix(prefix: &str) -> String {
    let s: String = prefix
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    if s.is_empty() {
        "ns".to_string()
    } else {
        s
    }
}

/// Parses `ds-<prefix>-<pid>-<counter>` and returns the pid.
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("ds-")?;
    let mut parts = rest.rsplitn(3, '-');
    let counter = parts.next()?;
    let pid = parts.next()?;
    let prefix = parts.next()?;
    if prefix.is_empty() || counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return true; // not ours to judge
    }
    // SAFETY: signal 0 performs only the existence/permission check and
    // delivers nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// SIGKILL to every process inside namespace `name` (`ip netns pids`), never this one.
fn kill_members(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 0 && p != me)
    {
        // SAFETY: kill(2) with a pid read from `ip netns pids` and a constant signal; no
        // pointers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills every process inside this process's namespaces (`ds-*-<our pid>-*`) and deletes
/// them: what an interrupted program calls before it exits, when the guards' `Drop` will not
/// run. Returns how many namespaces it deleted.
pub fn remove_own_namespaces() -> usize {
    let _lock = ns_lock();
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let me = std::process::id() as i32;
    let mut deleted = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if owner_pid(&name) != Some(me) {
            continue;
        }
        kill_members(&name);
        match delete_netns(&name) {
            Ok(()) => deleted += 1,
            Err(e) => warn!("cannot delete network namespace {name}: {e:#}"),
        }
    }
    deleted
}

fn delete_netns(name: &str) -> Result<()> {
    run_checked(Command::new("ip").args(["netns", "delete", name])).map(|_| ())
}

/// Deletes namespaces named `ds-<prefix>-<pid>-<counter>` whose owning pid
/// no longer exists (left behind by crashed or killed test runs) and returns
/// how many were deleted.
///
/// Runs automatically, once per process, before the first [`Netns::new`];
/// namespaces of live processes (including this one) are never touched.
pub fn sweep_stale_namespaces() -> Result<usize> {
    let _lock = ns_lock();
    sweep_locked()
}

fn sweep_locked() -> Result<usize> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("cannot list {NETNS_DIR}")),
    };
    let mut deleted = 0;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {NETNS_DIR}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        // Daemons a killed run left behind would keep the namespace's devices (and XDP
        // programs) alive and keep running.
        kill_members(&name);
        match delete_netns(&name) {
            Ok(()) => {
                debug!("swept stale namespace {name} (pid {pid} is gone)");
                deleted += 1;
            }
            Err(e) => warn!("cannot sweep stale namespace {name}: {e:#}"),
        }
    }
    Ok(deleted)
}

/// A uniquely named network namespace (`ip netns add`), deleted on drop.
///
/// The name is `ds-<prefix>-<pid>-<counter>`. Loopback is up, and two IPv6
/// sysctls differ from the kernel defaults (for `all` and `default`):
/// duplicate address detection is off (`accept_dad = 0`), so addresses are
/// usable immediately, and addresses survive a link going down
/// (`keep_addr_on_down = 1`), so tests can flap links.
///
/// Dropping it runs `ip netns delete`, which removes the name and the bind
/// mount; the kernel frees the namespace (and destroys its veths, bridges,
/// nftables tables and qdiscs) once nothing else holds it, i.e. after
/// processes, threads and sockets living in it are gone. Nothing outside the
/// namespace is killed. Dropping happens during panic unwinding as well;
/// namespaces of a process that dies without unwinding are removed by the
/// sweeper of a later run (see [`sweep_stale_namespaces`]).
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a fresh namespace named `ds-<prefix>-<pid>-<counter>`.
    ///
    /// `prefix` is reduced to ASCII alphanumerics and `_`. The first call in
    /// a process first sweeps stale namespaces of dead processes.
    pub fn new(prefix: &str) -> Result<Netns> {
        let name = format!(
            "ds-{}-{}-{}",
            sanitize_prefix(prefix),
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        {
            let _lock = ns_lock();
            SWEEP_ONCE.call_once(|| match sweep_locked() {
                Ok(n) => debug!("sweeper removed {n} stale namespace(s)"),
                Err(e) => warn!("stale namespace sweep failed: {e:#}"),
            });
            run_checked(Command::new("ip").args(["netns", "add", &name]))
                .with_context(|| format!("cannot create network namespace {name}"))?;
        }
        // From here on Drop deletes the namespace if anything below fails.
        let ns = Netns {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"])
            .context("cannot bring up loopback")?;
        for (key, value) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.keep_addr_on_down", "1"),
            ("net.ipv6.conf.default.keep_addr_on_down", "1"),
        ] {
            ns.sysctl(key, value)?;
        }
        debug!("created network namespace {}", ns.name);
        Ok(ns)
    }

    /// The namespace name as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace's nsfs bind mount (`/run/netns/NAME`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip netns exec NAME args...` to completion.
    ///
    /// Fails, with the command line and stderr in the error, when the command
    /// cannot be started or exits unsuccessfully.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("Netns::exec needs a program"))?;
        let mut cmd = self.command(prog);
        cmd.args(rest);
        run_checked(&mut cmd)
    }

    /// Like [`Netns::exec`] but ignores failure: returns the output of a
    /// successful run, or `None` (logged at debug level) otherwise.
    pub fn exec_ok(&self, args: &[&str]) -> Option<Output> {
        match self.exec(args) {
            Ok(out) => Some(out),
            Err(e) => {
                debug!("ignored failure: {e:#}");
                None
            }
        }
    }

    /// A [`Command`] that runs `program` inside the namespace (through
    /// `ip netns exec NAME program`); add arguments and spawn it as usual.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip -n NAME args...` (iproute2 acting on this namespace, without
    /// the mount-namespace setup of `ip netns exec`).
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_checked(&mut cmd)
    }

    /// Starts `args[0] args[1..]` inside the namespace with stdin closed and
    /// stdout/stderr inherited. The returned guard kills and reaps the
    /// process when dropped.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("Netns::spawn needs a program"))?;
        let mut cmd = self.command(prog);
        cmd.args(rest).stdin(Stdio::null());
        let line = describe(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to spawn `{line}`"))?;
        debug!("spawned pid {}: {line}", child.id());
        Ok(Child::new(child))
    }

    /// Starts daemon `program args` inside the namespace with stdin closed, stdout to
    /// `DIR/NAME.out` and stderr to `DIR/NAME.log` (`RUST_LOG=info` unless set); returns the
    /// guard and the two paths. Wait for it with [`Child::wait_for_log`].
    pub fn spawn_logged<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        dir: &Path,
        name: &str,
    ) -> Result<(Child, PathBuf, PathBuf)> {
        let (out, log) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.log")),
        );
        let mut cmd = self.command(program);
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&log)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to spawn `{}`", describe(&cmd)))?;
        Ok((Child::new(child), log, out))
    }

    /// Sets a sysctl of this namespace, e.g.
    /// `sysctl("net.ipv6.conf.all.forwarding", "1")`, by writing
    /// `/proc/sys/...` from a thread inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.try_run(|| std::fs::write(&path, value))?
            .with_context(|| format!("cannot set sysctl {key}={value} in {}", self.name))
    }

    /// Reads a sysctl of this namespace (trimmed).
    pub fn get_sysctl(&self, key: &str) -> Result<String> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let v = self
            .try_run(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("cannot read sysctl {key} in {}", self.name))?;
        Ok(v.trim().to_string())
    }

    /// Runs `f` on a new thread that has joined this namespace with
    /// `setns(CLONE_NEWNET)`, and returns its result.
    ///
    /// Sockets created by `f` belong to this namespace for their whole life,
    /// so `ns.run(|| TcpListener::bind(..))` yields a listener that can then
    /// be used from any thread. Files under `/proc/thread-self/net` read by
    /// `f` describe this namespace (`/proc/self/net`, and so `/proc/net`,
    /// follow the process's main thread instead).
    ///
    /// # Panics
    ///
    /// Re-raises a panic of `f`, and panics if the thread cannot be spawned
    /// or cannot join the namespace; use [`Netns::try_run`] to get those
    /// setup errors as a `Result`.
    pub fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("Netns::run in {}: {e:#}", self.name),
        }
    }

    /// Like [`Netns::run`] but returns an error when the thread cannot be
    /// spawned or cannot enter the namespace. A panic of `f` is re-raised.
    pub fn try_run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path.as_path();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("ns-{}", self.name))
                .spawn_scoped(scope, move || -> Result<T> {
                    setns_path(path)?;
                    Ok(f())
                })
                .context("cannot spawn namespace thread")?;
            match handle.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Moves the calling thread into this namespace for the rest of its life
    /// (meant for long-lived worker threads). Sockets it creates afterwards
    /// belong to this namespace.
    ///
    /// There is no way back short of calling `enter_current_thread` on
    /// another namespace; don't call it on a thread that must stay in the
    /// original namespace (such as a test harness thread that goes on to
    /// run other tests).
    pub fn enter_current_thread(&self) -> Result<()> {
        setns_path(&self.path).with_context(|| format!("cannot enter {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _lock = ns_lock();
        match delete_netns(&self.name) {
            Ok(()) => debug!("deleted network namespace {}", self.name),
            Err(e) => warn!("cannot delete network namespace {}: {e:#}", self.name),
        }
    }
}

/// A child process guard: the process is killed (SIGKILL) and reaped when
/// the guard is dropped. Dereferences to [`std::process::Child`].
#[derive(Debug)]
pub struct Child {
    inner: Option<std::process::Child>,
}

impl Child {
    /// Wraps an already spawned process.
    pub fn new(child: std::process::Child) -> Child {
        Child { inner: Some(child) }
    }

    /// Gives up ownership: the process is no longer killed on drop.
    pub fn into_inner(mut self) -> std::process::Child {
        match self.inner.take() {
            Some(c) => c,
            None => unreachable!("Child guard always holds a process until dropped"),
        }
    }

    /// Wait until the file `log` (the process's stderr) contains `pattern`: the process is
    /// up. An error with the log when it exits first or `timeout` passes.
    pub fn wait_for_log(
        &mut self,
        log: &std::path::Path,
        pattern: &str,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let t = std::time::Instant::now();
        let text = || std::fs::read_to_string(log).unwrap_or_default();
        while t.elapsed() < timeout {
            if text().contains(pattern) {
                return Ok(());
            }
            if let Some(st) = self.get_mut().try_wait()? {
                anyhow::bail!("exited early ({st}): {}", text());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        anyhow::bail!("not up after {timeout:?}: {}", text())
    }

    fn get(&self) -> &std::process::Child {
        match &self.inner {
            Some(c) => c,
            None => unreachable!("Child guard always holds a process until dropped"),
        }
    }

    fn get_mut(&mut self) -> &mut std::process::Child {
        match &mut self.inner {
            Some(c) => c,
            None => unreachable!("Child guard always holds a process until dropped"),
        }
    }
}

impl From<std::process::Child> for Child {
    fn from(child: std::process::Child) -> Child {
        Child::new(child)
    }
}

impl std::ops::Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        self.get()
    }
}

impl std::ops::DerefMut for Child {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        self.get_mut()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut child) = self.inner.take() {
            let pid = child.id();
            if let Err(e) = child.kill() {
                debug!("kill pid {pid}: {e}");
            }
            match child.wait() {
                Ok(status) => debug!("reaped pid {pid}: {status}"),
                Err(e) => warn!("cannot reap pid {pid}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner_pid() {
        assert_eq!(owner_pid("ds-a-123-0"), Some(123));
        assert_eq!(owner_pid("ds-with_under-77-12"), Some(77));
        assert_eq!(owner_pid("ds-legacy-dash-5-1"), Some(5));
        assert_eq!(owner_pid("ds--5-1"), None);
        assert_eq!(owner_pid("ds-a-x-1"), None);
        assert_eq!(owner_pid("ds-a-1-x"), None);
        assert_eq!(owner_pid("ds-a-1"), None);
        assert_eq!(owner_pid("other-a-1-2"), None);
        assert_eq!(owner_pid("ds-a-1-"), None);
    }

    #[test]
    fn sanitizes_prefix() {
        assert_eq!(sanitize_prefix("a-b c/d"), "a_b_c_d");
        assert_eq!(sanitize_prefix(""), "ns");
        assert_eq!(sanitize_prefix("ok_1"), "ok_1");
    }

    #[test]
    fn own_pid_is_alive() {
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        assert!(pid_alive(me));
    }
}
