//! `--sched-fifo PRIO`: the daemon's threads under the real-time `SCHED_FIFO` policy
//! (sched(7)), for hosts tuned for latency; and which CPUs a thread runs on
//! ([`pin_to_cpu`], [`allowed_cpus`]: `dsnode serve --queue-cpus`, the benchmarks); and the
//! open-file limit ([`raise_nofile`]: `dsnode serve --open-file-cache`, the benchmarks).
//!
//! Why: a handoff is a chain of process wake-ups (donor, acceptor, home agent, donor). On
//! shared cores a woken normal (`SCHED_OTHER`) task waits behind whatever runs there — the
//! client, the other node serving its first window — while a woken real-time task preempts
//! any normal one and is pushed to a core running something of lower priority at once.
//! Measured with `dsperf handoff --sched-fifo` (README "Live handoff").
//!
//! The cost is the operator's to weigh: a real-time loop that spins (`--busy-poll`) holds its
//! core against every normal task (the kernel's real-time throttling, `sched_rt_runtime_us`,
//! still leaves normal tasks 5% by default). Written with `libc` because it is one system call
//! at process start; a crate would wrap just that.

use std::io;

/// `--sched-fifo PRIO`, flattened into a daemon's options.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct SchedArgs {
    /// Run the daemon's threads under the real-time SCHED_FIFO policy at this priority
    /// (1-99): a woken event loop preempts normal tasks on a shared core instead of queueing
    /// behind them (each handoff is a chain of such wake-ups). Needs CAP_SYS_NICE. With
    /// --busy-poll, a spinning loop holds its core against every normal task.
    #[arg(long, value_name = "PRIO", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub sched_fifo: Option<u8>,
}

impl SchedArgs {
    /// Apply the option to the calling thread (call before the daemon starts threads).
    pub fn apply(&self) -> io::Result<()> {
        let Some(p) = self.sched_fifo else {
            return Ok(());
        };
        set_fifo(p).map_err(|e| io::Error::new(e.kind(), format!("--sched-fifo {p}: {e}")))?;
        tracing::info!(priority = p, "running under SCHED_FIFO");
        Ok(())
    }
}

/// The highest priority `sched_setscheduler(2)` takes for `SCHED_FIFO` on Linux.
pub const MAX_PRIORITY: u8 = 99;

/// Put the calling thread under `SCHED_FIFO` at `priority` (1–99). Threads it starts later
/// inherit the policy (sched(7): the policy is inherited across `clone`/`fork`), so call it
/// before starting them. Needs `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` that allows it).
///
/// ```no_run
/// // As early as possible in a daemon's `main`, before any thread starts.
/// ds_apps::sched::set_fifo(10).expect("SCHED_FIFO needs CAP_SYS_NICE");
/// ```
pub fn set_fifo(priority: u8) -> io::Result<()> {
    if !(1..=MAX_PRIORITY).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("SCHED_FIFO priority {priority}: 1 to {MAX_PRIORITY}"),
        ));
    }
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: `param` is a valid, initialised sched_param that outlives the call; pid 0 is
    // the calling thread; the call reads the struct and touches no other memory.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on (its affinity mask: a cpuset or `taskset` may allow
/// fewer than the machine has, and not from 0), in order.
///
/// ```
/// let cpus = ds_apps::sched::allowed_cpus().expect("sched_getaffinity");
/// assert!(!cpus.is_empty());
/// ```
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set; sched_getaffinity(0, ..) writes the calling
    // thread's mask into it, at most its size; CPU_ISSET reads one bit inside it (i is below
    // CPU_SETSIZE).
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("sched_getaffinity: {e}")));
        }
        set
    };
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: as above; `set` is a live, initialised mask.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Pin the calling thread to one CPU (`sched_setaffinity(2)`); threads it starts later
/// inherit the mask. Fails for a CPU the machine does not have or the thread's cpuset
/// excludes.
///
/// ```no_run
/// // A queue's event loop on the core its NIC queue interrupts.
/// ds_apps::sched::pin_to_cpu(1).expect("CPU 1");
/// ```
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is out of range"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes one bit inside it (cpu is
    // below CPU_SETSIZE); sched_setaffinity(0, ..) reads the set for the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("pin to CPU {cpu}: {e}")));
    }
    Ok(())
}

/// Raise this process's open-file limit to at least `at_least` descriptors if it may (root
/// may raise the hard limit, up to `fs.nr_open`), else to its hard limit (children inherit
/// it). Returns the limit now in force.
pub fn raise_nofile(at_least: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which lives across the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if at_least > lim.rlim_max {
        let up = libc::rlimit {
            rlim_cur: at_least,
            rlim_max: at_least,
        };
        // SAFETY: setrlimit reads one rlimit from `up`. Without the privilege it fails with
        // EPERM and changes nothing; the hard limit is used below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) } == 0 {
            return Ok(at_least);
        }
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one rlimit from `lim`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy (`libc::SCHED_*`).
    fn policy() -> io::Result<libc::c_int> {
        // SAFETY: sched_getscheduler takes a pid (0: the calling thread) and no pointers.
        let p = unsafe { libc::sched_getscheduler(0) };
        if p < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(p)
    }

    #[test]
    fn priorities_out_of_range_are_refused_before_the_call() {
        for p in [0, 100, 255] {
            let e = set_fifo(p).expect_err("out of range");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p}");
        }
    }

    #[test]
    fn a_thread_under_sched_fifo_reports_it_and_its_children_inherit_it() {
        if !ds_testbed::require_root(
            "a_thread_under_sched_fifo_reports_it_and_its_children_inherit_it",
        ) {
            return;
        }
        // On a thread of its own, so the test harness's threads keep their policy.
        std::thread::spawn(|| {
            set_fifo(1).expect("root may set SCHED_FIFO");
            assert_eq!(policy().expect("policy"), libc::SCHED_FIFO);
            let child = std::thread::spawn(|| policy().expect("policy"));
            assert_eq!(child.join().expect("child"), libc::SCHED_FIFO);
        })
        .join()
        .expect("thread");
        assert_eq!(policy().expect("policy"), libc::SCHED_OTHER);
    }

    #[test]
    fn a_pinned_thread_may_run_on_that_cpu_only() {
        let cpus = allowed_cpus().expect("mask");
        let last = *cpus.last().expect("some CPU");
        std::thread::spawn(move || {
            pin_to_cpu(last).expect("an allowed CPU");
            assert_eq!(allowed_cpus().expect("mask"), vec![last]);
            // Inherited by a thread it starts.
            let child = std::thread::spawn(|| allowed_cpus().expect("mask"));
            assert_eq!(child.join().expect("child"), vec![last]);
        })
        .join()
        .expect("thread");
        let e = pin_to_cpu(libc::CPU_SETSIZE as usize).expect_err("out of range");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
