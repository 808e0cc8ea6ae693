//! The SVG plot of a run, drawn with plotters (its SVG backend only, with
//! its built-in text metrics, so no system fonts are read): the cumulative
//! distribution of modelled handshake latency (full and resumed); the
//! timeline (each honest handshake at its virtual start time, by latency,
//! with the scenario's events marked); and, where the scenario revokes live
//! sessions, the distribution of revocation reach (admin call → the
//! session's close at the peripheral, wall clock), the report's
//! `revocation_ms`. Axes start at 0 and end at a round value, so that every
//! tick is a round number (plotters puts ticks at multiples of 1, 2 or 5 ×
//! 10ⁿ).

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::run::RunOutput;

/// Width of the figure, pixels.
const W: u32 = 900;
/// Height of one panel, pixels.
const H: u32 = 320;
const FULL: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const RESUMED: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const FAILED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const REVOKED: RGBColor = RGBColor(0x94, 0x67, 0xbd);
/// Most points drawn per series (the rest are thinned out evenly).
const MAX_POINTS: usize = 5000;
/// Ticks per axis, at most.
const X_TICKS: usize = 10;
const Y_TICKS: usize = 6;

/// Drawing the plot failed (plotters' error from its SVG backend).
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(#[from] DrawingAreaErrorKind<std::io::Error>);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The SVG document for a run: two panels, three where revocation was
/// exercised.
pub fn svg(run: &RunOutput) -> Result<String, PlotError> {
    let panels = if run.revocations_ms.is_empty() { 2 } else { 3 };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, H * panels)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((panels as usize, 1));
        latency_cdf(&areas[0], run)?;
        timeline(&areas[1], run)?;
        if let Some(area) = areas.get(2) {
            revocation_cdf(area, run)?;
        }
        root.present()?;
    }
    Ok(out)
}

/// The smallest round value (1, 2 or 5 × 10ⁿ, or a multiple of 10ⁿ up to
/// 10) at or above `v`, so that an axis from 0 ends on a tick.
pub fn round_up(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A tick label: the value with as few decimals as it needs (plotters'
/// tick values are sums of floats, such as 0.30000000000000004).
pub fn tick(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

fn label_style() -> TextStyle<'static> {
    ("sans-serif", 13).into_font().into()
}

/// Every `step`-th element, so that at most [`MAX_POINTS`] remain.
fn thin<T: Copy>(v: &[T]) -> impl Iterator<Item = T> + '_ {
    v.iter()
        .copied()
        .step_by(v.len().div_ceil(MAX_POINTS).max(1))
}

/// `(value, fraction at or below it)` for the sorted `v`, thinned out, with
/// the last point kept so that the curve reaches 1.
fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let n = v.len() as f64;
    let step = v.len().div_ceil(MAX_POINTS).max(1);
    let mut pts: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, x)| (*x, (i + 1) as f64 / n))
        .collect();
    if let Some(last) = v.last() {
        pts.push((*last, 1.0));
    }
    pts
}

fn latency_cdf(area: &Area<'_>, run: &RunOutput) -> Result<(), PlotError> {
    let r = &run.report;
    let series: Vec<(&str, RGBColor, Vec<f64>)> =
        [(false, "full", FULL), (true, "resumed", RESUMED)]
            .into_iter()
            .filter_map(|(resumed, name, colour)| {
                let mut v: Vec<f64> = run
                    .samples
                    .iter()
                    .filter(|s| s.ok && s.resumed == resumed)
                    .map(|s| s.latency_ms)
                    .collect();
                v.sort_by(f64::total_cmp);
                (!v.is_empty()).then_some((name, colour, v))
            })
            .collect();
    let xmax = round_up(
        series
            .iter()
            .filter_map(|(_, _, v)| v.last().copied())
            .fold(0.0, f64::max),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: handshake latency (modelled), p50 {} ms, p99 {} ms",
                r.scenario, r.latency_ms.p50, r.latency_ms.p99
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("latency, ms")
        .y_desc("fraction of handshakes")
        .label_style(label_style())
        .draw()?;
    for (name, colour, v) in &series {
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(cdf(v), colour.stroke_width(2)))?
            .label(format!("{name} ({})", v.len()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(label_style())
            .draw()?;
    }
    Ok(())
}

fn timeline(area: &Area<'_>, run: &RunOutput) -> Result<(), PlotError> {
    let tmax = round_up(
        run.samples
            .iter()
            .map(|s| s.start_s)
            .chain(run.marks.iter().map(|m| m.0))
            .fold(0.0, f64::max),
    );
    let lmax = round_up(run.samples.iter().map(|s| s.latency_ms).fold(0.0, f64::max));
    let mut chart = ChartBuilder::on(area)
        .caption(
            "timeline: each honest handshake at its start (virtual time)",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..tmax, 0.0..lmax)?;
    chart
        .configure_mesh()
        .x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("virtual time, s")
        .y_desc("latency, ms")
        .label_style(label_style())
        .draw()?;

    // The events: a line each; a label only where it does not run into the
    // previous one.
    let plot_w = f64::from(W) - 56.0 - 24.0;
    let mut last_label: Option<f64> = None;
    for (t, label) in &run.marks {
        chart.draw_series(LineSeries::new(
            [(*t, 0.0), (*t, lmax)],
            FAILED.mix(0.5).stroke_width(1),
        ))?;
        let px = t / tmax * plot_w;
        if last_label.is_some_and(|p| px - p < 16.0) {
            continue;
        }
        last_label = Some(px);
        let style = TextStyle::from(("sans-serif", 14).into_font())
            .color(&FAILED)
            .transform(FontTransform::Rotate90)
            .pos(Pos::new(HPos::Left, VPos::Bottom));
        // 4 px right of its line, clear of the axis at 0.
        chart.draw_series(std::iter::once(
            EmptyElement::at((*t, lmax)) + Text::new(label.clone(), (4, 2), style),
        ))?;
    }

    for (ok, resumed, colour, name) in [
        (true, false, FULL, "full"),
        (true, true, RESUMED, "resumed"),
        (false, false, FAILED, "failed"),
        (false, true, FAILED, ""),
    ] {
        let pts: Vec<(f64, f64)> = run
            .samples
            .iter()
            .filter(|s| s.ok == ok && s.resumed == resumed)
            .map(|s| (s.start_s, s.latency_ms))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let drawn = chart.draw_series(
            thin(&pts).map(|(x, y)| Circle::new((x, y), 2, colour.mix(0.6).filled())),
        )?;
        if !name.is_empty() {
            drawn
                .label(format!("{name} ({})", pts.len()))
                .legend(move |(x, y)| Circle::new((x + 10, y), 3, colour.filled()));
        }
    }
    if !run.samples.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(label_style())
            .draw()?;
    }
    Ok(())
}

fn revocation_cdf(area: &Area<'_>, run: &RunOutput) -> Result<(), PlotError> {
    let mut v = run.revocations_ms.clone();
    v.sort_by(f64::total_cmp);
    let caption = match &run.report.revocation_ms {
        Some(p) => format!(
            "revocation reach (admin call to the session's close, wall clock): {} sessions, \
             p50 {} ms, p99 {} ms",
            p.count, p.p50, p.p99
        ),
        None => "revocation reach (admin call to the session's close, wall clock)".to_owned(),
    };
    let xmax = round_up(v.last().copied().unwrap_or(0.0));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..xmax, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_labels(X_TICKS)
        .y_labels(Y_TICKS)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("revocation reach, ms")
        .y_desc("fraction of revoked sessions")
        .label_style(label_style())
        .draw()?;
    chart.draw_series(LineSeries::new(cdf(&v), REVOKED.stroke_width(2)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_values() {
        assert_eq!(round_up(0.0), 1.0);
        assert_eq!(round_up(f64::NAN), 1.0);
        assert_eq!(round_up(1.0), 1.0);
        assert_eq!(round_up(231.4), 250.0);
        assert_eq!(round_up(0.0731), 0.08);
        assert_eq!(round_up(9100.0), 10_000.0);
    }

    #[test]
    fn tick_labels_drop_float_noise() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(250.0), "250");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(1.5), "1.5");
    }

    #[test]
    fn a_cdf_ends_at_one() {
        let v: Vec<f64> = (1..=12_000).map(f64::from).collect();
        let pts = cdf(&v);
        assert!(pts.len() <= MAX_POINTS + 2);
        assert_eq!(pts.last(), Some(&(12_000.0, 1.0)));
        assert!(pts.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(cdf(&[]).is_empty());
    }
}
