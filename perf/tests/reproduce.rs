//! The seed's Figure 1 testbed (`dsperf reproduce`): every daemon a process, the WAN
//! emulator at the core. Experiment 1 at two grid points: the echo of the DS address takes
//! the client's path to network 1, and in configuration 2 also the SS path to node 2.
//! Behaviour with generous bounds; the figures are `dsperf reproduce`'s.

use ds_perf::reproduce::access::{run, Options};
use ds_perf::reproduce::testbed::Fig1;
use ds_testbed::require_root;

#[test]
fn access_latency_follows_the_paths_of_both_configurations() {
    if !require_root("access_latency_follows_the_paths_of_both_configurations") {
        return;
    }
    let mut bed = Fig1::build().expect("testbed");
    let o = Options {
        ss_ms: vec![0.0, 10.0],
        cs_ms: vec![5.0],
        rounds: 10,
    };
    let r = run(&mut bed, &o, &|_| {}).expect("experiment 1");
    assert_eq!(r.points.len(), 4);
    for p in &r.points {
        assert_eq!(p.answered, p.sent, "{p:?}");
        // Configuration 1: 2 × 5 ms whatever SS; configuration 2: + SS on the way there.
        let want = if p.config == 1 { 10.0 } else { 10.0 + p.ss_ms };
        assert!(
            p.median_ms >= want && p.median_ms < want + 3.0,
            "{p:?}: want {want} ms"
        );
    }
}
