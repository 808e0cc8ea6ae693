//! The SVG plot, written by hand (no plotting dependency): the cumulative
//! distribution of modelled handshake latency (full and resumed), and the
//! timeline (each honest handshake at its virtual start time, by latency,
//! with the scenario's events marked).

use std::fmt::Write;

use crate::run::RunOutput;

const W: f64 = 900.0;
const H: f64 = 300.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 40.0;
const MB: f64 = 45.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn axes(out: &mut String, y0: f64, title: &str, xlabel: &str, ylabel: &str, xmax: f64, ymax: f64) {
    let (x1, x2, y1, y2) = (ML, W - MR, y0 + MT, y0 + H - MB);
    let _ = writeln!(
        out,
        r##"<text x="{ML}" y="{}" font-size="15" font-weight="bold">{}</text>"##,
        y0 + 24.0,
        esc(title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x1}" y="{y1}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        x2 - x1,
        y2 - y1
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = x1 + f * (x2 - x1);
        let y = y2 - f * (y2 - y1);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{y2}" x2="{x}" y2="{}" stroke="#444"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            y2 + 4.0,
            y2 + 17.0,
            fmt(f * xmax)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{}" y1="{y}" x2="{x2}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            x1,
            x1 - 6.0,
            y + 4.0,
            fmt(f * ymax)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"##,
        (x1 + x2) / 2.0,
        y2 + 36.0,
        esc(xlabel)
    );
    let _ = writeln!(
        out,
        r##"<text x="16" y="{}" font-size="12" transform="rotate(-90 16 {})" text-anchor="middle">{}</text>"##,
        (y1 + y2) / 2.0,
        (y1 + y2) / 2.0,
        esc(ylabel)
    );
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The SVG document for a run.
pub fn svg(run: &RunOutput) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"##,
        2.0 * H
    );
    let r = &run.report;
    let ok: Vec<_> = run.samples.iter().filter(|s| s.ok).collect();
    let xmax = ok.iter().map(|s| s.latency_ms).fold(1.0f64, f64::max) * 1.05;
    axes(
        &mut out,
        0.0,
        &format!(
            "{}: handshake latency CDF (modelled), p50 {} ms, p99 {} ms",
            r.scenario, r.latency_ms.p50, r.latency_ms.p99
        ),
        "latency, ms",
        "fraction",
        xmax,
        1.0,
    );
    let (x1, x2, y1, y2) = (ML, W - MR, MT, H - MB);
    for (resumed, colour, name) in [(false, "#1f77b4", "full"), (true, "#2ca02c", "resumed")] {
        let mut v: Vec<f64> = ok
            .iter()
            .filter(|s| s.resumed == resumed)
            .map(|s| s.latency_ms)
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let mut pts = String::new();
        let step = (v.len() / 400).max(1);
        for (i, l) in v
            .iter()
            .enumerate()
            .step_by(step)
            .chain(std::iter::once((v.len() - 1, &v[v.len() - 1])))
        {
            let x = x1 + l / xmax * (x2 - x1);
            let y = y2 - (i + 1) as f64 / v.len() as f64 * (y2 - y1);
            let _ = write!(pts, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            out,
            r##"<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>"##
        );
        let ly = if resumed { y1 + 36.0 } else { y1 + 18.0 };
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{ly}" font-size="12" fill="{colour}">{name} ({})</text>"##,
            x2 - 120.0,
            v.len()
        );
    }

    // Timeline.
    let tmax = run
        .samples
        .iter()
        .map(|s| s.start_s)
        .chain(run.marks.iter().map(|m| m.0))
        .fold(1.0f64, f64::max)
        * 1.05;
    let lmax = run
        .samples
        .iter()
        .map(|s| s.latency_ms)
        .fold(1.0f64, f64::max)
        * 1.05;
    axes(
        &mut out,
        H,
        "timeline: each honest handshake at its start (virtual time); red = failed",
        "virtual time, s",
        "latency, ms",
        tmax,
        lmax,
    );
    let (y1, y2) = (H + MT, 2.0 * H - MB);
    for (t, label) in &run.marks {
        let x = x1 + t / tmax * (x2 - x1);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{y2}" stroke="#d62728" stroke-dasharray="4 3" opacity="0.6"/><text x="{:.1}" y="{}" font-size="10" fill="#d62728" transform="rotate(-90 {:.1} {})">{}</text>"##,
            x + 3.0,
            y1 + 4.0,
            x + 3.0,
            y1 + 4.0,
            esc(label)
        );
    }
    let step = (run.samples.len() / 5000).max(1);
    for s in run.samples.iter().step_by(step) {
        let x = x1 + s.start_s / tmax * (x2 - x1);
        let y = y2 - s.latency_ms / lmax * (y2 - y1);
        let c = match (s.ok, s.resumed) {
            (false, _) => "#d62728",
            (true, true) => "#2ca02c",
            (true, false) => "#1f77b4",
        };
        let _ = writeln!(
            out,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="1.6" fill="{c}" opacity="0.6"/>"##
        );
    }
    out.push_str("</svg>\n");
    out
}
