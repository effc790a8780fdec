//! `dsperf reproduce`: the seed's evaluation (§3.2) on its Figure 1 testbed ([`testbed`]),
//! with the WAN emulator (`dswan`) at the core.
//!
//! * [`access`]: experiment 1, server access latency (§3.2.1), the X and Y of the seed.
//!
//! Experiments 2 (handoff time decomposition, Table 1) and 3 (state transfer optimisation,
//! Figure 2) are still to come on this testbed; `dsperf handoff` runs the handoff on one link.

pub mod access;
pub mod decomp;
pub mod figure2;
pub mod report;
pub mod testbed;
