//! `dsperf reproduce`: the seed's evaluation (§3.2) on its Figure 1 testbed ([`testbed`]),
//! with the WAN emulator (`dswan`) at the core.
//!
//! * [`access`]: experiment 1, server access latency (§3.2.1), the X and Y of the seed.
//! * [`decomp`]: experiment 2, handoff time decomposition (§3.2.2, Table 1), transparent and
//!   route-optimised, and the same with path latencies.
//! * [`figure2`]: experiment 3, state transfer optimisation (§3.2.3, Figure 2).
//! * [`findings`]: the seed's qualitative claims checked on the results.
//! * [`report`]: `EVALUATION.md`, the CSVs, the JSON and the plot.
//! * [`size`]: `--quick` and `--full`, and the full run's duration estimated from a run.

pub mod access;
pub mod decomp;
pub mod figure2;
pub mod findings;
pub mod report;
pub mod size;
pub mod testbed;
