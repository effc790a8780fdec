//! A receive-side packet log in the client's namespace: when each TCP data segment from the
//! DS address reached the client's interface. It gives the client-perceived gap of every
//! handoff (from the last segment before the handoff's sequence boundary to the first one
//! after it) and counts data the client received twice (the servers' retransmissions).

use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One IPv6 frame that crossed the capture point.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// When it crossed the interface (the kernel's stamp, on the monotonic clock of the
    /// nodes' reports).
    pub at: Instant,
    /// Ethernet source: the last hop it came from (a node, or the router in front of it).
    pub src_mac: [u8; 6],
    /// Source address; for a packet with a Home Address option (RFC 6275 §6.3) the home
    /// address, which is the source the transport sees.
    pub src: Ipv6Addr,
    /// Destination address in the header (a care-of address when a type 2 routing header
    /// follows).
    pub dst: Ipv6Addr,
    /// Carries a Home Address destination option.
    pub hao: bool,
    /// Carries a type 2 routing header (RFC 6275 §6.4).
    pub rh2: bool,
    /// TCP fields when the upper layer is TCP: (source port, destination port, sequence
    /// number, payload length).
    pub tcp: Option<(u16, u16, u32, u32)>,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10); 0 when not TCP.
    pub flags: u8,
    /// TCP acknowledgement number; 0 when not TCP.
    pub ack: u32,
    /// TCP timestamp option's TSval (RFC 7323 §3), when present.
    pub tsval: Option<u32>,
    /// TCP SACK blocks (RFC 2018 §3), as the option lists them.
    pub sack: [Option<(u32, u32)>; 3],
}

/// One TCP segment with payload from the server, as the client's link saw it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Arrival time.
    pub at: Instant,
    /// Sequence number of the first payload byte.
    pub seq: u32,
    /// Payload length.
    pub len: u32,
}

/// The server's data segments (from `server` port `port`, payload > 0) in a frame log, of the
/// connection the capture saw open only ([`captured_client_port`]).
pub fn data_from(frames: &[Frame], server: Ipv6Addr, port: u16) -> Vec<Seen> {
    server_data(frames, server, port)
        .filter_map(|f| f.tcp.map(|(_, _, seq, len)| Seen { at: f.at, seq, len }))
        .collect()
}

/// The client port of the first SYN to `server`:`port` in the capture: the connection it saw
/// open. An earlier connection still served from the same address and port (an acceptor
/// still holding one, segments still in a shaped queue) is not it.
fn captured_client_port(frames: &[Frame], server: Ipv6Addr, port: u16) -> Option<u16> {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    frames.iter().find_map(|f| match f.tcp {
        Some((sp, dp, _, _)) if f.dst == server && dp == port && f.flags & (SYN | ACK) == SYN => {
            Some(sp)
        }
        _ => None,
    })
}

/// The data segments from `server`:`port` of the captured connection (all connections when
/// the capture saw no SYN).
fn server_data(frames: &[Frame], server: Ipv6Addr, port: u16) -> impl Iterator<Item = &Frame> {
    let client_port = captured_client_port(frames, server, port);
    frames.iter().filter(move |f| {
        f.src == server
            && matches!(f.tcp, Some((sp, dp, _, len))
                if sp == port && len > 0 && client_port.is_none_or(|c| c == dp))
    })
}

/// A capture running on a thread; [`Sniffer::stop`] returns the log.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<Vec<Frame>>>,
}

fn packet_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the returned descriptor is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| std::io::Error::other("interface name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = idx as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A burst of a whole send window arrives faster than the thread reads: a large buffer
    // keeps the log complete (FORCE: we run as root, above net.core.rmem_max).
    let size: libc::c_int = 32 << 20;
    // SAFETY: `size` is a valid c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: `tv` is a valid timeval and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The kernel's time of each frame (socket(7)): when it crossed the interface, not when
    // this thread got a CPU to read it — which, with the nodes under SCHED_FIFO or the cores
    // busy, came hundreds of microseconds later, in batches that squeezed or stretched gaps.
    if !ds_wan::stamp::enable(fd.as_raw_fd()) {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// One frame into `buf`: its length and when it crossed the interface, on the monotonic
/// clock (the kernel's `SCM_TIMESTAMPNS` is on CLOCK_REALTIME: moved by the distance between
/// the two clocks read now; the time of reading when the kernel attached no stamp).
fn recv_stamped(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<(usize, Instant)> {
    let (n, stamp) = ds_wan::stamp::recv_stamped(fd.as_raw_fd(), buf, 0)?;
    let now = Instant::now();
    let at = stamp
        .and_then(|s| ds_wan::stamp::realtime().checked_sub(s))
        .and_then(|ago| now.checked_sub(ago))
        .unwrap_or(now);
    Ok((n, at))
}

/// Parse an Ethernet frame carrying IPv6 (extension headers walked; malformed → None).
fn parse(at: Instant, f: &[u8]) -> Option<Frame> {
    if f.len() < 14 + 40 || f[12..14] != [0x86, 0xdd] {
        return None;
    }
    let ip = &f[14..];
    let octets = |b: &[u8]| -> Option<Ipv6Addr> {
        let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
        Some(Ipv6Addr::from(a))
    };
    let mut src = octets(&ip[8..24])?;
    let dst = octets(&ip[24..40])?;
    let end = (40 + u16::from_be_bytes([ip[4], ip[5]]) as usize).min(ip.len());
    let (mut nh, mut off) = (ip[6], 40usize);
    let (mut hao, mut rh2) = (false, false);
    // Hop-by-hop, routing, destination options: walk (RFC 8200 §4).
    while matches!(nh, 0 | 43 | 60) {
        let h = ip.get(off..off + 8)?;
        let len = (h[1] as usize + 1) * 8;
        let body = ip.get(off..off + len)?;
        if nh == 43 && h[2] == 2 {
            rh2 = true;
        }
        if nh == 60 {
            let mut o = 2;
            while o + 2 <= body.len() {
                match body[o] {
                    0 => o += 1,
                    0xc9 => {
                        src = octets(body.get(o + 2..)?)?;
                        hao = true;
                        o += 2 + body[o + 1] as usize;
                    }
                    _ => o += 2 + body[o + 1] as usize,
                }
            }
        }
        nh = h[0];
        off += len;
    }
    let (mut flags, mut ack, mut tsval, mut sack) = (0, 0, None, [None; 3]);
    let tcp = if nh == 6 {
        let t = ip.get(off..off + 20)?;
        flags = t[13];
        ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        let doff = ((t[12] >> 4) as usize) * 4;
        (tsval, sack) = ip
            .get(off + 20..off + doff)
            .map_or((None, [None; 3]), tcp_options);
        let len = end.checked_sub(off + doff)? as u32;
        Some((
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
            u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            len,
        ))
    } else {
        None
    };
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&f[6..12]);
    Some(Frame {
        at,
        src_mac,
        src,
        dst,
        hao,
        rh2,
        tcp,
        flags,
        ack,
        tsval,
        sack,
    })
}

/// The TSval of a timestamp option (RFC 7323 §3) and the SACK blocks (RFC 2018 §3) among TCP
/// options (smoltcp's option parser, as the stack's); what a malformed option list hides
/// stays unknown.
fn tcp_options(mut opts: &[u8]) -> (Option<u32>, [Option<(u32, u32)>; 3]) {
    use smoltcp::wire::TcpOption;
    let (mut ts, mut sack) = (None, [None; 3]);
    while !opts.is_empty() {
        let Ok((rest, o)) = TcpOption::parse(opts) else {
            break;
        };
        match o {
            TcpOption::TimeStamp { tsval, .. } => ts = Some(tsval),
            TcpOption::SackRange(r) => sack = r,
            TcpOption::EndOfList => break,
            _ => {}
        }
        opts = rest;
    }
    (ts, sack)
}

impl Sniffer {
    /// Start capturing every IPv6 frame on `ifname` of the calling thread's network namespace
    /// (the socket is created here: call it from inside the namespace).
    pub fn start(ifname: &str) -> std::io::Result<Sniffer> {
        let fd = packet_socket(ifname)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sniffer".into())
            .spawn(move || {
                let mut log = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    let (n, at) = match recv_stamped(&fd, &mut buf) {
                        Ok(r) => r,
                        Err(e) => match e.kind() {
                            std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::TimedOut => continue,
                            _ => return Err(e),
                        },
                    };
                    if let Some(f) = parse(at, &buf[..n.min(buf.len())]) {
                        log.push(f);
                    }
                }
                Ok(log)
            })?;
        Ok(Sniffer { stop, thread })
    }

    /// Stop and return the log.
    pub fn stop(self) -> std::io::Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("sniffer thread panicked"))?
    }
}

fn after_or_at(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The client-perceived gap of the handoff whose first new byte is `boundary`: from the last
/// arrival before the first segment at or beyond the boundary that brought the client new
/// data, to that segment. A duplicate (a drain's probe octet, a retransmission of what had
/// arrived) is not progress the client's application sees, so it does not end the gap.
pub fn gap(log: &[Seen], boundary: u32) -> Option<Duration> {
    let i = log.iter().position(|s| after_or_at(s.seq, boundary))?;
    let base = log.first()?.seq;
    // Highest offset received so far (no wrap within the 4 GiB a run can move).
    let mut high: u64 = 0;
    let mut before = None;
    for s in &log[..i] {
        let end = u64::from(s.seq.wrapping_sub(base)) + u64::from(s.len);
        if end > high {
            before = Some(s.at);
            high = end;
        }
    }
    Some(log[i].at.duration_since(before?))
}

/// The seed's client-perceived handoff time (§3.2.3): from the last data segment of `server`
/// port `port` that came from the donor's side (Ethernet source `donor`) to the first one
/// from the acceptor's side (`acceptor`). Unlike [`gap`], it does not depend on where the
/// sequence boundary lies, so data the donor had in flight when it froze counts as the
/// donor's.
///
/// Only the connection the capture saw open counts ([`captured_client_port`]): an earlier
/// download's connection that the acceptor still serves, or whose segments still sit in a
/// shaped queue, sends from the same address and port, and its first segment would otherwise
/// pass for the acceptor's first.
pub fn sender_gap(
    frames: &[Frame],
    server: Ipv6Addr,
    port: u16,
    donor: [u8; 6],
    acceptor: [u8; 6],
) -> Option<Duration> {
    let data: Vec<&Frame> = server_data(frames, server, port).collect();
    let first = data.iter().position(|f| f.src_mac == acceptor)?;
    let last = data[..first].iter().rev().find(|f| f.src_mac == donor)?;
    Some(data[first].at.duration_since(last.at))
}

/// The TCP segments on `me`'s link, one line each (time from the first frame in ms,
/// direction, peer, routing header or Home Address option, sequence, length, acknowledgement,
/// flags): what a test prints when the client retransmitted.
pub fn trace(frames: &[Frame], me: Ipv6Addr) -> String {
    trace_labelled(frames, me, |_| "")
}

/// [`trace`], each line starting with `label` of its frame (e.g. which side's last hop it
/// came from).
pub fn trace_labelled(
    frames: &[Frame],
    me: Ipv6Addr,
    label: impl Fn(&Frame) -> &'static str,
) -> String {
    let Some(t0) = frames.first().map(|f| f.at) else {
        return String::new();
    };
    let mut out = String::new();
    for f in frames {
        let Some((sp, dp, seq, len)) = f.tcp else {
            continue;
        };
        let names = [
            (0x02, 'S'),
            (0x01, 'F'),
            (0x04, 'R'),
            (0x08, 'P'),
            (0x10, '.'),
        ];
        let flags: String = names
            .iter()
            .filter(|(b, _)| f.flags & b != 0)
            .map(|(_, c)| *c)
            .collect();
        let (dir, peer, port) = if f.src == me {
            ("->", f.dst, dp)
        } else {
            ("<-", f.src, sp)
        };
        let ext = match (f.rh2, f.hao) {
            (true, _) => " rh2",
            (_, true) => " hao",
            _ => "",
        };
        let l = label(f);
        let sep = if l.is_empty() { "" } else { " " };
        let sack: String = f
            .sack
            .iter()
            .flatten()
            .map(|(l, r)| format!(" {l}-{r}"))
            .collect();
        let sack = if sack.is_empty() {
            sack
        } else {
            format!(" sack{sack}")
        };
        out.push_str(&format!(
            "{l}{sep}{:.3} ms {dir} [{peer}]:{port}{ext} seq {seq} len {len} ack {} ts {}{sack} [{flags}]\n",
            f.at.duration_since(t0).as_secs_f64() * 1e3,
            f.ack,
            f.tsval.map_or("-".to_string(), |t| t.to_string()),
        ));
    }
    out
}

/// Data segments whose bytes had all arrived before (retransmissions reaching the client).
pub fn duplicates(log: &[Seen]) -> u64 {
    duplicated(log).0
}

/// Data segments that arrived a second time, and their payload octets (a drain's probe
/// carries one octet).
pub fn duplicated(log: &[Seen]) -> (u64, u64) {
    let Some(first) = log.first() else {
        return (0, 0);
    };
    // Highest sequence received so far, as an offset from the first segment (no wrap within
    // the 4 GiB a run can move).
    let base = first.seq;
    let mut high: u64 = 0;
    let (mut dups, mut octets) = (0, 0);
    for s in log {
        let start = s.seq.wrapping_sub(base) as u64;
        let end = start + s.len as u64;
        if end <= high {
            dups += 1;
            octets += u64::from(s.len);
        }
        high = high.max(end);
    }
    (dups, octets)
}

/// A device that logs every frame it passes, both ways, as a capture on the client's link
/// would (`at`: when the stack took it from, or gave it to, the device). For a client on our
/// stack behind XDP: its frames go to and come from an AF_XDP socket, which a packet socket
/// on the same interface never sees.
pub struct Recording<D> {
    inner: D,
    on: bool,
    log: Vec<Frame>,
}

impl<D> Recording<D> {
    /// Wrap `inner`; `on`: log (otherwise frames only pass, at no cost).
    pub fn new(inner: D, on: bool) -> Self {
        Recording {
            inner,
            on,
            log: Vec::new(),
        }
    }

    /// The frames seen so far, in order.
    pub fn take(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.log)
    }

    fn note(&mut self, f: &[u8]) {
        if self.on {
            self.log.extend(parse(Instant::now(), f));
        }
    }
}

impl<D: ds_stack::device::Device> ds_stack::device::Device for Recording<D> {
    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let r = self.inner.recv(buf)?;
        if let Some(n) = r {
            self.note(&buf[..n]);
        }
        Ok(r)
    }
    fn recv_in_place(
        &mut self,
        max: usize,
        f: &mut dyn FnMut(&[&[u8]]),
    ) -> std::io::Result<Option<usize>> {
        let Self { inner, on, log } = self;
        inner.recv_in_place(max, &mut |frames| {
            if *on {
                for frame in frames {
                    log.extend(parse(Instant::now(), frame));
                }
            }
            f(frames)
        })
    }
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.note(frame);
        self.inner.send(frame)
    }
    fn send_in_place(
        &mut self,
        len: usize,
        build: &mut dyn FnMut(&mut [u8]),
    ) -> std::io::Result<Option<bool>> {
        let Self { inner, on, log } = self;
        inner.send_in_place(len, &mut |frame| {
            build(frame);
            if *on {
                log.extend(parse(Instant::now(), frame));
            }
        })
    }
    fn gso_max(&self) -> usize {
        self.inner.gso_max()
    }
    fn send_gso(
        &mut self,
        frame: &[u8],
        gso: Option<ds_stack::device::Gso>,
    ) -> std::io::Result<()> {
        self.note(frame);
        self.inner.send_gso(frame, gso)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.inner.wait(timeout)
    }
    fn mtu(&self) -> usize {
        self.inner.mtu()
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn wait_fds(&self, set: &mut ds_stack::device::PollSet) {
        self.inner.wait_fds(set)
    }
    fn stats(&self) -> ds_stack::device::DeviceStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_and_sack_options_are_found_among_others() {
        // NOP, NOP, timestamps (TSval 0x01020304), as Linux lays them out; then SACK-permitted
        // first and no timestamps.
        let ts = [1, 1, 8, 10, 1, 2, 3, 4, 0, 0, 0, 9];
        assert_eq!(tcp_options(&ts), (Some(0x0102_0304), [None; 3]));
        assert_eq!(tcp_options(&[4, 2, 1, 1, 0, 0, 0, 0]), (None, [None; 3]));
        // Cut short: no panic, nothing.
        assert_eq!(tcp_options(&[8, 10, 1, 2]), (None, [None; 3]));
        // A duplicate ACK as Linux sends it: NOP, NOP, timestamps, NOP, NOP, two SACK blocks.
        let mut dup = vec![1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 0, 1, 1, 5, 18];
        for v in [100u32, 200, 300, 400] {
            dup.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(
            tcp_options(&dup),
            (Some(7), [Some((100, 200)), Some((300, 400)), None])
        );
    }

    /// A TCP frame of a capture (no extension headers, no timestamp option).
    fn tcp_frame(
        at: Instant,
        src_mac: [u8; 6],
        (src, dst): (Ipv6Addr, Ipv6Addr),
        tcp: (u16, u16, u32, u32),
        flags: u8,
        ack: u32,
    ) -> Frame {
        Frame {
            at,
            src_mac,
            src,
            dst,
            hao: false,
            rh2: false,
            tcp: Some(tcp),
            flags,
            ack,
            tsval: None,
            sack: [None; 3],
        }
    }

    #[test]
    fn the_sender_gap_counts_only_the_captured_connection() {
        let t = Instant::now();
        let server = Ipv6Addr::LOCALHOST;
        let client: Ipv6Addr = "fd00::c".parse().unwrap();
        let (donor, acceptor, other) = ([1; 6], [2; 6], [3; 6]);
        let f = |ms: u64, mac, src, dst, tcp, flags| {
            tcp_frame(
                t + Duration::from_millis(ms),
                mac,
                (src, dst),
                tcp,
                flags,
                0,
            )
        };
        let log = [
            // A segment of an earlier connection (client port 1111), still sent by the
            // acceptor, before this connection's handoff.
            f(0, acceptor, server, client, (80, 1111, 7, 100), 0x10),
            f(1, other, client, server, (2222, 80, 0, 0), 0x02),
            f(2, donor, server, client, (80, 2222, 1, 100), 0x10),
            f(3, acceptor, server, client, (80, 1111, 107, 100), 0x10),
            f(4, donor, server, client, (80, 2222, 101, 100), 0x10),
            f(9, acceptor, server, client, (80, 2222, 201, 100), 0x10),
        ];
        assert_eq!(
            sender_gap(&log, server, 80, donor, acceptor),
            Some(Duration::from_millis(5))
        );
        // Without the SYN (a capture that began late), every connection counts: the stray
        // segment at 3 ms is then taken for the acceptor's first.
        assert_eq!(
            sender_gap(&log[2..], server, 80, donor, acceptor),
            Some(Duration::from_millis(1))
        );
        // The sequence-boundary gap (`dsperf handoff`) reads the same connection only.
        let seqs: Vec<u32> = data_from(&log, server, 80).iter().map(|s| s.seq).collect();
        assert_eq!(seqs, vec![1, 101, 201]);
        assert_eq!(
            gap(&data_from(&log, server, 80), 107),
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn a_labelled_trace_starts_each_line_with_its_label() {
        let t = Instant::now();
        let me: Ipv6Addr = "fd00::c".parse().unwrap();
        let f = |mac, src, dst, tcp| tcp_frame(t, mac, (src, dst), tcp, 0x10, 9);
        let log = [
            f([1; 6], Ipv6Addr::LOCALHOST, me, (80, 5000, 1, 100)),
            f([2; 6], me, Ipv6Addr::LOCALHOST, (5000, 80, 9, 0)),
        ];
        let text = trace_labelled(&log, me, |x| if x.src_mac == [1; 6] { "D" } else { "-" });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("D 0.000 ms <- [::1]:80 seq 1 len 100"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("- 0.000 ms -> [::1]:80 seq 9 len 0"),
            "{text}"
        );
        // Unlabelled, as before.
        assert!(trace(&log, me).starts_with("0.000 ms <-"));
    }

    #[test]
    fn gap_and_duplicates() {
        let t = Instant::now();
        let s = |ms: u64, seq: u32, len: u32| Seen {
            at: t + Duration::from_millis(ms),
            seq,
            len,
        };
        let log = [
            s(0, u32::MAX - 99, 100),
            s(1, 0, 100),
            s(2, 0, 100),
            s(7, 100, 100),
        ];
        // From the last arrival of new data (1 ms), not the duplicate after it (2 ms).
        assert_eq!(gap(&log, 100), Some(Duration::from_millis(6)));
        assert_eq!(gap(&log, 0), Some(Duration::from_millis(1)));
        assert_eq!(gap(&log, 500), None);
        assert_eq!(duplicates(&log), 1);
        assert_eq!(duplicated(&log), (1, 100));
    }
}
