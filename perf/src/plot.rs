//! SVG bar charts of a `dsperf stack` summary (plotters' SVG backend: text is emitted as SVG
//! `<text>` elements, so no font files are needed).

use crate::stack::report::{Stat, Summary};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

const FONT: &str = "sans-serif";
/// Bar colours of the first and second series of each panel.
const COLOURS: [RGBColor; 2] = [RGBColor(0x2b, 0x6c, 0xb0), RGBColor(0xe0, 0x8a, 0x1e)];

/// One panel: per server, two bars (median) with min-max whiskers.
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    series: [&'a str; 2],
    /// Per server: name and the two stats.
    groups: Vec<(String, [Option<Stat>; 2])>,
    decimals: usize,
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel<'_>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let n = p.groups.len().max(1);
    let ymax = p
        .groups
        .iter()
        .flat_map(|(_, s)| s.iter().flatten().map(|s| s.max.max(s.median)))
        .fold(0.0f64, f64::max);
    let ymax = if ymax > 0.0 { ymax * 1.2 } else { 1.0 };
    let names: Vec<String> = p.groups.iter().map(|(n, _)| n.clone()).collect();
    let label = move |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..ymax)
        .map_err(|e| anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.15))
        .x_labels(n)
        .x_label_formatter(&label)
        .y_desc(p.unit)
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| anyhow!("mesh: {e}"))?;
    let value_style =
        TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (k, series) in p.series.iter().enumerate() {
        let colour = COLOURS[k];
        let (lo, hi) = if k == 0 { (-0.38, -0.02) } else { (0.02, 0.38) };
        let bars: Vec<(f64, Stat)> = p
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, (_, s))| s[k].map(|s| (i as f64, s)))
            .collect();
        chart
            .draw_series(
                bars.iter().map(|(x, s)| {
                    Rectangle::new([(x + lo, 0.0), (x + hi, s.median)], colour.filled())
                }),
            )
            .map_err(|e| anyhow!("bars: {e}"))?
            .label(*series)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour.filled()));
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                let xc = x + (lo + hi) / 2.0;
                PathElement::new(vec![(xc, s.min), (xc, s.max)], BLACK.stroke_width(1))
            }))
            .map_err(|e| anyhow!("whiskers: {e}"))?;
        let d = p.decimals;
        chart
            .draw_series(bars.iter().map(|(x, s)| {
                let xc = x + (lo + hi) / 2.0;
                Text::new(
                    format!("{:.d$}", s.median),
                    (xc, s.max.max(s.median)),
                    value_style.clone(),
                )
            }))
            .map_err(|e| anyhow!("values: {e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("legend: {e}"))?;
    Ok(())
}

/// Write `DIR/file`: a title, two panels side by side and a footnote. Returns the path.
fn two_panel_svg(
    dir: &Path,
    file: &str,
    title: &str,
    panels: [Panel<'_>; 2],
    foot_note: &str,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(file);
    {
        let root = SVGBackend::new(&path, (1200, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("fill: {e}"))?;
        let root = root
            .titled(title, (FONT, 18))
            .map_err(|e| anyhow!("title: {e}"))?;
        let (body, foot) = root.split_vertically(500);
        let (left, right) = body.split_horizontally(600);
        let [l, r] = panels;
        draw_panel(&left, &l)?;
        draw_panel(&right, &r)?;
        foot.draw(&Text::new(foot_note, (12, 20), (FONT, 13)))
            .map_err(|e| anyhow!("footnote: {e}"))?;
        root.present()
            .map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Write `DIR/dsperf-stack.svg`: throughput (upload, download) and latency (p50, p99) medians
/// per server, with min-max whiskers over the repeats. Returns the file's path.
pub fn write_stack_svg(sum: &Summary, dir: &Path) -> Result<PathBuf> {
    let o = &sum.options;
    let title = format!(
        "dsperf stack: a kernel TCP client against TCP servers behind TAP ({} MiB bulk, {} x {} B RR, median of {} repeats)",
        o.bytes >> 20,
        o.rounds,
        o.msg_size,
        o.repeat
    );
    let name = |s: crate::stack::Server| match s {
        crate::stack::Server::Kernel => "kernel (TAP+relay)".to_string(),
        crate::stack::Server::KernelVeth => "kernel (veth, ref.)".to_string(),
        x => x.name().to_string(),
    };
    let bulk = Panel {
        title: "bulk throughput (higher is better)",
        unit: "Gbit/s",
        series: ["upload (client -> server)", "download (server -> client)"],
        groups: sum
            .servers
            .iter()
            .map(|s| (name(s.server), [s.upload_gbit_per_s, s.download_gbit_per_s]))
            .collect(),
        decimals: 2,
    };
    let rr = Panel {
        title: "request/response round trip (lower is better)",
        unit: "microseconds",
        series: ["p50", "p99"],
        groups: sum
            .servers
            .iter()
            .map(|s| (name(s.server), [s.rr_p50_us, s.rr_p99_us]))
            .collect(),
        decimals: 1,
    };
    two_panel_svg(
        dir,
        "dsperf-stack.svg",
        &title,
        [bulk, rr],
        "kernel (TAP+relay), the baseline: frames cross a second TAP and a userspace relay thread; ours, smoltcp: one TAP; kernel (veth, ref.): no TAP. Whiskers: min-max over repeats.",
    )
}

/// Write `DIR/dsperf-http.svg`: requests per second and p99 latency (medians, min–max
/// whiskers) per workload, ours beside nginx. Returns the file's path.
pub fn write_http_svg(sum: &crate::http::Summary, dir: &Path) -> Result<PathBuf> {
    use crate::http::{CaseSummary, Target, TargetSummary};
    let o = &sum.options;
    let title = format!(
        "dsperf http: wrk -t1 keep-alive against dsnode (AF_XDP) and nginx (kernel TCP), {} s each, median of {} repeats",
        o.duration.as_secs(),
        o.repeats
    );
    let series = ["ours (dsnode, AF_XDP)", "nginx (kernel TCP)"];
    // Per workload, one figure of each server.
    let groups = |f: &dyn Fn(&TargetSummary) -> Option<Stat>| -> Vec<(String, [Option<Stat>; 2])> {
        let of = |c: &CaseSummary, t: Target| c.targets.iter().find(|s| s.target == t).and_then(f);
        sum.cases
            .iter()
            .map(|c| (c.case.label(), [of(c, Target::Ours), of(c, Target::Nginx)]))
            .collect()
    };
    let rps = Panel {
        title: "requests per second (higher is better)",
        unit: "req/s",
        series,
        groups: groups(&|s| s.rps),
        decimals: 0,
    };
    let p99 = Panel {
        title: "p99 latency (lower is better)",
        unit: "microseconds",
        series,
        groups: groups(&|s| s.latency_us.get(3).copied().flatten()),
        decimals: 0,
    };
    let foot = if o.whole_bed {
        format!(
            "Each server alone behind its own veth pair, sharing core {} with wrk (the whole bed on one core){}. Kernel offloads at their defaults (client tx checksum off towards AF_XDP). Whiskers: min-max over repeats.",
            o.server_cpu,
            crate::http::settings_note(o)
        )
    } else {
        format!(
            "Each server alone behind its own veth pair, pinned to core {}; wrk on core {}{}. Kernel offloads at their defaults (client tx checksum off towards AF_XDP). Whiskers: min-max over repeats.",
            o.server_cpu,
            o.client_cpu,
            crate::http::settings_note(o)
        )
    };
    two_panel_svg(dir, "dsperf-http.svg", &title, [rps, p99], &foot)
}

/// Write `DIR/dsperf-http-queues.svg` (`dsperf http --queues N`): per workload, requests per
/// second of ours on one queue beside ours on N, and the CPUs that the server's process and
/// the rest of the machine (the client) took in each. Returns the file's path.
pub fn write_http_queues_svg(sum: &crate::http::Summary, dir: &Path) -> Result<PathBuf> {
    use crate::http::{CaseSummary, Target, TargetSummary};
    let o = &sum.options;
    let n = o.queues;
    let title = if o.whole_bed {
        format!(
            "dsperf http --whole-bed: ours and wrk on one core, against ours on {n} queues and wrk -t{n} on {n} cores, {} s each, median of {} repeats",
            o.duration.as_secs(),
            o.repeats
        )
    } else {
        format!(
            "dsperf http --queues {n}: ours on one core against ours on {n} queues, wrk -t1 beside them, {} s each, median of {} repeats",
            o.duration.as_secs(),
            o.repeats
        )
    };
    let of = |c: &CaseSummary, t: Target| c.targets.iter().find(|s| s.target == t).cloned();
    let both = |f: &dyn Fn(&TargetSummary) -> Option<Stat>| -> Vec<(String, [Option<Stat>; 2])> {
        sum.cases
            .iter()
            .map(|c| {
                let get = |t| of(c, t).as_ref().and_then(f);
                (c.case.label(), [get(Target::Ours), get(Target::OursQueues)])
            })
            .collect()
    };
    let one = "ours, one queue".to_string();
    let many = format!("ours, {n} queues");
    let rps = Panel {
        title: "requests per second (higher is better)",
        unit: "req/s",
        series: [&one, &many],
        groups: both(&|s| s.rps),
        decimals: 0,
    };
    let cpus = Panel {
        title: "CPUs taken: the server's process and the rest",
        unit: "CPUs",
        series: ["server (dsnode)", "the rest (wrk, kernel TCP, softirq)"],
        groups: sum
            .cases
            .iter()
            .flat_map(|c| {
                [
                    (Target::Ours, "1 queue".to_string()),
                    (Target::OursQueues, format!("{n} queues")),
                ]
                .map(|(t, what)| {
                    let s = of(c, t);
                    (
                        format!("{}, {what}", c.case.label()),
                        [
                            s.as_ref().and_then(|s| s.server_cpus),
                            s.and_then(|s| s.other_cpus),
                        ],
                    )
                })
            })
            .collect(),
        decimals: 2,
    };
    let foot = if o.whole_bed {
        format!(
            "One queue: dsnode and wrk -t1 share core {}. {n} queues: queue i's thread pinned to the i-th allowed core, wrk -t{n} on the same cores. Whiskers: min-max over repeats.",
            o.server_cpu
        )
    } else {
        format!(
            "One queue: dsnode on core {}, wrk on core {}. {n} queues: threads unpinned on both cores. Whiskers: min-max over repeats.",
            o.server_cpu, o.client_cpu
        )
    };
    two_panel_svg(dir, "dsperf-http-queues.svg", &title, [rps, cpus], &foot)
}

/// Write `DIR/dsperf-bulk.svg`: single-flow Gbit/s (medians, min–max whiskers) per offload
/// setting, ours beside the kernel, download and upload. Returns the file's path.
pub fn write_bulk_svg(sum: &crate::bulk::Summary, dir: &Path) -> Result<PathBuf> {
    use crate::bulk::{Direction, Offloads};
    let o = &sum.options;
    let title = format!(
        "dsperf bulk: one TCP flow, {} MiB, ours (dserver::Node on AF_XDP) and the kernel's TCP, each behind its own veth, median of {} repeats",
        o.bytes >> 20,
        o.repeats
    );
    let series = ["ours (Node, AF_XDP)", "kernel TCP"];
    let groups = |d: Direction| -> Vec<(String, [Option<Stat>; 2])> {
        sum.rows
            .iter()
            .filter(|r| r.direction == d)
            .map(|r| {
                let name = match r.offloads {
                    Offloads::Defaults => "offloads at defaults",
                    Offloads::Off => "offloads off",
                };
                (name.to_string(), [r.ours, r.kernel])
            })
            .collect()
    };
    let down = Panel {
        title: "download, server -> client (Gbit/s)",
        unit: "Gbit/s",
        series,
        groups: groups(Direction::Download),
        decimals: 2,
    };
    let up = Panel {
        title: "upload, client -> server (Gbit/s)",
        unit: "Gbit/s",
        series,
        groups: groups(Direction::Upload),
        decimals: 2,
    };
    let foot = format!(
        "Servers pinned to core {}, the client (kernel TCP, std::net) to core {}. Defaults: as the kernel sets them (TSO, GSO, checksum on; GRO off on a veth; the client's tx checksum towards AF_XDP off). Off: every ethtool offload. Whiskers: min-max over repeats.",
        o.server_cpu, o.client_cpu
    );
    two_panel_svg(dir, "dsperf-bulk.svg", &title, [down, up], &foot)
}

/// `dsperf conns`' points in order of connections, each with its place on the charts' x axis
/// (log10 of the connections).
fn by_connections(points: &[crate::conns::Point]) -> Vec<(f64, &crate::conns::Point)> {
    let mut v: Vec<(f64, &crate::conns::Point)> = points
        .iter()
        .map(|p| ((p.connections.max(1) as f64).log10(), p))
        .collect();
    v.sort_by_key(|(_, p)| p.connections);
    v
}

/// Write `DIR/dsperf-conns.svg`: the server's time per packet against open connections
/// (median, fastest and slowest measurement; the connections on a log scale), with the
/// fewest connections' median drawn across as what "flat" would be. Returns the file's path.
pub fn write_conns_svg(
    o: &crate::conns::Options,
    points: &[crate::conns::Point],
    dir: &Path,
) -> Result<PathBuf> {
    let points = by_connections(points);
    let line = |label: &str, f: &dyn Fn(&crate::conns::Point) -> f64| Line {
        label: label.to_string(),
        points: points.iter().map(|&(x, p)| (x, f(p))).collect(),
    };
    let mut lines = vec![
        line("median", &|p| p.ns_per_packet.median),
        line("fastest measurement", &|p| p.ns_per_packet.min),
        line("slowest measurement", &|p| p.ns_per_packet.max),
    ];
    if let (Some(&(lo, first)), Some(&(hi, _))) = (points.first(), points.last()) {
        lines.push(Line {
            label: format!("flat: {} connection(s)' median", first.connections),
            points: vec![
                (lo, first.ns_per_packet.median),
                (hi, first.ns_per_packet.median),
            ],
        });
    }
    let mode = if o.batch > 1 {
        format!("{} exchanges per server pass", o.batch)
    } else {
        "one exchange at a time".to_string()
    };
    let title = format!(
        "dsperf conns: server ns per packet, {} B request/response, {mode}, {} x {} exchanges",
        crate::conns::MSG,
        o.repeats,
        o.exchanges
    );
    write_lines_svg(
        &dir.join("dsperf-conns.svg"),
        &title,
        (
            "open connections, log10 (0: 1, 3: 1,000, 5: 100,000)",
            "ns per packet",
        ),
        &lines,
        &[],
        // The cost grows to the right: the lower right is free.
        SeriesLabelPosition::LowerRight,
    )
}

/// Write `dsperf-conns-kernel.svg` into `dir` (when the kernel was measured): the time per
/// exchange of both ends, the kernel's TCP and our stacks, each as a multiple of its own at the
/// first count, so that their growth compares (their absolute costs differ ~10x). Returns the
/// path, or `None` when no count has a kernel figure.
pub fn write_conns_kernel_svg(
    o: &crate::conns::Options,
    points: &[crate::conns::Point],
    dir: &Path,
) -> Result<Option<PathBuf>> {
    let points = by_connections(points);
    let kernel: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|&(x, p)| p.kernel.as_ref().map(|k| (x, k.ratio_to_first)))
        .collect();
    if kernel.is_empty() {
        return Ok(None);
    }
    let ours: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, p)| (x, p.both_ratio_to_first))
        .collect();
    let span = |v: &[(f64, f64)]| (v.first().map(|p| p.0), v.last().map(|p| p.0));
    let (Some(lo), Some(hi)) = span(&ours) else {
        return Ok(None);
    };
    let lines = vec![
        Line {
            label: "ours, both stacks".to_string(),
            points: ours,
        },
        Line {
            label: "the kernel's TCP, both ends (loopback)".to_string(),
            points: kernel,
        },
        Line {
            label: "flat".to_string(),
            points: vec![(lo, 1.0), (hi, 1.0)],
        },
    ];
    let title = format!(
        "dsperf conns --kernel: time per exchange x the first count's, {} B request/response, up to {} per pass",
        crate::conns::MSG,
        o.batch
    );
    write_lines_svg(
        &dir.join("dsperf-conns-kernel.svg"),
        &title,
        (
            "open connections, log10 (0: 1, 3: 1,000, 5: 100,000)",
            "time per exchange / at the first count",
        ),
        &lines,
        &[],
        SeriesLabelPosition::UpperLeft,
    )
    .map(Some)
}

/// `dsperf-conns-cores.svg` in `dir` when the scaling across cores was measured: exchanges per
/// second as a multiple of one thread's with all the connections, for the threads together
/// and for one thread with its share, against the count of connections.
pub fn write_conns_cores_svg(
    o: &crate::conns::Options,
    points: &[crate::conns::Point],
    dir: &Path,
) -> Result<Option<PathBuf>> {
    let Some(cores) = o.cores else {
        return Ok(None);
    };
    let measured: Vec<(f64, &crate::conns::cores::CoresPoint)> = by_connections(points)
        .into_iter()
        .filter_map(|(x, p)| p.cores.as_ref().map(|c| (x, c)))
        .collect();
    let (Some(lo), Some(hi)) = (measured.first(), measured.last()) else {
        return Ok(None);
    };
    let (lo, hi) = (lo.0, hi.0);
    let of_one =
        |v: f64, c: &crate::conns::cores::CoresPoint| crate::conns::ratio(v, c.one_per_s.median);
    let lines = vec![
        Line {
            label: format!("{cores} threads, each its share of the connections"),
            points: measured
                .iter()
                .map(|(x, c)| (*x, of_one(c.all_per_s.median, c)))
                .collect(),
        },
        Line {
            label: format!("{cores} x one thread alone with its share"),
            points: measured
                .iter()
                .map(|(x, c)| (*x, of_one(cores as f64 * c.share_per_s.median, c)))
                .collect(),
        },
        Line {
            label: "one thread, all the connections".to_string(),
            points: vec![(lo, 1.0), (hi, 1.0)],
        },
    ];
    let title = format!(
        "dsperf conns --cores {cores}: exchanges per second x one thread's, {} B request/response, up to {} per pass",
        crate::conns::MSG,
        o.batch
    );
    write_lines_svg(
        &dir.join("dsperf-conns-cores.svg"),
        &title,
        (
            "open connections, log10 (2.4: 256, 4: 10,000, 5: 100,000)",
            "exchanges per second / one thread's with all the connections",
        ),
        &lines,
        &[],
        SeriesLabelPosition::LowerRight,
    )
    .map(Some)
}

/// One line of a [`write_lines_svg`] chart.
pub struct Line {
    /// Legend text.
    pub label: String,
    /// (x, y) points in order.
    pub points: Vec<(f64, f64)>,
}

/// Write `path`: lines with dots, one colour each, and optional lone markers (crosses, in the
/// colour of the line of the same index), the legend at `legend` (where the data is not).
/// Returns the path.
pub fn write_lines_svg(
    path: &Path,
    title: &str,
    (xlabel, ylabel): (&str, &str),
    lines: &[Line],
    markers: &[(usize, String, (f64, f64))],
    legend: SeriesLabelPosition,
) -> Result<PathBuf> {
    const PALETTE: [RGBColor; 4] = [
        RGBColor(0x2b, 0x6c, 0xb0),
        RGBColor(0xe0, 0x8a, 0x1e),
        RGBColor(0x2e, 0x8b, 0x57),
        RGBColor(0xb0, 0x2b, 0x4a),
    ];
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let all = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .chain(markers.iter().map(|m| m.2));
    let (mut xmax, mut ymax) = (1.0f64, 1.0f64);
    for (x, y) in all {
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    {
        let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("fill: {e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax * 1.15)
            .map_err(|e| anyhow!("chart: {e}"))?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc(ylabel)
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| anyhow!("mesh: {e}"))?;
        for (i, l) in lines.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                .map_err(|e| anyhow!("line: {e}"))?
                .label(l.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart
                .draw_series(l.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(|e| anyhow!("dots: {e}"))?;
        }
        for (i, label, p) in markers {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(std::iter::once(Cross::new(*p, 7, c.stroke_width(3))))
                .map_err(|e| anyhow!("marker: {e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (p.0, p.1),
                    (FONT, 12).into_font().color(&c),
                )))
                .map_err(|e| anyhow!("marker label: {e}"))?;
        }
        chart
            .configure_series_labels()
            .position(legend)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("legend: {e}"))?;
        root.present()
            .map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    }
    Ok(path.to_path_buf())
}
