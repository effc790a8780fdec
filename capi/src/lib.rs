//! The C ABI of the `dserver` library: opaque handles, integer status codes with a message
//! per thread (`ds_last_error`), and a readiness descriptor per node for `epoll`. The header,
//! `include/dserver.h`, is generated from this file by cbindgen (see `build.rs`).
//!
//! Every function checks its pointers for NULL and its strings for UTF-8; nothing a caller
//! passes can make the library panic. Handles are not thread-safe: use one node per thread
//! (shared-nothing, as the library itself), made, run and freed there. The exceptions: a
//! `ds_queues` is taken from by every queue's thread, and the `ds_config` they read may be
//! read by several threads at once while nobody sets or frees it.
//!
//! ```c
//! ds_config *cfg = ds_config_new();
//! ds_config_set(cfg, "ds_addr", "fd00:80::80");
//! ds_config_set(cfg, "device", "afxdp");
//! ds_config_set(cfg, "iface", "eth0");
//! ds_node *node = ds_node_new(cfg);
//! ds_config_free(cfg);
//! if (!node) { fprintf(stderr, "%s\n", ds_last_error()); return 1; }
//! ```

#![allow(non_camel_case_types)]
#![deny(clippy::undocumented_unsafe_blocks)]

use dserver::{ConnId, Device, Event, HandoffReport, KernelNode, Node};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, CStr, CString};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

/// Success.
pub const DS_OK: c_int = 0;
/// Nothing to do now (no data, no room, no connection): try again after the next poll.
pub const DS_AGAIN: c_int = -11;
/// An argument is NULL, not UTF-8, or not understood (see `ds_last_error`).
pub const DS_EINVAL: c_int = -22;
/// No such connection on this node.
pub const DS_ENOCONN: c_int = -107;
/// The connection is being handed off and cannot be used here now.
pub const DS_ELEAVING: c_int = -114;
/// A handoff did not happen; the connection continues here.
pub const DS_EHANDOFF: c_int = -125;
/// The connection was reset or failed.
pub const DS_ERESET: c_int = -104;
/// Any other failure (see `ds_last_error`).
pub const DS_EFAIL: c_int = -1;

/// A handoff's outcome event: the connection now runs on another node.
pub const DS_EVENT_HANDED_OFF: c_int = 1;
/// A handoff did not happen; the connection continues here.
pub const DS_EVENT_KEPT_HERE: c_int = 2;
/// A handoff ended in doubt; the connection is gone from this node.
pub const DS_EVENT_LOST: c_int = 3;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl std::fmt::Display) {
    let s = CString::new(msg.to_string().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = s);
}

fn fail(code: c_int, msg: impl std::fmt::Display) -> c_int {
    set_error(msg);
    code
}

/// The handle behind a pointer argument, or return its error code from the calling function
/// (which takes the pointer under the contract "NULL or a live handle").
macro_rules! live {
    ($get:ident($p:expr)) => {
        // SAFETY: the calling function's contract: the pointer is NULL or a live handle.
        match unsafe { $get($p) } {
            Ok(h) => h,
            Err(e) => return e as _,
        }
    };
}

/// The message of the last failed call on this thread (empty if none). Valid until the next
/// call into the library on this thread.
#[no_mangle]
pub extern "C" fn ds_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Log to standard error at `filter` (as `RUST_LOG`: "info", "dserver=debug"; NULL: the
/// `RUST_LOG` variable, else "info"). Call once; later calls do nothing.
///
/// # Safety
/// `filter` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn ds_log_init(filter: *const c_char) {
    // SAFETY: per this function's contract.
    let f = unsafe { opt_str(filter) }
        .ok()
        .flatten()
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(f)
        .try_init();
}

/// A C string argument: `Ok(None)` for NULL, an error for invalid UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string.
unsafe fn opt_str<'a>(p: *const c_char) -> Result<Option<&'a str>, c_int> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(Some)
        .map_err(|_| fail(DS_EINVAL, "a string argument is not UTF-8"))
}

/// # Safety
/// As [`opt_str`].
unsafe fn req_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, c_int> {
    // SAFETY: per this function's contract.
    unsafe { opt_str(p) }?.ok_or_else(|| fail(DS_EINVAL, format!("{what} is NULL")))
}

/// A node's settings, set key by key (`ds_config_set`).
#[derive(Debug, Default)]
pub struct ds_config {
    values: HashMap<String, String>,
    /// `peer` may be given several times.
    peers: Vec<String>,
}

/// The keys `ds_config_set` takes (the `dsnode` configuration's names).
const KEYS: [&str; 16] = [
    "ds_addr",
    "care_of",
    "device",
    "iface",
    "mac",
    "port",
    "secret_file",
    "control_listen",
    "peer",
    "home_agent",
    "steering",
    "service",
    "reply_timeout_ms",
    "policy",
    "steer_ahead",
    "queues",
];

/// New empty settings (free with `ds_config_free`).
#[no_mangle]
pub extern "C" fn ds_config_new() -> *mut ds_config {
    Box::into_raw(Box::default())
}

/// Free settings (NULL: nothing).
///
/// # Safety
/// `cfg` is NULL or from `ds_config_new`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn ds_config_free(cfg: *mut ds_config) {
    if !cfg.is_null() {
        // SAFETY: from Box::into_raw in ds_config_new, freed once per the contract.
        drop(unsafe { Box::from_raw(cfg) });
    }
}

/// Set one setting: `ds_addr` (required), `care_of`, `device` (`afxdp` or `tap`), `iface`,
/// `mac`, `port`, `secret_file`, `control_listen`, `peer` (repeat for several),
/// `home_agent`, `steering` (`ro-home`: route-optimised, this node the contact node at home
/// on the DS address; `ro-away`: route-optimised away from home; transparent steering is
/// `home_agent`'s), `service`, `reply_timeout_ms`, `policy` (`local`, `round-robin` or
/// `least-connections`), `steer_ahead` (`1`/`true` or `0`/`false`: with `home_agent`, commit
/// a handoff before the home agent's answer to the flow move), `queues` (for
/// `ds_queues_open` only: how many receive queues, 0 or absent for all). Values are checked
/// when the node is made.
///
/// # Safety
/// `cfg` is from `ds_config_new`; `key` and `value` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn ds_config_set(
    cfg: *mut ds_config,
    key: *const c_char,
    value: *const c_char,
) -> c_int {
    // SAFETY: `cfg` is NULL or a live ds_config per the contract.
    let Some(cfg) = (unsafe { cfg.as_mut() }) else {
        return fail(DS_EINVAL, "cfg is NULL");
    };
    // SAFETY: NUL-terminated strings per the contract.
    let (key, value) = match unsafe { (req_str(key, "key"), req_str(value, "value")) } {
        (Ok(k), Ok(v)) => (k, v),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if !KEYS.contains(&key) {
        return fail(
            DS_EINVAL,
            format!("unknown key {key:?} (known: {})", KEYS.join(", ")),
        );
    }
    if key == "peer" {
        cfg.peers.push(value.to_string());
    } else {
        cfg.values.insert(key.to_string(), value.to_string());
    }
    DS_OK
}

fn parse<T: std::str::FromStr>(cfg: &ds_config, key: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    cfg.values
        .get(key)
        .map(|v| v.parse().map_err(|e| format!("{key} = {v:?}: {e}")))
        .transpose()
}

/// The settings as a builder, checked.
fn builder(cfg: &ds_config, default_device: &str) -> Result<dserver::Builder, String> {
    let mut b = Node::builder();
    let ds = parse(cfg, "ds_addr")?.ok_or("ds_addr is required")?;
    b = b.ds_addr(ds);
    if let Some(a) = parse(cfg, "care_of")? {
        b = b.care_of(a);
    }
    let iface = cfg
        .values
        .get("iface")
        .cloned()
        .ok_or("iface is required")?;
    b = b.device(
        match cfg
            .values
            .get("device")
            .map_or(default_device, String::as_str)
        {
            "afxdp" => Device::afxdp(iface),
            "tap" => Device::tap(iface),
            "kernel" => Device::Kernel { iface },
            d => return Err(format!("device = {d:?}: afxdp, tap or kernel")),
        },
    );
    if let Some(m) = cfg.values.get("mac") {
        b = b.mac(dserver::mac::parse_mac(m).map_err(|e| format!("mac = {m:?}: {e}"))?);
    }
    if let Some(p) = parse(cfg, "port")? {
        b = b.port(p);
    }
    if let Some(f) = cfg.values.get("secret_file") {
        b = b.secret_file(f);
    }
    if let Some(a) = parse(cfg, "control_listen")? {
        b = b.control_listen(a);
    }
    for p in &cfg.peers {
        b = b.peer(p.parse().map_err(|e| format!("peer = {p:?}: {e}"))?);
    }
    if let Some(a) = parse(cfg, "home_agent")? {
        b = b.home_agent(a);
    }
    match cfg.values.get("steering").map(String::as_str) {
        None => {}
        Some("ro-home") => b = b.route_optimised(false),
        Some("ro-away") => b = b.route_optimised(true),
        Some(s) => return Err(format!("steering = {s:?}: ro-home or ro-away")),
    }
    if let Some(s) = cfg.values.get("service") {
        b = b.service(s.clone());
    }
    if let Some(ms) = parse::<u64>(cfg, "reply_timeout_ms")? {
        b = b.reply_timeout(Duration::from_millis(ms));
    }
    match cfg.values.get("steer_ahead").map(String::as_str) {
        None | Some("0") | Some("false") => {}
        Some("1") | Some("true") => b = b.steer_ahead(),
        Some(s) => return Err(format!("steer_ahead = {s:?}: 1, true, 0 or false")),
    }
    match cfg.values.get("policy").map(String::as_str) {
        None | Some("local") => {}
        Some("round-robin") => b = b.policy(dserver::Policy::RoundRobin),
        Some("least-connections") => b = b.policy(dserver::Policy::LeastConnections),
        Some(p) => {
            return Err(format!(
                "policy = {p:?}: local, round-robin or least-connections"
            ))
        }
    }
    Ok(b)
}

/// A member of a distributed server on the userspace stack.
pub struct ds_node {
    node: Node,
    /// The state that came with connections handed over to this node, until closed.
    states: HashMap<ConnId, Vec<u8>>,
    ready: Vec<ConnId>,
    events: VecDeque<Event>,
}

/// A connection from `ds_accept`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ds_accepted {
    /// The connection.
    pub conn: u64,
    /// 1 when it was handed over by another node (its state: `ds_conn_state`), 0 for a new
    /// client.
    pub handed_over: c_int,
    /// The length of that state.
    pub state_len: usize,
}

/// A handoff's measurements (the seed's seven phases).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ds_report {
    /// The seven phases, microseconds.
    pub phases_us: [f64; 7],
    /// Their sum, microseconds.
    pub total_us: f64,
    /// Wall time from extraction to activation, microseconds.
    pub wall_us: f64,
    /// Drain time before extraction, microseconds.
    pub drain_us: f64,
    /// The encoded connection state, bytes.
    pub state_bytes: u64,
}

impl From<&HandoffReport> for ds_report {
    fn from(r: &HandoffReport) -> Self {
        ds_report {
            phases_us: r.phases_us,
            total_us: r.total_us,
            wall_us: r.wall_us,
            drain_us: r.drain_us,
            state_bytes: r.state_bytes as u64,
        }
    }
}

/// Something that happened to a connection outside the caller's calls (`ds_next_event`).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ds_event {
    /// `DS_EVENT_HANDED_OFF`, `DS_EVENT_KEPT_HERE` or `DS_EVENT_LOST`.
    pub kind: c_int,
    /// The connection.
    pub conn: u64,
    /// For `DS_EVENT_HANDED_OFF`: the measurements.
    pub report: ds_report,
}

/// Make a node from `cfg` (which the caller still frees): open the device, listen, connect
/// to the cluster. NULL on failure (see `ds_last_error`).
///
/// # Safety
/// `cfg` is from `ds_config_new`.
#[no_mangle]
pub unsafe extern "C" fn ds_node_new(cfg: *const ds_config) -> *mut ds_node {
    // SAFETY: NULL or a live ds_config per the contract.
    let Some(cfg) = (unsafe { cfg.as_ref() }) else {
        set_error("cfg is NULL");
        return std::ptr::null_mut();
    };
    match builder(cfg, "afxdp").and_then(|b| b.build().map_err(|e| e.to_string())) {
        Ok(node) => new_node(node),
        Err(e) => {
            set_error(e);
            std::ptr::null_mut()
        }
    }
}

/// The receive queues of an AF_XDP device, for one node per queue (`ds_queues_open`), each
/// on its own thread. Taking a queue (`ds_node_new_on_queue`) may happen on any thread.
pub struct ds_queues {
    slots: std::sync::Mutex<Vec<Option<dserver::Queue>>>,
}

// The queues are taken from any thread (a node itself stays on the thread that made it).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<ds_queues>();
};

/// Open the AF_XDP device of `cfg` with one socket per receive queue (`queues` in `cfg`:
/// how many, default all): the queues' nodes share the ISN key and pass each other the
/// packets of connections another holds. NULL on failure (see `ds_last_error`). Free with
/// `ds_queues_free` once every node is made.
///
/// ```c
/// ds_queues *q = ds_queues_open(cfg);
/// /* then on thread i, for each i below ds_queues_count(q): */
/// ds_node *n = ds_node_new_on_queue(cfg, q, i);
/// ```
///
/// `cfg` may be read by several threads at once (`ds_node_new_on_queue`) while nobody sets
/// or frees it.
///
/// # Safety
/// `cfg` is from `ds_config_new`.
#[no_mangle]
pub unsafe extern "C" fn ds_queues_open(cfg: *const ds_config) -> *mut ds_queues {
    // SAFETY: NULL or a live ds_config per the contract.
    let Some(cfg) = (unsafe { cfg.as_ref() }) else {
        set_error("cfg is NULL");
        return std::ptr::null_mut();
    };
    let opened = builder(cfg, "afxdp").and_then(|mut b| {
        if let Some(n) = parse::<usize>(cfg, "queues")?.filter(|n| *n > 0) {
            b = b.queue_count(n);
        }
        b.open_queues().map_err(|e| e.to_string())
    });
    match opened {
        Ok(qs) => Box::into_raw(Box::new(ds_queues {
            slots: std::sync::Mutex::new(qs.into_iter().map(Some).collect()),
        })),
        Err(e) => {
            set_error(e);
            std::ptr::null_mut()
        }
    }
}

/// How many queues `q` opened (0 for NULL).
///
/// # Safety
/// `q` is NULL or from `ds_queues_open`.
#[no_mangle]
pub unsafe extern "C" fn ds_queues_count(q: *const ds_queues) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { q.as_ref() }.map_or(0, |q| lock_slots(q).len())
}

fn lock_slots(q: &ds_queues) -> std::sync::MutexGuard<'_, Vec<Option<dserver::Queue>>> {
    // A panic cannot happen while it is held (only moves out of the vector).
    q.slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node from `cfg` on queue `index` of `q` (each index once), made on the thread that runs
/// it (a node stays on its thread, and is freed there): `cfg` is the one given to
/// `ds_queues_open`. A failure after the settings were checked leaves the queue unusable
/// (its siblings' packets for it are lost): then stop the whole set. Route-optimised (`steering`), the first queue's node takes
/// every connection handed over. NULL on failure (see `ds_last_error`).
///
/// # Safety
/// `cfg` is from `ds_config_new`, `q` from `ds_queues_open` and not freed.
#[no_mangle]
pub unsafe extern "C" fn ds_node_new_on_queue(
    cfg: *const ds_config,
    q: *mut ds_queues,
    index: usize,
) -> *mut ds_node {
    // SAFETY: NULL or live per the contract.
    let (Some(cfg), Some(q)) = (unsafe { cfg.as_ref() }, unsafe { q.as_ref() }) else {
        set_error("cfg or queues is NULL");
        return std::ptr::null_mut();
    };
    // The settings first: a mistake there leaves the queue for another try.
    let b = match builder(cfg, "afxdp") {
        Ok(b) => b,
        Err(e) => {
            set_error(e);
            return std::ptr::null_mut();
        }
    };
    let taken = lock_slots(q).get_mut(index).and_then(Option::take);
    let Some(queue) = taken else {
        set_error(format!("queue {index}: none such, or taken already"));
        return std::ptr::null_mut();
    };
    match b.queue(queue).build().map_err(|e| e.to_string()) {
        Ok(node) => new_node(node),
        Err(e) => {
            set_error(e);
            std::ptr::null_mut()
        }
    }
}

/// Free `q` (NULL: nothing) and the queues no node took.
///
/// # Safety
/// `q` is NULL or from `ds_queues_open`, not freed before, and no thread is in
/// `ds_node_new_on_queue` with it.
#[no_mangle]
pub unsafe extern "C" fn ds_queues_free(q: *mut ds_queues) {
    if !q.is_null() {
        // SAFETY: from Box::into_raw in ds_queues_open, freed once per the contract.
        drop(unsafe { Box::from_raw(q) });
    }
}

fn new_node(node: Node) -> *mut ds_node {
    Box::into_raw(Box::new(ds_node {
        node,
        states: HashMap::new(),
        ready: Vec::new(),
        events: VecDeque::new(),
    }))
}

/// Stop serving gracefully: accept no more clients, close every open connection (a FIN
/// follows what was written) and run the node until closed connections have delivered what
/// they owe, or `max_ms` passes. Call before `ds_node_free`, which resets what is still open.
///
/// # Safety
/// `node` is a live node.
#[no_mangle]
pub unsafe extern "C" fn ds_node_shutdown(node: *mut ds_node, max_ms: c_int) -> c_int {
    let n = live!(node_mut(node));
    n.states.clear();
    match n.node.shutdown(timeout(max_ms)) {
        Ok(()) => DS_OK,
        Err(e) => node_error(e),
    }
}

/// Stop the node (open connections are reset) and free it (NULL: nothing).
///
/// # Safety
/// `node` is NULL or from `ds_node_new`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn ds_node_free(node: *mut ds_node) {
    if !node.is_null() {
        // SAFETY: from Box::into_raw in ds_node_new, freed once per the contract.
        drop(unsafe { Box::from_raw(node) });
    }
}

/// # Safety
/// `node` is NULL or a live node.
unsafe fn node_mut<'a>(node: *mut ds_node) -> Result<&'a mut ds_node, c_int> {
    // SAFETY: per this function's contract.
    unsafe { node.as_mut() }.ok_or_else(|| fail(DS_EINVAL, "node is NULL"))
}

fn timeout(ms: c_int) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn node_error(e: dserver::Error) -> c_int {
    let code = match &e {
        dserver::Error::NoConnection(_) => DS_ENOCONN,
        dserver::Error::Leaving(_) => DS_ELEAVING,
        dserver::Error::Handoff { .. } => DS_EHANDOFF,
        dserver::Error::Config(_) => DS_EINVAL,
        _ => DS_EFAIL,
    };
    fail(code, e)
}

fn io_code(e: std::io::Error) -> isize {
    use std::io::ErrorKind as K;
    let code = match e.kind() {
        K::WouldBlock => return DS_AGAIN as isize,
        K::NotConnected => DS_ENOCONN,
        K::ConnectionReset | K::BrokenPipe | K::TimedOut | K::ConnectionRefused => DS_ERESET,
        _ if e.to_string().contains("leaving") => DS_ELEAVING,
        _ => DS_EFAIL,
    };
    fail(code, e) as isize
}

/// Call `attempt` (which takes what is there, or else runs the node for at most the wait it
/// is given) until it gives something or `timeout_ms` passes (-1: no limit).
fn within<T>(
    timeout_ms: c_int,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, dserver::Error>,
) -> Result<Option<T>, c_int> {
    let start = std::time::Instant::now();
    loop {
        let left = if timeout_ms < 0 {
            Duration::MAX
        } else {
            timeout(timeout_ms).saturating_sub(start.elapsed())
        };
        if let Some(a) = attempt(left.min(Duration::from_millis(10))).map_err(node_error)? {
            return Ok(Some(a));
        }
        if left.is_zero() {
            return Ok(None);
        }
    }
}

/// Wait up to `timeout_ms` for input and process it (TCP, new connections, handoffs both
/// ways). `DS_OK` or an error.
///
/// # Safety
/// `node` is a live node.
#[no_mangle]
pub unsafe extern "C" fn ds_node_poll(node: *mut ds_node, timeout_ms: c_int) -> c_int {
    let n = live!(node_mut(node));
    match n.node.poll(timeout(timeout_ms)) {
        Ok(()) => {
            n.events.extend(n.node.take_events());
            DS_OK
        }
        Err(e) => node_error(e),
    }
}

/// A descriptor that turns readable when the node has input, for the caller's `epoll` set:
/// then call `ds_node_poll(node, 0)`; wait no longer than `ds_node_timeout_ms`. Negative on
/// error.
///
/// # Safety
/// `node` is a live node.
#[no_mangle]
pub unsafe extern "C" fn ds_node_fd(node: *mut ds_node) -> c_int {
    let n = live!(node_mut(node));
    n.node.readiness_fd().unwrap_or_else(node_error)
}

/// The longest wait before the next `ds_node_poll` when the descriptor stays quiet,
/// milliseconds (rounded up); -1: no deadline.
///
/// # Safety
/// `node` is a live node.
#[no_mangle]
pub unsafe extern "C" fn ds_node_timeout_ms(node: *mut ds_node) -> c_int {
    let n = live!(node_mut(node));
    match n.node.poll_timeout() {
        None => -1,
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int,
    }
}

/// The next connection: a new client, or one handed over by another node. Waits up to
/// `timeout_ms` (-1: until one comes). 1 and `*out` filled; 0 when none came; negative on
/// error.
///
/// # Safety
/// `node` is a live node; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ds_accept(
    node: *mut ds_node,
    timeout_ms: c_int,
    out: *mut ds_accepted,
) -> c_int {
    let n = live!(node_mut(node));
    let got = within(timeout_ms, |wait| {
        let a = n.node.try_accept();
        if a.is_none() {
            n.node.poll(wait)?;
            n.events.extend(n.node.take_events());
        }
        Ok(a)
    });
    let a = match got {
        Ok(Some(a)) => a,
        Ok(None) => return 0,
        Err(e) => return e,
    };
    let acc = ds_accepted {
        conn: a.conn.0,
        handed_over: c_int::from(a.state.is_some()),
        state_len: a.state.as_ref().map_or(0, Vec::len),
    };
    if let Some(s) = a.state {
        n.states.insert(a.conn, s);
    }
    // SAFETY: NULL or writable per the contract.
    if let Some(out) = unsafe { out.as_mut() } {
        *out = acc;
    }
    1
}

/// Copy the state that came with a handed-over connection into `buf` (at most `cap` bytes).
/// Returns the state's whole length (more than `cap`: the copy was cut), or `DS_ENOCONN`
/// when the connection has none.
///
/// # Safety
/// `node` is a live node; `buf` is NULL (with `cap` 0) or writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn ds_conn_state(
    node: *mut ds_node,
    conn: u64,
    buf: *mut u8,
    cap: usize,
) -> isize {
    let n = live!(node_mut(node));
    let Some(s) = n.states.get(&ConnId(conn)) else {
        return fail(DS_ENOCONN, format!("connection #{conn} came with no state")) as isize;
    };
    let k = s.len().min(cap);
    if k > 0 && !buf.is_null() {
        // SAFETY: `buf` is writable for `cap` >= k bytes per the contract; `s` is ours.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), buf, k) };
    }
    s.len() as isize
}

/// Read up to `len` bytes: the count, 0 at the end of the client's data, `DS_AGAIN` when
/// nothing is there yet, or an error.
///
/// # Safety
/// `node` is a live node; `buf` is writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ds_read(node: *mut ds_node, conn: u64, buf: *mut u8, len: usize) -> isize {
    let n = live!(node_mut(node));
    if buf.is_null() && len > 0 {
        return fail(DS_EINVAL, "buf is NULL") as isize;
    }
    let slice: &mut [u8] = if len == 0 {
        &mut []
    } else {
        // SAFETY: not NULL and writable for `len` bytes per the contract.
        unsafe { std::slice::from_raw_parts_mut(buf, len) }
    };
    match n.node.read(ConnId(conn), slice) {
        Ok(k) => k as isize,
        Err(e) => io_code(e),
    }
}

/// Queue up to `len` bytes for sending: the count taken, `DS_AGAIN` when the send buffer is
/// full, or an error.
///
/// # Safety
/// `node` is a live node; `buf` is readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ds_write(
    node: *mut ds_node,
    conn: u64,
    buf: *const u8,
    len: usize,
) -> isize {
    let n = live!(node_mut(node));
    if buf.is_null() && len > 0 {
        return fail(DS_EINVAL, "buf is NULL") as isize;
    }
    let slice: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: not NULL and readable for `len` bytes per the contract.
        unsafe { std::slice::from_raw_parts(buf, len) }
    };
    match n.node.write(ConnId(conn), slice) {
        Ok(k) => k as isize,
        Err(e) => io_code(e),
    }
}

/// Where the client whose request begins with the `len` bytes at `first` should be served,
/// per the node's policy: 0 here; 1 on another node, whose control address is written to
/// `to` as a NUL-terminated string (at most `cap` bytes; pass it to `ds_handoff`); negative
/// on error.
///
/// # Safety
/// `node` is a live node; `first` readable for `len` bytes; `to` writable for `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn ds_place(
    node: *mut ds_node,
    first: *const u8,
    len: usize,
    to: *mut c_char,
    cap: usize,
) -> c_int {
    let n = live!(node_mut(node));
    if (first.is_null() && len > 0) || to.is_null() {
        return fail(DS_EINVAL, "first or to is NULL");
    }
    let head: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: not NULL and readable for `len` bytes per the contract.
        unsafe { std::slice::from_raw_parts(first, len) }
    };
    match n.node.place(head) {
        dserver::Placement::Here => 0,
        dserver::Placement::Node(addr) => {
            let s = addr.to_string();
            if s.len() + 1 > cap {
                return fail(DS_EINVAL, format!("to: {} bytes needed", s.len() + 1));
            }
            // SAFETY: `to` is writable for `cap` >= len + 1 bytes per the contract.
            unsafe {
                std::ptr::copy_nonoverlapping(s.as_ptr(), to.cast::<u8>(), s.len());
                *to.add(s.len()) = 0;
            }
            1
        }
    }
}

/// Close a connection (a FIN follows what was written) and forget it.
///
/// # Safety
/// `node` is a live node.
#[no_mangle]
pub unsafe extern "C" fn ds_close(node: *mut ds_node, conn: u64) -> c_int {
    let n = live!(node_mut(node));
    n.states.remove(&ConnId(conn));
    match n.node.close(ConnId(conn)) {
        Ok(()) => DS_OK,
        Err(e) => node_error(e),
    }
}

/// Connections that saw input, send space, a close or a reset since the last call: up to
/// `cap` of them into `out`; returns how many (the rest come next time).
///
/// # Safety
/// `node` is a live node; `out` is writable for `cap` values.
#[no_mangle]
pub unsafe extern "C" fn ds_ready(node: *mut ds_node, out: *mut u64, cap: usize) -> isize {
    let n = live!(node_mut(node));
    if out.is_null() && cap > 0 {
        return fail(DS_EINVAL, "out is NULL") as isize;
    }
    n.node.take_ready(&mut n.ready);
    n.ready.sort_unstable();
    n.ready.dedup();
    let k = n.ready.len().min(cap);
    for (i, c) in n.ready.drain(..k).enumerate() {
        // SAFETY: i < k <= cap, and `out` is writable for `cap` values per the contract.
        unsafe { *out.add(i) = c.0 };
    }
    k as isize
}

/// # Safety
/// `to` is a NUL-terminated string; `state` is readable for `len` bytes (or NULL with 0).
unsafe fn handoff_args(
    to: *const c_char,
    state: *const u8,
    len: usize,
) -> Result<(SocketAddr, Vec<u8>), c_int> {
    // SAFETY: per this function's contract.
    let to = unsafe { req_str(to, "to") }?;
    let to: SocketAddr = to
        .parse()
        .map_err(|e| fail(DS_EINVAL, format!("to = {to:?}: {e}")))?;
    if state.is_null() && len > 0 {
        return Err(fail(DS_EINVAL, "state is NULL"));
    }
    let state = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: not NULL and readable for `len` bytes per the contract.
        unsafe { std::slice::from_raw_parts(state, len) }.to_vec()
    };
    Ok((to, state))
}

/// Hand `conn` to the node whose control address is `to` ("[addr]:port"), with `len` bytes
/// of application `state` that arrive with it there; wait for the outcome. `DS_OK` and
/// `*report` (if not NULL) filled, or `DS_EHANDOFF` (the connection continues here) or
/// another error.
///
/// # Safety
/// `node` is a live node; `to` a NUL-terminated string; `state` readable for `len` bytes;
/// `report` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ds_handoff(
    node: *mut ds_node,
    conn: u64,
    to: *const c_char,
    state: *const u8,
    len: usize,
    report: *mut ds_report,
) -> c_int {
    let n = live!(node_mut(node));
    // SAFETY: per the contract.
    let (to, state) = match unsafe { handoff_args(to, state, len) } {
        Ok(a) => a,
        Err(e) => return e,
    };
    match n.node.handoff(ConnId(conn), to, state) {
        Ok(r) => {
            n.states.remove(&ConnId(conn));
            // SAFETY: NULL or writable per the contract.
            if let Some(out) = unsafe { report.as_mut() } {
                *out = ds_report::from(&r);
            }
            DS_OK
        }
        Err(e) => node_error(e),
    }
}

/// Start handing `conn` to `to` (as `ds_handoff`) and return at once; the outcome comes
/// from `ds_next_event`.
///
/// # Safety
/// As `ds_handoff`.
#[no_mangle]
pub unsafe extern "C" fn ds_start_handoff(
    node: *mut ds_node,
    conn: u64,
    to: *const c_char,
    state: *const u8,
    len: usize,
) -> c_int {
    let n = live!(node_mut(node));
    // SAFETY: per the contract.
    let (to, state) = match unsafe { handoff_args(to, state, len) } {
        Ok(a) => a,
        Err(e) => return e,
    };
    match n.node.start_handoff(ConnId(conn), to, state) {
        Ok(()) => DS_OK,
        Err(e) => node_error(e),
    }
}

/// The next event: 1 and `*ev` filled, 0 when there is none.
///
/// # Safety
/// `node` is a live node; `ev` writable.
#[no_mangle]
pub unsafe extern "C" fn ds_next_event(node: *mut ds_node, ev: *mut ds_event) -> c_int {
    let n = live!(node_mut(node));
    n.events.extend(n.node.take_events());
    while let Some(e) = n.events.pop_front() {
        let out = match e {
            Event::HandedOff { conn, report, .. } => {
                n.states.remove(&conn);
                ds_event {
                    kind: DS_EVENT_HANDED_OFF,
                    conn: conn.0,
                    report: ds_report::from(&*report),
                }
            }
            Event::KeptHere { conn, cause, .. } => {
                set_error(cause);
                ds_event {
                    kind: DS_EVENT_KEPT_HERE,
                    conn: conn.0,
                    report: ds_report::default(),
                }
            }
            Event::Lost { conn, cause } => {
                n.states.remove(&conn);
                set_error(cause);
                ds_event {
                    kind: DS_EVENT_LOST,
                    conn: conn.0,
                    report: ds_report::default(),
                }
            }
            Event::Declined { cause } => {
                tracing::info!("an offer was declined here: {cause}");
                continue;
            }
            // The C interface has no rebind call (yet): nothing to report.
            Event::Rebound { ok, detail } => {
                tracing::info!(ok, "the home agent answered a rebind: {detail}");
                continue;
            }
            // Route-optimised steering is not offered through the C interface.
            Event::Bound { client, after } => {
                tracing::info!(%client, ?after, "binding acknowledged");
                continue;
            }
            Event::SteerRefused { client, detail } => {
                tracing::info!(%client, "flow move steered ahead not applied: {detail}");
                continue;
            }
        };
        // SAFETY: NULL or writable per the contract.
        if let Some(ev) = unsafe { ev.as_mut() } {
            *ev = out;
        }
        return 1;
    }
    0
}

/// A kernel-socket node: it hands off TCP sockets the server accepted itself
/// (`ds_handoff_fd`) and gives it, as sockets, the connections other nodes hand over
/// (`ds_kernel_accept`).
pub struct ds_kernel {
    node: KernelNode,
}

/// Make a kernel-socket node from `cfg` (device `kernel`, the default here; `iface` is where
/// the steering program goes; `peer` and/or `control_listen` and `secret_file` are needed).
/// NULL on failure (see `ds_last_error`).
///
/// # Safety
/// `cfg` is from `ds_config_new`.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_new(cfg: *const ds_config) -> *mut ds_kernel {
    // SAFETY: NULL or a live ds_config per the contract.
    let Some(cfg) = (unsafe { cfg.as_ref() }) else {
        set_error("cfg is NULL");
        return std::ptr::null_mut();
    };
    match builder(cfg, "kernel").and_then(|b| b.build_kernel().map_err(|e| e.to_string())) {
        Ok(node) => Box::into_raw(Box::new(ds_kernel { node })),
        Err(e) => {
            set_error(e);
            std::ptr::null_mut()
        }
    }
}

/// Free a kernel node (NULL: nothing); the steering program leaves the interface.
///
/// # Safety
/// `k` is NULL or from `ds_kernel_new`, not freed before.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_free(k: *mut ds_kernel) {
    if !k.is_null() {
        // SAFETY: from Box::into_raw in ds_kernel_new, freed once per the contract.
        drop(unsafe { Box::from_raw(k) });
    }
}

/// # Safety
/// `k` is NULL or a live kernel node.
unsafe fn kernel_mut<'a>(k: *mut ds_kernel) -> Result<&'a mut ds_kernel, c_int> {
    // SAFETY: per this function's contract.
    unsafe { k.as_mut() }.ok_or_else(|| fail(DS_EINVAL, "node is NULL"))
}

/// Wait up to `timeout_ms` for control messages and process them (offers from other
/// nodes). `DS_OK` or an error.
///
/// # Safety
/// `k` is a live kernel node.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_poll(k: *mut ds_kernel, timeout_ms: c_int) -> c_int {
    let k = live!(kernel_mut(k));
    match k.node.poll(timeout(timeout_ms)) {
        Ok(()) => DS_OK,
        Err(e) => node_error(e),
    }
}

/// A descriptor that turns readable when the kernel node has input (for `poll`/`epoll`
/// beside the server's listening socket). Negative on error.
///
/// # Safety
/// `k` is a live kernel node.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_fd(k: *mut ds_kernel) -> c_int {
    let k = live!(kernel_mut(k));
    k.node.readiness_fd().unwrap_or_else(node_error)
}

/// The longest wait before the next `ds_kernel_poll`, milliseconds; -1: no deadline.
///
/// # Safety
/// `k` is a live kernel node.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_timeout_ms(k: *mut ds_kernel) -> c_int {
    let k = live!(kernel_mut(k));
    match k.node.poll_timeout() {
        None => -1,
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int,
    }
}

/// The next connection another node handed over, as a blocking kernel socket in `*fd`
/// (the caller owns it), its state copied into `state` (at most `cap` bytes; its whole
/// length in `*state_len`). Waits up to `timeout_ms` (-1: until one comes). 1, 0 when none
/// came, or negative on error.
///
/// # Safety
/// `k` is a live kernel node; `fd` writable; `state` writable for `cap` bytes (or NULL with
/// 0); `state_len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ds_kernel_accept(
    k: *mut ds_kernel,
    timeout_ms: c_int,
    fd: *mut c_int,
    state: *mut u8,
    cap: usize,
    state_len: *mut usize,
) -> c_int {
    let k = live!(kernel_mut(k));
    if fd.is_null() || (state.is_null() && cap > 0) {
        return fail(DS_EINVAL, "fd or state is NULL");
    }
    let got = within(timeout_ms, |wait| {
        let a = k.node.try_accept();
        if a.is_none() {
            k.node.poll(wait)?;
        }
        Ok(a)
    });
    let a = match got {
        Ok(Some(a)) => a,
        Ok(None) => return 0,
        Err(e) => return e,
    };
    let n = a.state.len().min(cap);
    if n > 0 {
        // SAFETY: `state` is writable for `cap` >= n bytes per the contract.
        unsafe { std::ptr::copy_nonoverlapping(a.state.as_ptr(), state, n) };
    }
    // SAFETY: NULL or writable per the contract.
    if let Some(l) = unsafe { state_len.as_mut() } {
        *l = a.state.len();
    }
    // SAFETY: not NULL (checked) and writable per the contract.
    unsafe { *fd = a.stream.into_raw_fd() };
    1
}

/// Hand the connection of `fd`, a connected TCP socket the server accepted itself, to the
/// node whose control address is `to`, with `len` bytes of application `state`; wait for
/// the outcome. `DS_OK`: it moved, `fd` is closed and `*report` (if not NULL) filled.
/// `DS_EHANDOFF`: it continues here and `fd` is its socket again (the same number, possibly
/// a new socket). Any other error: `fd` is closed if the connection was lost, left as it
/// was if the arguments were refused (`DS_EINVAL`).
///
/// # Safety
/// `k` is a live kernel node; `fd` an open socket the caller owns; `to` a NUL-terminated
/// string; `state` readable for `len` bytes; `report` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ds_handoff_fd(
    k: *mut ds_kernel,
    fd: c_int,
    to: *const c_char,
    state: *const u8,
    len: usize,
    report: *mut ds_report,
) -> c_int {
    let k = live!(kernel_mut(k));
    // SAFETY: per the contract.
    let (to, state) = match unsafe { handoff_args(to, state, len) } {
        Ok(a) => a,
        Err(e) => return e,
    };
    if fd < 0 {
        return fail(DS_EINVAL, "fd is negative");
    }
    // SAFETY: the caller owns the open socket `fd` and gives it to us for the call; every
    // path below either closes it (moved or lost) or puts a socket back under its number.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    match k.node.handoff_socket(sock, to, state) {
        Ok(r) => {
            // SAFETY: NULL or writable per the contract.
            if let Some(out) = unsafe { report.as_mut() } {
                *out = ds_report::from(&r);
            }
            DS_OK
        }
        Err((Some(back), e)) => {
            let got = back.into_raw_fd();
            if got != fd {
                // SAFETY: `got` is the socket that came back, owned here; dup2 makes `fd`
                // (closed when the original socket went) refer to it, then `got` is closed.
                let ok = unsafe { libc::dup2(got, fd) } == fd;
                // SAFETY: `got` is ours and no longer needed.
                unsafe { libc::close(got) };
                if !ok {
                    return fail(DS_EFAIL, format!("{e}; the socket could not be put back"));
                }
            }
            node_error(e)
        }
        Err((None, e)) => fail(DS_EFAIL, format!("{e}; the connection is lost")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> ds_config {
        let mut cfg = ds_config::default();
        for (k, v) in pairs {
            assert!(KEYS.contains(k), "{k} is a key");
            cfg.values.insert(k.to_string(), v.to_string());
        }
        cfg
    }

    #[test]
    fn steer_ahead_takes_a_flag_and_names_itself_when_wrong() {
        for v in ["1", "true", "0", "false"] {
            assert!(
                builder(
                    &config(&[("ds_addr", "fd00::80"), ("iface", "t0"), ("steer_ahead", v)]),
                    "tap"
                )
                .is_ok(),
                "{v}"
            );
        }
        let e = builder(
            &config(&[
                ("ds_addr", "fd00::80"),
                ("iface", "t0"),
                ("steer_ahead", "yes"),
            ]),
            "tap",
        )
        .expect_err("refused");
        assert!(e.contains("steer_ahead"), "{e}");
    }
}
