//! Ethernet addresses: parsing and a stable default derived from the node's IPv6 address.

use std::net::Ipv6Addr;

/// A locally administered unicast MAC derived from `addr` (FNV-1a of its 16 bytes), so a
/// node keeps the same MAC across restarts and different addresses get different MACs.
pub fn mac_from_addr(addr: Ipv6Addr) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.octets() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    // 0x02: locally administered (bit 1), unicast (bit 0 clear).
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Parse `aa:bb:cc:dd:ee:ff` (or with `-`); multicast addresses are refused.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!(
            "{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)"
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!(
                "{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)"
            ));
        }
        *dst = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: bad hex byte {p:?}"))?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!("{s:?} is a multicast address"));
    }
    if mac == [0; 6] {
        return Err("the all-zero MAC is not usable".to_string());
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_macs_are_local_unicast_and_stable() {
        let a: Ipv6Addr = "fd00:d5::80".parse().unwrap();
        let b: Ipv6Addr = "fd00:d5::81".parse().unwrap();
        let ma = mac_from_addr(a);
        assert_eq!(ma, mac_from_addr(a));
        assert_ne!(ma, mac_from_addr(b));
        assert_eq!(ma[0], 0x02);
    }

    #[test]
    fn parse_and_format() {
        assert_eq!(
            parse_mac("02:00:5e:10:00:ff"),
            Ok([2, 0, 0x5e, 0x10, 0, 0xff])
        );
        assert_eq!(
            parse_mac("02-00-5E-10-00-FF"),
            Ok([2, 0, 0x5e, 0x10, 0, 0xff])
        );
        assert_eq!(
            format_mac(&[2, 0, 0x5e, 0x10, 0, 0xff]),
            "02:00:5e:10:00:ff"
        );
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:ff:00",
            "0x:00:5e:10:00:ff",
            "01:00:5e:00:00:01",
            "2:0:5e:10:0:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }
}
