//! `dsperf bulk`'s bed as a test: one short transfer each way to `dserver::Node` on AF_XDP and
//! to the kernel's TCP, with the kernel's offloads at their defaults and off. Every transfer
//! must arrive whole (the client checks the byte count, the server reports what it read), ours
//! must send TCP super-frames when it sends, and the run must leave no namespace behind. The
//! speeds are the benchmark's, not asserted here. Needs root; prints SKIP otherwise.

use ds_perf::bulk::{self, Direction, Options, Target};
use ds_testbed::require_root;

#[test]
fn bulk_transfers_both_ways_arrive_whole_on_ours_and_the_kernel() {
    if !require_root("bulk_transfers_both_ways_arrive_whole_on_ours_and_the_kernel") {
        return;
    }
    let opts = Options {
        bytes: 16 << 20,
        repeats: 1,
        server_cpu: 1,
        client_cpu: 0,
    };
    let samples = bulk::run(&opts, |_| {}).expect("dsperf bulk");
    assert_eq!(samples.len(), 8, "2 settings x 2 directions x 2 servers");
    for s in &samples {
        assert!(s.gbps > 0.0, "{s:?}");
        if s.target == Target::Ours && s.direction == Direction::Download {
            assert!(s.super_frames > 0, "ours sends super-frames: {s:?}");
        }
    }
    let sum = bulk::summarize(&opts, &samples);
    assert!(sum.rows.iter().all(|r| r.ratio.is_some()), "{sum:?}");
    eprint!("{}", bulk::table(&sum));
    let left = std::fs::read_dir(ds_testbed::NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("dsperf_bulk"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(left, 0, "namespaces removed");
}
