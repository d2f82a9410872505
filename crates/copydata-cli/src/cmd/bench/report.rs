//! The bench's output: the table with its ratios, the JSON rows and the SVG
//! chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use super::{Outcome, Row, Sample, Transport};

/// Payloads from this size compare with memcpy, smaller ones with the spin
/// floor.
const MEMCPY_FROM: usize = 4096;

fn measured(results: &[(Row, Outcome)], f: impl Fn(&Row) -> bool) -> Option<Sample> {
    results.iter().find_map(|(row, outcome)| match outcome {
        Outcome::Measured(s) if f(row) => Some(*s),
        _ => None,
    })
}

/// The row's reference rows: the Unix-socket row of the same payload and the
/// floor (spin floor below 4 KiB, memcpy of the same size from 4 KiB).
fn references(results: &[(Row, Outcome)], row: &Row) -> (Option<Sample>, Option<Sample>) {
    let uds = measured(results, |r| r.transport == Transport::UnixSocket && r.payload == row.payload);
    let floor = if row.payload < MEMCPY_FROM {
        measured(results, |r| r.transport == Transport::FloorSpinPingPong)
    } else {
        measured(results, |r| r.transport == Transport::FloorMemcpy && r.payload == row.payload)
    };
    (uds, floor)
}

/// GB/s (10^9 bytes per second): payload bytes over the p50 round trip.
pub fn gb_per_s(row: &Row, s: &Sample) -> f64 {
    if s.p50_ns > 0.0 { row.payload as f64 / s.p50_ns } else { 0.0 }
}

pub fn table(results: &[(Row, Outcome)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<21} {:<15} {:>7} {:>3} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7}",
        "transport", "mode", "payload", "snd", "p50", "p99", "msgs/s", "GB/s", "x uds", "x floor"
    );
    for (row, outcome) in results {
        let lead = format!(
            "{:<21} {:<15} {:>7} {:>3}",
            row.transport.name(),
            row.mode.map_or("-", |m| m.name()),
            bytes(row.payload),
            row.senders
        );
        match outcome {
            Outcome::Measured(s) => {
                let (uds, floor) = references(results, row);
                let ratio = |r: Option<Sample>| r.map_or("-".into(), |r| format!("{:.2}", s.p50_ns / r.p50_ns));
                let _ = writeln!(
                    out,
                    "{lead} {:>9} {:>9} {:>8} {:>7.3} {:>7} {:>7}",
                    nanos(s.p50_ns),
                    nanos(s.p99_ns),
                    count(s.msgs_per_s),
                    gb_per_s(row, s),
                    ratio(uds),
                    ratio(floor)
                );
            }
            Outcome::Absent(why) => {
                let _ = writeln!(out, "{lead} absent: {why}");
            }
            Outcome::Failed(why) => {
                let _ = writeln!(out, "{lead} FAILED: {why}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\np50/p99: round trip per call (per post for post rows; per call across all senders for snd > 1);\n\
         msgs/s: for snd > 1 the aggregate of all senders; GB/s: payload / p50.\n\
         x uds: p50 / p50 of unix-socket at the same payload; x floor: p50 / p50 of floor-spin-ping-pong\n\
         below 4 KiB, of floor-memcpy at the same payload from 4 KiB (lower is better in both)."
    );
    out
}

fn bytes(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Axis labels: the log scale's ticks are powers of ten.
fn si_bytes(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{} GB", x / 1e9),
        x if x >= 1e6 => format!("{} MB", x / 1e6),
        x if x >= 1e3 => format!("{} kB", x / 1e3),
        x => format!("{x} B"),
    }
}

pub fn nanos(ns: f64) -> String {
    match ns {
        ns if ns < 1e3 => format!("{ns:.0} ns"),
        ns if ns < 1e6 => format!("{:.1} us", ns / 1e3),
        ns if ns < 1e9 => format!("{:.1} ms", ns / 1e6),
        ns => format!("{:.2} s", ns / 1e9),
    }
}

fn count(n: f64) -> String {
    match n {
        n if n < 1e3 => format!("{n:.1}"),
        n if n < 1e6 => format!("{:.1}k", n / 1e3),
        n => format!("{:.2}M", n / 1e6),
    }
}

/// The rows as a JSON array; a row that was not measured has null figures.
pub fn json(results: &[(Row, Outcome)]) -> serde_json::Value {
    let rows = results
        .iter()
        .map(|(row, outcome)| {
            let s = match outcome {
                Outcome::Measured(s) => Some(s),
                _ => None,
            };
            serde_json::json!({
                "transport": row.transport.name(),
                "mode": row.mode.map(|m| m.name()),
                "payload_bytes": row.payload,
                "senders": row.senders,
                "p50_ns": s.map(|s| s.p50_ns),
                "p99_ns": s.map(|s| s.p99_ns),
                "msgs_per_s": s.map(|s| s.msgs_per_s),
                "gb_per_s": s.map(|s| gb_per_s(row, s)),
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// An output file, created before the run so a bad path fails at once.
pub struct Output {
    path: PathBuf,
    file: File,
}

impl Output {
    pub fn create(path: &Path) -> anyhow::Result<Output> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Output { path: path.to_path_buf(), file })
    }

    fn write(mut self, text: &str) -> anyhow::Result<()> {
        self.file.write_all(text.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        println!("wrote {}", self.path.display());
        Ok(())
    }
}

pub fn write_json(out: Output, results: &[(Row, Outcome)]) -> anyhow::Result<()> {
    out.write(&(serde_json::to_string_pretty(&json(results))? + "\n"))
}

/// One line per transport and mode (single-sender rows; 0 B cannot sit on a
/// log scale).
pub fn write_svg(out: Output, results: &[(Row, Outcome)]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (row, outcome) in results {
        if let Outcome::Measured(s) = outcome
            && row.senders == 1
            && row.payload > 0
            && s.p50_ns > 0.0
        {
            series.entry(row.label()).or_default().push((row.payload as f64, s.p50_ns));
        }
    }
    let points = series.values().flatten();
    let (x0, x1) = points.clone().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = points.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x0, x1, y0, y1) =
        if series.is_empty() { (1.0, 10.0, 1.0, 10.0) } else { (x0 / 2.0, x1 * 2.0, y0 / 2.0, y1 * 2.0) };
    let mut svg = String::new();
    let draw = |svg: &mut String| -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::with_string(svg, (1100, 700)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("copydata bench: p50 round trip vs payload (log-log)", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("payload (bytes)")
            .y_desc("p50 round trip (ns)")
            .x_label_formatter(&|x| si_bytes(*x))
            .y_label_formatter(&|y| nanos(*y))
            .draw()?;
        for (i, (label, mut points)) in series.into_iter().enumerate() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(3))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw(&mut svg).map_err(|e| anyhow!("drawing the chart: {e}"))?;
    out.write(&svg)
}
