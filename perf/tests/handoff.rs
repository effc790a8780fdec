//! Live handoffs in namespaces (client, home agent, two nodes), transparent mode: the seed's
//! experiment with curl, many handoffs back and forth, and failing acceptors. Behaviour only;
//! the timings are `dsperf handoff`'s business.

use ds_apps::node::AcceptorFault;
use ds_perf::handoff::{run, DrainChoice, Options};
use ds_testbed::require_root;
use std::sync::Mutex;

/// The scenarios share the machine's two cores: one at a time, so that a starved node does
/// not turn into a spurious acceptor timeout.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn curl_download_moves_once_without_client_retransmission() {
    if !require_root("curl_download_moves_once_without_client_retransmission") {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The seed's experiment: 1 MB, node 1 serves 500 kB, node 2 the rest.
    let out = run(&Options::default()).expect("run");
    eprintln!("{out:#?}");
    assert!(out.bytes_ok, "SHA-256 of the download");
    assert_eq!(out.bytes, 1_000_000);
    assert_eq!(out.handoffs.len(), 1, "kept: {:?}", out.kept);
    assert!(out.kept.is_empty());
    assert_eq!(out.client_retransmits, 0, "client TcpRetransSegs moved");
    assert_eq!(out.client_timeouts, 0);
    assert_eq!(out.client_resets, 0);
    assert_eq!(out.duplicate_segments, 0, "the client got data twice");
    let h = &out.handoffs[0];
    assert_eq!(h.from, 1);
    let v: serde_json::Value = serde_json::to_value(h).expect("json");
    for k in [
        "mode",
        "path",
        "phases_us",
        "total_us",
        "wall_us",
        "client_gap_us",
        "state_bytes",
        "bytes_ok",
        "client_retransmits",
    ] {
        assert!(!v[k].is_null(), "{k} missing in {v}");
    }
    assert_eq!(v["mode"], "transparent");
    assert_eq!(v["path"], "user->user");
    assert_eq!(v["phases_us"].as_array().map(Vec::len), Some(7));
    assert!(h.report.phases_us[5] > 0.0, "the flow-map update was timed");
    assert!(
        h.report.state_bytes <= 96,
        "drained state {} B",
        h.report.state_bytes
    );
}

#[test]
fn immediate_freeze_carries_the_send_buffer() {
    if !require_root("immediate_freeze_carries_the_send_buffer") {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = run(&Options {
        drain: DrainChoice::Immediate,
        ..Options::default()
    })
    .expect("run");
    assert!(out.bytes_ok);
    assert_eq!(out.handoffs.len(), 1, "kept: {:?}", out.kept);
    assert_eq!(out.client_resets, 0);
    let h = &out.handoffs[0].report;
    eprintln!(
        "immediate: state {} B, offer frame {} B",
        h.state_bytes, h.offer_frame_bytes
    );
    assert!(
        h.state_bytes > 96,
        "unacknowledged data travels: {} B",
        h.state_bytes
    );
}

#[test]
fn thousand_handoffs_back_and_forth_during_64_mib() {
    if !require_root("thousand_handoffs_back_and_forth_during_64_mib") {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = run(&Options {
        count: 1000,
        size: 64 << 20,
        ..Options::default()
    })
    .expect("run");
    eprintln!(
        "1000 handoffs: {:.2} s, kept {}, client retransmits {}, duplicates {}",
        out.seconds,
        out.kept.len(),
        out.client_retransmits,
        out.duplicate_segments
    );
    assert!(out.bytes_ok, "byte-exact");
    assert_eq!(out.bytes, 64 << 20);
    assert_eq!(out.handoffs.len(), 1000, "kept: {:?}", out.kept);
    assert_eq!(out.client_resets, 0);
    let from2 = out.handoffs.iter().filter(|h| h.from == 2).count();
    assert_eq!(from2, 500, "back and forth");
}

#[test]
fn failing_acceptors_leave_the_download_intact() {
    if !require_root("failing_acceptors_leave_the_download_intact") {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for fault in [
        AcceptorFault::Refuse,
        AcceptorFault::Crash,
        AcceptorFault::Hang,
    ] {
        let out = run(&Options {
            fault: Some(fault),
            reply_timeout: std::time::Duration::from_millis(300),
            ..Options::default()
        })
        .expect("run");
        eprintln!("{fault:?}: kept {:?}", out.kept);
        assert!(out.bytes_ok, "{fault:?}: content");
        assert_eq!(out.bytes, 1_000_000, "{fault:?}");
        assert!(out.handoffs.is_empty(), "{fault:?}: nothing moved");
        assert!(!out.kept.is_empty(), "{fault:?}: the failure was seen");
        assert_eq!(out.client_resets, 0, "{fault:?}");
    }
}

#[test]
fn route_optimised_client_sends_to_the_acceptor_care_of_address() {
    if !require_root("route_optimised_client_sends_to_the_acceptor_care_of_address") {
        return;
    }
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The client links our stack (a correspondent node); node 2 sends it a Binding Update.
    let out = run(&Options {
        mode: ds_handoff::Mode::Ro,
        ..Options::default()
    })
    .expect("run");
    eprintln!("{out:#?}");
    assert!(out.bytes_ok, "SHA-256 of the download");
    assert_eq!(out.bytes, 1_000_000);
    assert_eq!(out.handoffs.len(), 1, "kept: {:?}", out.kept);
    assert_eq!(out.client_retransmits, 0, "the client stack retransmitted");
    assert_eq!(out.client_resets, 0);
    let h = &out.handoffs[0].report;
    assert_eq!(h.mode, ds_handoff::Mode::Ro);
    assert!(h.phases_us[3] > 0.0, "return routability timed");
    assert!(h.phases_us[4] > 0.0, "BU construction timed");
    assert!(h.phases_us[5] > 0.0, "BU -> BA timed");
    assert!(h.state_bytes <= 96);
    // The capture on the client's link: after the BU, the client's packets go to node 2's
    // care-of address with a type 2 routing header, node 2 answers with a Home Address
    // option, and the client stops sending to the DS address.
    let r = out.route.expect("route check");
    assert!(r.bound, "binding acknowledged");
    assert!(r.client_to_coa_rh2 > 10, "{r:?}");
    assert!(r.coa_to_client_hao > 100, "{r:?}");
    assert_eq!(r.client_to_ds_after, 0, "{r:?}");
}
