//! An independent dissector checks our wire formats: the packets of a full exchange (HoTI,
//! CoTI, HoT, CoT, BU, BA, BE, BRR, home registration with RFC 4285 options, flow bindings,
//! data packets with RH2 and HAO) are written to a pcap file (libpcap format written by hand,
//! LINKTYPE_RAW) and decoded by `tshark -V`: no malformed packets or expert warnings, and the
//! field values are the ones we sent. tshark verifies neither the MH checksum nor the
//! authenticators, so those are recomputed here independently (python3's hmac/hashlib).

use ds_mipv6::cn::{CnConfig, Correspondent};
use ds_mipv6::ha::{HaConfig, HomeAgent, MnHaSa};
use ds_mipv6::mn::{
    ntp_from_unix, FlowRequest, HomeRegConfig, HomeRegistration, MnBinding, MnBindingConfig,
    TestInit,
};
use ds_mipv6::rr::TokenKind;
use ds_mipv6::wire::packet::{insert_hao, insert_rh2, verify_mh_packet};
use ds_mipv6::wire::{PacketBuilder, PortSelector};
use ds_mipv6::{Instant, MhMeta};
use std::net::Ipv6Addr;
use std::process::Command;
use std::time::Duration;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// libpcap file: global header (magic a1b2c3d4, v2.4, snaplen 65535, LINKTYPE_RAW = 101)
/// followed by one record header (ts_sec, ts_usec, incl_len, orig_len) per packet.
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&101u32.to_le_bytes());
    for (i, p) in packets.iter().enumerate() {
        f.extend_from_slice(&(1_750_000_000u32 + i as u32).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(&(p.len() as u32).to_le_bytes());
        f.extend_from_slice(p);
    }
    f
}

const HOME: &str = "fd00:d5::80";
const CN: &str = "fd00:cc::2";
const COA: &str = "fd00:a::1";
const HA: &str = "fd00:aa::1";

/// The exchange, in order, with a label per packet.
fn exchange() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut cn = Correspondent::new(CnConfig::default(), [7; 20], [9; 32]);
    let now = Instant::from_secs(1);
    let mut rr_test = |kind, addr, cookie, labels: [&'static str; 2]| {
        let (mut t, init) = TestInit::start(now, kind, a(addr), a(CN), [cookie; 8]);
        v.push((labels[0], init.packet.clone()));
        let reply = cn.on_packet(now, &init.packet).transmit.remove(0);
        v.push((labels[1], reply.packet.clone()));
        let (m, mh) = MhMeta::from_packet(&reply.packet).unwrap();
        t.on_mobility_header(now, m, mh).unwrap()
    };
    let hk = rr_test(TokenKind::Home, HOME, 0x11, ["HoTI", "HoT"]);
    let ck = rr_test(TokenKind::CareOf, COA, 0x22, ["CoTI", "CoT"]);
    let mut b = MnBinding::new(
        MnBindingConfig {
            home: a(HOME),
            care_of: a(COA),
            cn: a(CN),
            lifetime: Duration::from_secs(300),
            bid: None,
            flows: vec![],
        },
        0x1234,
    );
    b.set_keygen(hk).unwrap();
    b.set_keygen(ck).unwrap();
    let bu = b.send_update(now).unwrap();
    v.push(("BU", bu.packet.clone()));
    let ba = cn.on_packet(now, &bu.packet).transmit.remove(0);
    v.push(("BA", ba.packet.clone()));
    let be = match cn.check_hao(now, a(CN), a("fd00:b::1"), a(HOME), false) {
        ds_mipv6::cn::HaoCheck::Reject(Some(t)) => t,
        x => panic!("{x:?}"),
    };
    v.push(("BE", be.packet.clone()));
    // Data packets: CN → MN with RH2, MN → CN with HAO (UDP, checksummed on the home address).
    let mut udp = vec![0x9c, 0x40, 0, 80, 0, 12, 0, 0, b'd', b'a', b't', b'a'];
    let c = ds_mipv6::wire::pseudo_checksum(a(CN), a(HOME), 17, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let to_home = PacketBuilder::new(a(CN), a(HOME)).payload(17, &udp);
    v.push(("RH2 data", insert_rh2(&to_home, a(COA)).unwrap()));
    let mut udp = vec![0, 80, 0x9c, 0x40, 0, 12, 0, 0, b'd', b'a', b't', b'a'];
    let c = ds_mipv6::wire::pseudo_checksum(a(HOME), a(CN), 17, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let from_home = PacketBuilder::new(a(HOME), a(CN)).payload(17, &udp);
    v.push(("HAO data", insert_hao(&from_home, a(COA)).unwrap()));
    // Flow binding BU (RFC 5648 BID + RFC 6089 FID) and its BA.
    let mut fb = MnBinding::new(
        MnBindingConfig {
            home: a(HOME),
            care_of: a(COA),
            cn: a(CN),
            lifetime: Duration::from_secs(300),
            bid: Some(3),
            flows: vec![FlowRequest {
                fid: 10,
                priority: 1,
                selector: PortSelector::exact(40000, 80, Some(6)),
            }],
        },
        1,
    );
    fb.set_keygen(hk).unwrap();
    fb.set_keygen(ck).unwrap();
    let fbu = fb.send_update(now).unwrap();
    v.push(("flow BU", fbu.packet.clone()));
    let fba = cn.on_packet(now, &fbu.packet).transmit.remove(0);
    v.push(("flow BA", fba.packet));
    cn.route_out(now, a(HOME), None).unwrap();
    let brr = cn.poll(now + Duration::from_secs(290)).remove(0);
    v.push(("BRR", brr.packet));
    // Home registration with RFC 4285 options, and the HA's BA.
    let mut ha = HomeAgent::new(HaConfig::new(a(HA)));
    ha.add_sa(MnHaSa {
        spi: 0x1001,
        key: b"k".to_vec(),
        home: a(HOME),
    })
    .unwrap();
    let mut reg = HomeRegistration::new(
        HomeRegConfig {
            home: a(HOME),
            care_of: a(COA),
            ha: a(HA),
            spi: 0x1001,
            key: b"k".to_vec(),
            lifetime: Duration::from_secs(600),
        },
        7,
    );
    let wall = ntp_from_unix(Duration::from_secs(1_750_000_000));
    let hbu = reg.send(now, wall, false);
    v.push(("home BU", hbu.packet.clone()));
    let hba = ha.on_packet(now, wall, &hbu.packet).transmit.remove(0);
    v.push(("home BA", hba.packet));
    v
}

fn tshark(args: &[&str]) -> Option<String> {
    let o = Command::new("tshark").args(args).output().ok()?;
    if !o.status.success() {
        panic!("tshark failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn tshark_decodes_our_packets() {
    let pkts = exchange();
    for (name, p) in &pkts {
        if !name.contains("data") {
            verify_mh_packet(p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let dir = std::env::temp_dir().join(format!("ds-mipv6-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mipv6.pcap");
    std::fs::write(
        &file,
        pcap(&pkts.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>()),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    if Command::new("tshark").arg("-v").output().is_err() {
        println!("SKIP: tshark not installed");
        return;
    }
    let verbose = tshark(&["-r", f, "-V"]).unwrap();
    if std::env::var_os("DS_MIPV6_DUMP").is_some() {
        println!("{verbose}");
    }
    assert!(!verbose.contains("Malformed"), "{verbose}");
    assert!(!verbose.contains("[Expert Info (Warning"), "{verbose}");
    assert!(!verbose.contains("[Expert Info (Error"), "{verbose}");
    // Expert infos at any level, as a summary (should be empty).
    let expert = tshark(&["-r", f, "-q", "-z", "expert"]).unwrap();
    assert!(
        !expert.contains("Warn") && !expert.contains("Error"),
        "{expert}"
    );
    // Field values as tshark decodes them, against what we put in.
    let mut args = vec!["-r", f, "-T", "fields", "-E", "separator=|"];
    for x in FIELDS {
        args.push("-e");
        args.push(x);
    }
    let rows = tshark(&args).unwrap();
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), pkts.len());
    for ((name, p), row) in pkts.iter().zip(&rows) {
        let want = expected(p);
        for (field, value) in &want {
            let i = FIELDS.iter().position(|x| x == field).unwrap();
            assert_eq!(row[i], value, "{name}: field {field}");
        }
        println!("{name}: {} fields match", want.len());
    }
    // Independent checks of what tshark does not verify: MH and UDP checksums, the RR
    // authenticators (Kbm rebuilt from the HoT/CoT tokens on the wire) and the RFC 4285
    // authenticators, recomputed by python3 from the pcap bytes alone.
    match Command::new("python3")
        .arg("-c")
        .arg(PY_CHECK)
        .arg(f)
        .output()
    {
        Ok(o) if o.status.success() => {
            let out = String::from_utf8_lossy(&o.stdout);
            println!("python3: {out}");
            assert_eq!(
                out.trim(),
                "checksums ok ok ok ok ok ok ok ok ok ok ok ok ok ok | rr ok ok ok ok | mn-ha ok ok"
            );
        }
        Ok(o) => panic!(
            "python3 check failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("SKIP: python3 unavailable for the independent authenticator check ({e})")
        }
    }
    if std::env::var_os("DS_MIPV6_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

const FIELDS: &[&str] = &[
    "frame.number",
    "mip6.proto",
    "mip6.mhtype",
    "mip6.csum",
    "mip6.hlen",
    "mip6.hoti.cookie",
    "mip6.coti.cookie",
    "mip6.hot.nindex",
    "mip6.hot.cookie",
    "mip6.hot.token",
    "mip6.cot.nindex",
    "mip6.cot.cookie",
    "mip6.bu.seqnr",
    "mip6.bu.a_flag",
    "mip6.bu.h_flag",
    "mip6.bu.lifetime",
    "mip6.ba.status",
    "mip6.ba.seqnr",
    "mip6.ba.lifetime",
    "mip6.be.status",
    "mip6.be.haddr",
    "mip6.ni.hni",
    "mip6.ni.cni",
    "mip6.bad.auth",
    "mip6.auth.mobility_spi",
    "mip6.bi.bid",
    "mip6.bi.status",
    "ipv6.opt.mipv6.home_address",
    "ipv6.routing.mipv6.home_address",
    "ipv6.routing.segleft",
    "ipv6.src",
    "ipv6.dst",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What tshark must show for one of our packets, from our own parse of it.
fn expected(p: &[u8]) -> Vec<(&'static str, String)> {
    use ds_mipv6::wire::{MhMessage, MhRepr, MobilityOption, ParsedIpv6};
    let ip = ParsedIpv6::parse(p).unwrap();
    let mut v = vec![
        ("ipv6.src", ip.src.to_string()),
        ("ipv6.dst", ip.dst.to_string()),
    ];
    if let Some(h) = ip.hao {
        v.push(("ipv6.opt.mipv6.home_address", h.to_string()));
    }
    if let Some(h) = ip.rh2 {
        v.push(("ipv6.routing.mipv6.home_address", h.to_string()));
        v.push(("ipv6.routing.segleft", "1".into()));
    }
    if ip.upper_proto != 135 {
        return v;
    }
    let mh = ip.upper(p);
    let r = MhRepr::parse_verified(mh, ip.effective_src(), ip.effective_dst()).unwrap();
    v.push(("mip6.proto", "59".into()));
    v.push(("mip6.mhtype", r.message.mh_type().to_string()));
    v.push((
        "mip6.csum",
        format!("0x{:04x}", u16::from_be_bytes([mh[4], mh[5]])),
    ));
    v.push(("mip6.hlen", mh[1].to_string()));
    let c = |x: &[u8; 8]| format!("0x{}", hex(x));
    match &r.message {
        MhMessage::HomeTestInit { cookie } => v.push(("mip6.hoti.cookie", c(cookie))),
        MhMessage::CareOfTestInit { cookie } => v.push(("mip6.coti.cookie", c(cookie))),
        MhMessage::HomeTest {
            nonce_index: i,
            cookie: k,
            token,
        }
        | MhMessage::CareOfTest {
            nonce_index: i,
            cookie: k,
            token,
        } => {
            let (nindex, cookie) = match r.message {
                MhMessage::HomeTest { .. } => ("mip6.hot.nindex", "mip6.hot.cookie"),
                _ => ("mip6.cot.nindex", "mip6.cot.cookie"),
            };
            v.push((nindex, i.to_string()));
            v.push((cookie, c(k)));
            // Wireshark 4.0 files the care-of keygen token under mip6.hot.token too.
            v.push(("mip6.hot.token", c(token)));
        }
        MhMessage::BindingUpdate(bu) => {
            v.push(("mip6.bu.seqnr", bu.sequence.to_string()));
            v.push(("mip6.bu.a_flag", u8::from(bu.ack).to_string()));
            v.push(("mip6.bu.h_flag", u8::from(bu.home_registration).to_string()));
            v.push(("mip6.bu.lifetime", bu.lifetime.to_string()));
        }
        MhMessage::BindingAck(ba) => {
            v.push(("mip6.ba.status", ba.status.0.to_string()));
            v.push(("mip6.ba.seqnr", ba.sequence.to_string()));
            v.push(("mip6.ba.lifetime", ba.lifetime.to_string()));
        }
        MhMessage::BindingError { status, home } => {
            v.push(("mip6.be.status", status.0.to_string()));
            v.push(("mip6.be.haddr", home.to_string()));
        }
        _ => {}
    }
    for o in &r.options {
        match o {
            MobilityOption::NonceIndices { home, care_of } => {
                v.push(("mip6.ni.hni", home.to_string()));
                v.push(("mip6.ni.cni", care_of.to_string()));
            }
            MobilityOption::BindingAuthData(a) => v.push(("mip6.bad.auth", hex(a))),
            MobilityOption::MessageAuth { spi, .. } => {
                v.push(("mip6.auth.mobility_spi", spi.to_string()))
            }
            MobilityOption::BindingId { bid, status, .. } => {
                v.push(("mip6.bi.bid", bid.to_string()));
                v.push(("mip6.bi.status", status.to_string()));
            }
            _ => {}
        }
    }
    v
}

/// Independent verification from the pcap bytes (python3 hmac/hashlib/struct only).
const PY_CHECK: &str = r#"
import struct, hmac, hashlib, sys
data = open(sys.argv[1], 'rb').read()
assert struct.unpack('<IHHiIII', data[:24])[6] == 101
pos, pkts = 24, []
while pos < len(data):
    _, _, incl, _ = struct.unpack('<IIII', data[pos:pos+16]); pos += 16
    pkts.append(data[pos:pos+incl]); pos += incl
def walk(p):
    src, dst, nh, off, hao, rh2 = p[8:24], p[24:40], p[6], 40, None, None
    while nh in (0, 43, 60):
        l = (p[off+1] + 1) * 8
        if nh == 60:
            i = off + 2
            while i < off + l:
                if p[i] == 0: i += 1; continue
                if p[i] == 201: hao = p[i+2:i+18]
                i += 2 + p[i+1]
        if nh == 43 and p[off+2] == 2: rh2 = p[off+8:off+24]
        nh, off = p[off], off + l
    return src, dst, hao, rh2, nh, p[off:]
def csum_ok(s, d, nh, up):
    b = s + d + struct.pack('>I', len(up)) + b'\0\0\0' + bytes([nh]) + up
    if len(b) % 2: b += b'\0'
    t = sum(struct.unpack('>%dH' % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return t == 0xffff
def opts(mh):
    fixed = {0: 8, 1: 16, 2: 16, 3: 24, 4: 24, 5: 12, 6: 12, 7: 24}[mh[2]]
    i = fixed
    while i < len(mh):
        if mh[i] == 0: i += 1; continue
        yield mh[i], i, mh[i+1]
        i += 2 + mh[i+1]
res = []
for p in pkts:
    s, d, hao, rh2, nh, up = walk(p)
    res.append('ok' if csum_ok(hao or s, rh2 or d, nh, up) else 'BAD')
print('checksums', ' '.join(res), end=' | ')
ht = walk(pkts[1])[5][16:24]; ct = walk(pkts[3])[5][16:24]
kbm = hashlib.sha1(ht + ct).digest()
coa, cn = pkts[4][8:24], pkts[4][24:40]
def rr_ok(p):
    mh = bytearray(walk(p)[5]); mh[4:6] = b'\0\0'
    for t, i, l in opts(mh):
        if t == 5:
            auth = bytes(mh[i+2:i+2+l]); msg = bytes(mh[:i+2] + mh[i+2+l:])
            return hmac.new(kbm, coa + cn + msg, hashlib.sha1).digest()[:12] == auth
    return False
print('rr', ' '.join('ok' if rr_ok(pkts[i]) else 'BAD' for i in (4, 5, 9, 10)), end=' | ')
home = walk(pkts[12])[2]
def mnha_ok(p):
    mh = bytearray(walk(p)[5]); mh[4:6] = b'\0\0'
    for t, i, l in opts(mh):
        if t == 9:
            auth = bytes(mh[i+7:i+2+l])
            return hmac.new(b'k', coa + home + bytes(mh[:i+7]), hashlib.sha1).digest()[:12] == auth
    return False
print('mn-ha', ' '.join('ok' if mnha_ok(pkts[i]) else 'BAD' for i in (12, 13)))
"#;
