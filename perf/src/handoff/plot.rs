//! `dsperf handoff-plot`: the seven phases of handoff runs as stacked bars (medians), one bar
//! per run, with the median wall time and client-perceived gap beside them. Input: the JSON
//! lines `dsperf handoff` prints (one file per run, or several runs per file: each file is one
//! bar, labelled by the caller).

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "sans-serif";

/// Seed Table 1's phases, in order.
pub const PHASES: [&str; 7] = [
    "1 socket extraction",
    "2 state transfer",
    "3 socket re-creation",
    "4 return routability",
    "5 BU construction",
    "6 binding management",
    "7 socket activation",
];

const COLOURS: [RGBColor; 7] = [
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xe0, 0x8a, 0x1e),
    RGBColor(0x3a, 0x9a, 0x4a),
    RGBColor(0xc0, 0x39, 0x2b),
    RGBColor(0x8e, 0x5e, 0xa2),
    RGBColor(0x7f, 0x8c, 0x8d),
    RGBColor(0x16, 0xa0, 0x85),
];

/// Medians of one run (a set of handoff lines).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Label shown on the axis.
    pub label: String,
    /// Handoffs in the run.
    pub n: usize,
    /// Median of each phase, µs.
    pub phases_us: [f64; 7],
    /// Median wall time, µs.
    pub wall_us: f64,
    /// Median client-perceived gap, µs (if measured).
    pub gap_us: Option<f64>,
    /// Median state size, bytes.
    pub state_bytes: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Medians of the JSON lines in `text` (blank lines skipped; a line that is not a handoff
/// report is an error naming it).
pub fn bar_from_lines(label: &str, text: &str) -> Result<Bar> {
    let mut phases: [Vec<f64>; 7] = Default::default();
    let (mut wall, mut gap, mut state) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let p = v["phases_us"]
            .as_array()
            .filter(|a| a.len() == 7)
            .ok_or_else(|| anyhow!("line {}: no phases_us of 7 numbers", i + 1))?;
        for (k, x) in p.iter().enumerate() {
            phases[k].push(x.as_f64().unwrap_or(0.0));
        }
        wall.extend(v["wall_us"].as_f64());
        gap.extend(v["client_gap_us"].as_f64());
        state.extend(v["state_bytes"].as_f64());
    }
    let n = wall.len();
    if n == 0 {
        bail!("{label}: no handoff lines");
    }
    Ok(Bar {
        label: label.to_string(),
        n,
        phases_us: phases.map(|p| median(p).unwrap_or(0.0)),
        wall_us: median(wall).unwrap_or(0.0),
        gap_us: median(gap),
        state_bytes: median(state).unwrap_or(0.0),
    })
}

/// Write the chart to `out` (SVG).
pub fn write_svg(bars: &[Bar], title: &str, out: &Path) -> Result<()> {
    if bars.is_empty() {
        bail!("nothing to plot");
    }
    // The first input on top.
    let bars: Vec<Bar> = bars.iter().rev().cloned().collect();
    let bars = &bars[..];
    let rows = bars.len();
    let height = 140 + 70 * rows as u32;
    let root = SVGBackend::new(out, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("fill: {e}"))?;
    let root = root
        .titled(title, (FONT, 18))
        .map_err(|e| anyhow!("title: {e}"))?;
    let xmax = bars
        .iter()
        .map(|b| {
            let sum: f64 = b.phases_us.iter().sum();
            sum.max(b.wall_us).max(b.gap_us.unwrap_or(0.0))
        })
        .fold(1.0f64, f64::max)
        * 1.15;
    let labels: Vec<String> = bars
        .iter()
        .map(|b| format!("{} (n={}, {:.0} B)", b.label, b.n, b.state_bytes))
        .collect();
    let ylabel = move |y: &f64| -> String {
        let i = y.round();
        if (y - i).abs() < 1e-6 && i >= 0.0 {
            labels.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(330)
        .build_cartesian_2d(0f64..xmax, -0.6f64..(rows as f64 - 0.4))
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.15))
        .y_labels(rows)
        .y_label_formatter(&ylabel)
        .x_desc("microseconds (medians)")
        .label_style((FONT, 13))
        .draw()
        .map_err(|e| anyhow!("mesh: {e}"))?;
    for (k, name) in PHASES.iter().enumerate() {
        let colour = COLOURS[k];
        let rects: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start: f64 = b.phases_us[..k].iter().sum();
                let y = i as f64;
                Rectangle::new(
                    [(start, y - 0.05), (start + b.phases_us[k], y + 0.3)],
                    colour.filled(),
                )
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| anyhow!("phases: {e}"))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
    }
    // Wall time and client gap as thin bars under the phases.
    let wall: Vec<Rectangle<(f64, f64)>> = bars
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let y = i as f64;
            Rectangle::new([(0.0, y - 0.2), (b.wall_us, y - 0.1)], BLACK.filled())
        })
        .collect();
    chart
        .draw_series(wall)
        .map_err(|e| anyhow!("wall: {e}"))?
        .label("wall time (donor's view)")
        .legend(|(x, y)| Rectangle::new([(x, y - 3), (x + 12, y + 3)], BLACK.filled()));
    let grey = RGBColor(0xa0, 0xa0, 0xa0);
    let gaps: Vec<Rectangle<(f64, f64)>> = bars
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let y = i as f64;
            b.gap_us
                .map(|g| Rectangle::new([(0.0, y - 0.35), (g, y - 0.25)], grey.filled()))
        })
        .collect();
    chart
        .draw_series(gaps)
        .map_err(|e| anyhow!("gap: {e}"))?
        .label("client-perceived gap")
        .legend(move |(x, y)| Rectangle::new([(x, y - 3), (x + 12, y + 3)], grey.filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("legend: {e}"))?;
    root.present()
        .map_err(|e| anyhow!("write {}: {e}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_svg() {
        let text = r#"{"phases_us":[1,2,3,0,5,6,0.1],"wall_us":10,"client_gap_us":20,"state_bytes":86}

{"phases_us":[3,4,5,0,5,8,0.1],"wall_us":14,"client_gap_us":null,"state_bytes":90}
{"phases_us":[2,9,4,0,5,7,0.1],"wall_us":12,"client_gap_us":30,"state_bytes":88}"#;
        let b = bar_from_lines("t", text).unwrap();
        assert_eq!(b.n, 3);
        assert_eq!(b.phases_us, [2.0, 4.0, 4.0, 0.0, 5.0, 7.0, 0.1]);
        assert_eq!(b.wall_us, 12.0);
        assert_eq!(b.gap_us, Some(25.0));
        assert!(bar_from_lines("x", "{\"a\":1}").is_err());
        assert!(bar_from_lines("x", "").is_err());
        let out = std::env::temp_dir().join(format!("ds-handoff-plot-{}.svg", std::process::id()));
        write_svg(&[b.clone(), b], "test", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert!(svg.contains("<svg") && svg.contains("state transfer"));
    }
}
