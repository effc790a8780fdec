//! UDP (RFC 768) sockets.

use super::emit::emit_fragment_header;
use super::ipv6::{FRAGMENT_HEADER_LEN, FRAGMENT_OFFSET_UNIT};
use super::{caps, put_in_free_slot, Error, Interface, UdpHandle, PMTU_AGE};
use crate::time::Instant;
use crate::udp::{UdpSocket, UDP_QUEUE};
use smoltcp::wire::{
    Icmpv6DstUnreachable, IpAddress, IpProtocol, UdpPacket, UdpRepr, IPV6_HEADER_LEN,
    UDP_HEADER_LEN,
};
use std::collections::VecDeque;
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
        let Ok(repr) = UdpRepr::parse(&pkt, &IpAddress::Ipv6(src), &IpAddress::Ipv6(dst), &caps())
        else {
            self.stats.rx_bad_checksum += 1;
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
                s.rx.push_back((
                    SocketAddrV6::new(src, repr.src_port, 0, 0),
                    pkt.payload().to_vec(),
                ));
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
        let s = UdpSocket {
            local,
            rx: VecDeque::new(),
        };
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
        let mut dgram = vec![0u8; udp_len];
        {
            let mut p = UdpPacket::new_unchecked(&mut dgram[..]);
            UdpRepr {
                src_port: sport,
                dst_port: dst.port(),
            }
            .emit(
                &mut p,
                &IpAddress::Ipv6(src),
                &IpAddress::Ipv6(*dst.ip()),
                data.len(),
                |b| b.copy_from_slice(data),
                &caps(),
            );
        }
        let mtu = self
            .pmtu
            .get(dst.ip())
            .filter(|p| now - p.1 < PMTU_AGE)
            .map(|p| p.0)
            .unwrap_or(self.cfg.mtu);
        if IPV6_HEADER_LEN + udp_len <= mtu {
            let mut buf = self.ip_frame(src, *dst.ip(), IpProtocol::Udp, udp_len);
            buf.extend_from_slice(&dgram);
            self.send_frame(now, buf, *dst.ip(), None);
            return Ok(());
        }
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
