//! The `-v` option and the `tracing` set-up every daemon here shares.

use clap::Args;
use std::io::IsTerminal;

/// `-v`/`-vv`, flattened into a binary's top-level options.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// More log output (-v: debug, -vv: trace). RUST_LOG, when set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl Verbosity {
    /// Install the global subscriber: logs to stderr, coloured only on a terminal, so that
    /// stdout stays free for figures (`--json`).
    pub fn init(self) {
        use tracing_subscriber::EnvFilter;
        let default = match self.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
        // A second call (tests that start a daemon in-process) keeps the first subscriber.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_thread_names(true)
            .try_init();
    }
}

/// `println!` for a daemon's figures on stdout: a write error (its reader went away: a closed
/// pipe) is ignored instead of panicking, so that a node keeps serving when whatever read its
/// reports stops reading.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
