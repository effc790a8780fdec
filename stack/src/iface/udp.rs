//! UDP (RFC 768) sockets.

use super::emit::emit_fragment_header;
use super::ipv6::{FRAGMENT_HEADER_LEN, FRAGMENT_OFFSET_UNIT};
use super::{caps, fill_upper_checksum, put_in_free_slot, Error, Interface, UdpHandle};
use crate::time::Instant;
use crate::udp::{UdpSocket, UDP_QUEUE};
use ds_mipv6::wire::{pseudo_checksum, IPPROTO_UDP};
use smoltcp::wire::{
    Icmpv6DstUnreachable, IpAddress, IpProtocol, UdpPacket, UdpRepr, IPV6_HEADER_LEN,
    UDP_HEADER_LEN,
};
use std::net::{Ipv6Addr, SocketAddrV6};

impl Interface {
    /// A UDP datagram for us (RFC 768; RFC 8200 §8.1: the checksum is mandatory): to its
    /// socket, or answered with Port Unreachable (RFC 4443 §3.1).
    pub(super) fn receive_udp(
        &mut self,
        now: Instant,
        payload: &[u8],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        whole: &[u8],
    ) {
        let Ok(pkt) = UdpPacket::new_checked(payload) else {
            self.stats.rx_malformed += 1;
            return;
        };
        // Over the datagram's own length (`new_checked` held it within the payload); a zero
        // checksum is invalid over IPv6 (RFC 8200 §8.1).
        let dgram = payload.get(..usize::from(pkt.len())).unwrap_or(payload);
        if pkt.checksum() == 0 || pseudo_checksum(src, dst, IPPROTO_UDP, dgram) != 0 {
            self.stats.rx_bad_checksum += 1;
            return;
        }
        let Ok(repr) = UdpRepr::parse(&pkt, &IpAddress::Ipv6(src), &IpAddress::Ipv6(dst), &caps())
        else {
            self.stats.rx_malformed += 1;
            return;
        };
        let sock = self
            .udp_map
            .get(&repr.dst_port)
            .copied()
            .and_then(|i| self.udp.get_mut(i as usize))
            .and_then(|s| s.as_mut());
        match sock {
            Some(s) if s.local.ip().is_unspecified() || *s.local.ip() == dst => {
                if s.rx.len() >= UDP_QUEUE {
                    self.stats.udp_drops += 1;
                    return;
                }
                let d = s.buffer_with(pkt.payload());
                s.rx.push_back((SocketAddrV6::new(src, repr.src_port, 0, 0), d));
                self.stats.udp_rx += 1;
            }
            _ => {
                self.stats.udp_drops += 1;
                if !dst.is_multicast() {
                    // RFC 4443 §3.1 code 4: port unreachable.
                    self.dst_unreachable(now, whole, Icmpv6DstUnreachable::PortUnreachable);
                }
            }
        }
    }

    /// Bind a UDP socket (unspecified address: all of ours).
    pub fn udp_bind(&mut self, local: SocketAddrV6) -> Result<UdpHandle, Error> {
        if !local.ip().is_unspecified() && !self.is_ours(local.ip()) {
            return Err(Error::AddrNotAvailable);
        }
        if local.port() == 0 {
            return Err(Error::AddrNotAvailable);
        }
        if self.udp_map.contains_key(&local.port()) {
            return Err(Error::AddrInUse);
        }
        let s = UdpSocket::new(local);
        let idx = put_in_free_slot(&mut self.udp, s);
        self.udp_map.insert(local.port(), idx as u32);
        Ok(UdpHandle(idx as u32))
    }

    /// Close a UDP socket.
    pub fn udp_close(&mut self, h: UdpHandle) {
        if let Some(slot) = self.udp.get_mut(h.0 as usize) {
            if let Some(s) = slot.take() {
                self.udp_map.remove(&s.local.port());
            }
        }
    }

    /// Next received datagram: (length copied, source).
    pub fn udp_recv_from(
        &mut self,
        h: UdpHandle,
        buf: &mut [u8],
    ) -> Result<Option<(usize, SocketAddrV6)>, Error> {
        let s = self
            .udp
            .get_mut(h.0 as usize)
            .and_then(|s| s.as_mut())
            .ok_or(Error::InvalidHandle)?;
        Ok(s.rx.pop_front().map(|(from, d)| {
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            s.recycle(d);
            (n, from)
        }))
    }

    /// Send a datagram, fragmenting it (RFC 8200 §4.5) when it exceeds the path MTU.
    pub fn udp_send_to(
        &mut self,
        now: Instant,
        h: UdpHandle,
        data: &[u8],
        dst: SocketAddrV6,
    ) -> Result<(), Error> {
        self.now = self.now.max(now);
        let s = self
            .udp
            .get(h.0 as usize)
            .and_then(|s| s.as_ref())
            .ok_or(Error::InvalidHandle)?;
        let src = if s.local.ip().is_unspecified() {
            self.source_for(dst.ip())
        } else {
            *s.local.ip()
        };
        let sport = s.local.port();
        let udp_len = UDP_HEADER_LEN + data.len();
        if udp_len > usize::from(u16::MAX) {
            return Err(Error::TooLarge);
        }
        // The datagram, header and checksum, into `out` (`udp_len` bytes).
        let emit = |out: &mut [u8]| {
            UdpRepr {
                src_port: sport,
                dst_port: dst.port(),
            }
            .emit(
                &mut UdpPacket::new_unchecked(out),
                &IpAddress::Ipv6(src),
                &IpAddress::Ipv6(*dst.ip()),
                data.len(),
                |b| b.copy_from_slice(data),
                &caps(),
            );
            fill_upper_checksum(src, *dst.ip(), IPPROTO_UDP, out, 6);
        };
        let mtu = self.path_mtu(now, dst.ip());
        if IPV6_HEADER_LEN + udp_len <= mtu {
            // Built in the frame (from the pool): nothing allocated per datagram.
            let mut buf = self.ip_frame(src, *dst.ip(), IpProtocol::Udp, udp_len);
            let start = buf.len();
            buf.resize(start + udp_len, 0);
            emit(&mut buf[start..]);
            self.send_frame(now, buf, *dst.ip(), None);
            return Ok(());
        }
        // Larger than the path MTU (rare): the whole datagram first, for its checksum.
        let mut dgram = vec![0u8; udp_len];
        emit(&mut dgram);
        // Fragment (RFC 8200 §4.5): each fragment's data a multiple of 8 octets except the
        // last.
        self.frag_ident = self.frag_ident.wrapping_add(1);
        let ident = self.frag_ident;
        let per = (mtu - IPV6_HEADER_LEN - FRAGMENT_HEADER_LEN) / FRAGMENT_OFFSET_UNIT
            * FRAGMENT_OFFSET_UNIT;
        let mut off = 0;
        while off < dgram.len() {
            let len = per.min(dgram.len() - off);
            let more = off + len < dgram.len();
            let frag_len = FRAGMENT_HEADER_LEN + len;
            let mut buf = self.ip_frame(src, *dst.ip(), IpProtocol::Ipv6Frag, frag_len);
            emit_fragment_header(&mut buf, IpProtocol::Udp, off, more, ident);
            buf.extend_from_slice(&dgram[off..off + len]);
            self.send_frame(now, buf, *dst.ip(), None);
            off += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, Instant, Interface};
    use std::net::{Ipv6Addr, SocketAddrV6};

    /// Datagrams are sent from frames of the pool and received into buffers the socket
    /// recycles: once warm, a datagram each way allocates nothing, and the bytes arrive whole
    /// from the right source.
    #[test]
    fn datagrams_reuse_their_buffers() {
        let (a_ip, b_ip) = (
            Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2),
        );
        let now = Instant::from_millis(1);
        let mut a = Interface::new(Config::new([2, 0, 0, 0, 0, 1], vec![a_ip]), now);
        let mut b = Interface::new(Config::new([2, 0, 0, 0, 0, 2], vec![b_ip]), now);
        let (at_a, at_b) = (
            SocketAddrV6::new(a_ip, 7000, 0, 0),
            SocketAddrV6::new(b_ip, 7001, 0, 0),
        );
        let ua = a.udp_bind(at_a).expect("bind");
        let ub = b.udp_bind(at_b).expect("bind");
        let mut buf = [0u8; 2048];
        let mut seen = Vec::new();
        // The first datagram the largest: a recycled buffer keeps its capacity, a new one
        // would have the datagram's.
        for (round, len) in [300usize, 100, 200, 50].into_iter().enumerate() {
            let msg = vec![round as u8; len];
            a.udp_send_to(now, ua, &msg, at_b).expect("send");
            // Neighbour discovery first, then the datagram: frames each way until quiet.
            for _ in 0..4 {
                let mut up = Vec::new();
                a.poll(now);
                a.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
                for f in &up {
                    b.receive(now, f);
                }
                let mut down = Vec::new();
                b.poll(now);
                b.transmit(now, &mut |f: &[u8]| down.push(f.to_vec()));
                for f in &down {
                    a.receive(now, f);
                }
            }
            let queued = b.udp[ub.0 as usize]
                .as_ref()
                .and_then(|s| s.rx.front())
                .map(|(_, d)| (d.as_ptr(), d.capacity()));
            seen.push(queued.expect("a datagram queued"));
            let got = b.udp_recv_from(ub, &mut buf).expect("recv");
            assert_eq!(got, Some((len, at_a)));
            assert_eq!(buf[..len], msg[..]);
        }
        // Every datagram after the first landed in the buffer the first one left.
        assert!(seen.iter().all(|p| *p == seen[0]), "{seen:?}");
        assert_eq!(seen[0].1, 300);
        // A zero checksum is invalid over IPv6 (RFC 8200 §8.1), and so is a wrong one: both
        // counted and dropped.
        let bad = b.stats().rx_bad_checksum;
        for zero in [true, false] {
            a.udp_send_to(now, ua, b"checked", at_b).expect("send");
            let mut up = Vec::new();
            a.transmit(now, &mut |f: &[u8]| up.push(f.to_vec()));
            let f = up
                .iter_mut()
                .find(|f| f.get(20) == Some(&17))
                .expect("a UDP frame");
            // Ethernet 14 + IPv6 40: the UDP checksum is bytes 6..8 of its header.
            if zero {
                f[60..62].copy_from_slice(&[0, 0]);
            } else {
                f[62] ^= 1;
            }
            b.receive(now, f);
        }
        assert_eq!(b.stats().rx_bad_checksum, bad + 2);
        assert_eq!(b.udp_recv_from(ub, &mut buf).expect("recv"), None);
    }
}
