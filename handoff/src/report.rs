//! The seven handoff phases (seed Table 1) and the per-handoff JSON report.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The phases of a handoff, in the seed's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// 1. Freeze and encode the connection on the donor.
    SocketExtraction = 0,
    /// 2. Move the state to the acceptor (network time of the exchange).
    StateTransfer = 1,
    /// 3. Decode, validate and thaw on the acceptor.
    SocketRecreation = 2,
    /// 4. Return routability (RO mode; flow-table update in transparent mode).
    ReturnRoutability = 3,
    /// 5. Binding Update construction (RO mode).
    BuConstruction = 4,
    /// 6. Binding management, BU → BA (RO mode).
    BindingManagement = 5,
    /// 7. Activation: address takeover, announcement, first transmission.
    SocketActivation = 6,
}

impl Phase {
    /// All phases in order.
    pub const ALL: [Phase; 7] = [
        Phase::SocketExtraction,
        Phase::StateTransfer,
        Phase::SocketRecreation,
        Phase::ReturnRoutability,
        Phase::BuConstruction,
        Phase::BindingManagement,
        Phase::SocketActivation,
    ];
}

/// Measured phase durations (monotonic clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes(pub [Duration; 7]);

impl PhaseTimes {
    /// Set one phase.
    pub fn set(&mut self, p: Phase, d: Duration) {
        self.0[p as usize] = d;
    }

    /// One phase.
    pub fn get(&self, p: Phase) -> Duration {
        self.0[p as usize]
    }

    /// Phases in µs (nanosecond resolution), in order.
    pub fn micros(&self) -> [f64; 7] {
        self.0.map(micros)
    }

    /// Sum of the phases.
    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

/// A duration in µs with nanosecond resolution (three decimals).
pub fn micros(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 1000.0 * 1000.0).round() / 1000.0
}

/// How the client's packets are steered to the acceptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The home agent moves the flow (phases 4–6 are the flow-table update).
    Transparent,
    /// Route optimisation: the acceptor binds the client (RFC 6275).
    Ro,
}

/// One handoff, reported as one JSON line (see [`HandoffReport::to_json_line`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffReport {
    /// Steering mode.
    pub mode: Mode,
    /// Donor and acceptor paths, e.g. `"user->user"`, `"kernel->user"`.
    pub path: String,
    /// The seven phases, µs (nanosecond resolution), in order.
    pub phases_us: [f64; 7],
    /// Sum of `phases_us`.
    pub total_us: f64,
    /// Wall time from the start of extraction to the donor learning of the activation, µs
    /// (less than `total_us` when phases overlap, more when there is idle time between them).
    pub wall_us: f64,
    /// Drain time before extraction, µs (not part of the phases).
    pub drain_us: f64,
    /// Client-perceived gap: last packet from the donor to first from the acceptor, µs, when
    /// the caller measured it.
    pub client_gap_us: Option<f64>,
    /// Encoded connection state, bytes.
    pub state_bytes: usize,
    /// Control-channel bytes the donor sent for the offer (framing and tag included).
    pub offer_frame_bytes: usize,
    /// Whether the content was verified byte-exact, when the caller checked.
    pub bytes_ok: Option<bool>,
    /// The client's TCP retransmissions during the handoff, when the caller counted them.
    pub client_retransmits: Option<u64>,
}

impl HandoffReport {
    /// A report from measured phases; caller-measured fields start unknown.
    pub fn new(
        mode: Mode,
        path: &str,
        phases: &PhaseTimes,
        wall: Duration,
        drain: Duration,
        state_bytes: usize,
        offer_frame_bytes: usize,
    ) -> Self {
        let phases_us = phases.micros();
        HandoffReport {
            mode,
            path: path.to_string(),
            phases_us,
            total_us: micros(phases.total()),
            wall_us: micros(wall),
            drain_us: micros(drain),
            client_gap_us: None,
            state_bytes,
            offer_frame_bytes,
            bytes_ok: None,
            client_retransmits: None,
        }
    }

    /// Replace one phase measured by the caller (e.g. binding management, BU→BA, which
    /// completes after the acceptor's activation); `total_us` follows.
    pub fn set_phase(&mut self, p: Phase, d: Duration) {
        self.phases_us[p as usize] = micros(d);
        self.total_us = (self.phases_us.iter().sum::<f64>() * 1000.0).round() / 1000.0;
    }

    /// The report as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // A struct of numbers and strings always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_the_fields_in_order() {
        let mut p = PhaseTimes::default();
        for (i, ph) in Phase::ALL.iter().enumerate() {
            p.set(*ph, Duration::from_micros(10 * (i as u64 + 1)));
        }
        let mut r = HandoffReport::new(
            Mode::Transparent,
            "user->user",
            &p,
            Duration::from_micros(250),
            Duration::ZERO,
            90,
            130,
        );
        r.bytes_ok = Some(true);
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["mode"], "transparent");
        assert_eq!(v["path"], "user->user");
        assert_eq!(
            v["phases_us"],
            serde_json::json!([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0])
        );
        assert_eq!(v["total_us"], 280.0);
        assert_eq!(v["wall_us"], 250.0);
        assert_eq!(micros(Duration::from_nanos(1_234_567)), 1234.567);
        r.set_phase(Phase::BindingManagement, Duration::from_micros(1060));
        assert_eq!(r.phases_us[5], 1060.0);
        assert_eq!(r.total_us, 1280.0);
        assert_eq!(v["state_bytes"], 90);
        assert_eq!(v["bytes_ok"], true);
        assert!(v["client_gap_us"].is_null());
        assert!(v["client_retransmits"].is_null());
        assert_eq!(p.get(Phase::SocketActivation), Duration::from_micros(70));
    }
}
