//! The seed's qualitative findings, checked on our results by code (not by eye): each claim
//! with whether it holds here and the figures that say so.
//!
//! 1. §3.2.2: phase 2 (state transfer) is proportional to the state's size over the
//!    inter-node bandwidth.
//! 2. §3.2.3: over the donor's wait, the client-perceived handoff time has its minimum at the
//!    drained point (the socket extracted right after the last acknowledgement).
//! 3. §3.2.3: the drained client-perceived time is about one donor→acceptor latency.

use super::{decomp, figure2};
use serde::{Deserialize, Serialize};

/// One claim of the seed and how our run stands to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The seed's claim.
    pub claim: String,
    /// Holds on our results (`None`: the run had no data for it).
    pub holds: Option<bool>,
    /// The figures behind the verdict.
    pub evidence: String,
}

/// Least-squares slope through the origin and the coefficient of determination of `y = k·x`.
fn fit_through_origin(pts: &[(f64, f64)]) -> Option<(f64, f64)> {
    let sxx: f64 = pts.iter().map(|p| p.0 * p.0).sum();
    if pts.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let k = pts.iter().map(|p| p.0 * p.1).sum::<f64>() / sxx;
    let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64;
    let ss_tot: f64 = pts.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let ss_res: f64 = pts.iter().map(|p| (p.1 - k * p.0).powi(2)).sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        0.0
    };
    Some((k, r2))
}

/// Claim 1 on experiment 2's shaped points (every path, mode and drain): phase 2 against the
/// time the state takes at the bandwidth (state bytes × 8 / rate). Holds when one line
/// through the origin explains the medians (R² ≥ 0.9).
pub fn phase2_proportional(d: &decomp::Report) -> Finding {
    let pts: Vec<(f64, f64)> = d
        .points
        .iter()
        .filter_map(|p| {
            let mbit = p.mbit?;
            let state = p.state_bytes.as_ref()?.median;
            let phase2 = p.phases_us.get(1)?.as_ref()?.median / 1000.0;
            Some((state * 8.0 / (mbit * 1e6) * 1000.0, phase2))
        })
        .collect();
    let claim = "Phase 2 (state transfer) is proportional to state size / bandwidth (§3.2.2)";
    match fit_through_origin(&pts) {
        Some((k, r2)) => Finding {
            claim: claim.into(),
            holds: Some(r2 >= 0.9),
            evidence: format!(
                "{} shaped points; phase 2 = {k:.3} × (state × 8 / bandwidth), R² = {r2:.3}",
                pts.len()
            ),
        },
        None => Finding {
            claim: claim.into(),
            holds: None,
            evidence: "no shaped points with a state in this run".into(),
        },
    }
}

/// Claim 2 on experiment 3: per bandwidth, the drained (`acked`) client-perceived time is at
/// most that of every fixed donor wait.
pub fn minimum_at_drained(f: &figure2::Report) -> Finding {
    let claim = "Over the donor's wait, the client-perceived time is smallest at the drained \
                 point (§3.2.3)";
    let mut holds = None;
    let mut parts = Vec::new();
    for c in &f.curves {
        let Some(acked) = c.acked.client_ms.as_ref().map(|s| s.median) else {
            continue;
        };
        let best = c
            .points
            .iter()
            .filter_map(|p| Some((p.wait_ms?, p.client_ms.as_ref()?.median)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((wait, best)) = best else { continue };
        let ok = acked <= best;
        holds = Some(holds.unwrap_or(true) && ok);
        parts.push(format!(
            "{} Mbit/s: drained {acked:.1} ms, best fixed wait {best:.1} ms (at {wait} ms)",
            c.mbit
        ));
    }
    Finding {
        claim: claim.into(),
        holds,
        evidence: if parts.is_empty() {
            "no curves in this run".into()
        } else {
            parts.join("; ")
        },
    }
}

/// Claim 3 on the latency sweep: per steering mode, how much the drained client-perceived
/// time grows per ms of donor→acceptor latency (Lat_SS, client paths unchanged), against the
/// unloaded point. Holds when it grows by 0.5–1.5 × Lat_SS.
pub fn drained_one_latency(v: &[decomp::SweepPoint]) -> Finding {
    let claim = "The drained client-perceived time is about one donor→acceptor latency \
                 (§3.2.3)";
    let mut holds = None;
    let mut parts = Vec::new();
    for base in v.iter().filter(|p| p.cs_ms == 0.0 && p.ss_ms == 0.0) {
        let Some(g0) = base.client_gap_us.as_ref().map(|s| s.median / 1000.0) else {
            continue;
        };
        for p in v
            .iter()
            .filter(|p| p.mode == base.mode && p.cs_ms == 0.0 && p.ss_ms > 0.0)
        {
            let Some(g) = p.client_gap_us.as_ref().map(|s| s.median / 1000.0) else {
                continue;
            };
            let per = (g - g0) / p.ss_ms;
            let ok = (0.5..=1.5).contains(&per);
            holds = Some(holds.unwrap_or(true) && ok);
            parts.push(format!(
                "{}: Lat_SS {} ms adds {:.1} ms ({per:.2} × Lat_SS; {g0:.2} ms without)",
                decomp::mode_name(p.mode),
                p.ss_ms,
                g - g0
            ));
        }
    }
    Finding {
        claim: claim.into(),
        holds,
        evidence: if parts.is_empty() {
            "no latency sweep with Lat_SS > 0 in this run".into()
        } else {
            parts.join("; ")
        },
    }
}

/// Every claim the run has data for, in the order above.
pub fn all(
    d: Option<&decomp::Report>,
    f: Option<&figure2::Report>,
    sweep: Option<&[decomp::SweepPoint]>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    out.extend(d.map(phase2_proportional));
    out.extend(f.map(minimum_at_drained));
    out.extend(sweep.map(drained_one_latency));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_through_the_origin_fits_proportional_points_only() {
        let (k, r2) = fit_through_origin(&[(1.0, 2.0), (2.0, 4.1), (4.0, 7.9)]).unwrap();
        assert!((k - 2.0).abs() < 0.05 && r2 > 0.99, "{k} {r2}");
        // Flat: no proportionality.
        let (_, r2) = fit_through_origin(&[(1.0, 5.0), (2.0, 5.0), (4.0, 5.0)]).unwrap();
        assert!(r2 < 0.9, "{r2}");
        assert_eq!(fit_through_origin(&[(0.0, 1.0), (0.0, 2.0)]), None);
        assert_eq!(fit_through_origin(&[(1.0, 1.0)]), None);
    }
}
