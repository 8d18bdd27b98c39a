//! The report's SVG charts, drawn with `plotters`' SVG backend from the numbers in [`Summary`] only.
//!
//! Each function returns one `<svg>` element as a string, to be inlined in
//! the page. A chart with nothing to show returns `None`; the page says so
//! in words instead.

use plotters::prelude::*;

use super::stats::Proportion;
use super::summary::Summary;
use super::ReportError;

const WIDTH: u32 = 760;
const FONT: &str = "sans-serif";
const BAR: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const REFERENCE: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);
const WHISKER: RGBColor = RGBColor(0x22, 0x22, 0x22);
const PALETTE: [RGBColor; 4] = [
    RGBColor(0x11, 0x11, 0x11),
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xd9, 0x77, 0x06),
    RGBColor(0x2f, 0x85, 0x5a),
];

fn chart_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ReportError {
    ReportError::Chart(e.to_string())
}

/// `n` categories on a segmented axis (plotters' `a..b` segments hold b - a + 1 values).
fn segments(
    n: usize,
) -> plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordusize> {
    (0..n.saturating_sub(1)).into_segmented()
}

/// One bar of a rate chart: label, rate, interval, and whether it is ours.
pub struct RateBar {
    pub label: String,
    pub rate: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub ours: bool,
}

impl RateBar {
    /// A bar from a proportion (none when n = 0).
    pub fn from_proportion(label: &str, p: &Proportion) -> Option<RateBar> {
        Some(RateBar {
            label: format!("{label} (n={})", p.n),
            rate: p.rate?,
            low: p.low,
            high: p.high,
            ours: true,
        })
    }
}

/// Vertical bars of success rates (0-100%) with interval whiskers.
pub fn rate_bars(bars: &[RateBar], y_desc: &str) -> Result<Option<String>, ReportError> {
    if bars.is_empty() {
        return Ok(None);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 340)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let n = bars.len();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(segments(n), 0f64..100f64)
            .map_err(chart_err)?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        let formatter = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(n)
            .x_label_formatter(&formatter)
            .x_label_style((FONT, 13))
            .y_label_style((FONT, 12))
            .y_desc(y_desc)
            .y_label_formatter(&|v| format!("{v:.0}%"))
            .draw()
            .map_err(chart_err)?;
        for (i, bar) in bars.iter().enumerate() {
            let color = if bar.ours { BAR } else { REFERENCE };
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(color.filled())
                        .margin(18)
                        .data([(i, bar.rate * 100.0)]),
                )
                .map_err(chart_err)?;
            if let (Some(low), Some(high)) = (bar.low, bar.high) {
                // A whisker from low to high with 14 px caps.
                let x = SegmentValue::CenterOf(i);
                let style = WHISKER.stroke_width(2);
                let cap = |y: f64| {
                    EmptyElement::at((SegmentValue::CenterOf(i), y))
                        + PathElement::new(vec![(-7, 0), (7, 0)], style)
                };
                chart
                    .draw_series([PathElement::new(
                        vec![(x.clone(), low * 100.0), (x.clone(), high * 100.0)],
                        style,
                    )])
                    .map_err(chart_err)?;
                chart
                    .draw_series([cap(low * 100.0), cap(high * 100.0)])
                    .map_err(chart_err)?;
            }
        }
        root.present().map_err(chart_err)?;
    }
    Ok(Some(svg))
}

/// Cumulative share of successes connected by time t, one line per curve.
pub fn cdf_chart(summary: &Summary) -> Result<Option<String>, ReportError> {
    let t = &summary.time_to_connect;
    if t.cdf.is_empty() {
        return Ok(None);
    }
    let x_max = t.max_ms.unwrap_or(1.0).max(1.0) * 1.05;
    let mut curves: Vec<(String, &Vec<(f64, f64)>)> =
        vec![(format!("all successes (n={})", t.n), &t.cdf)];
    for (name, points) in &t.cdf_by_strategy {
        if !points.is_empty() {
            curves.push((name.clone(), points));
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..1f64)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc("ms from go to established")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("share of successful trials")
            .x_label_style((FONT, 12))
            .y_label_style((FONT, 12))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()
            .map_err(chart_err)?;
        for (i, (name, points)) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            // A step function: the share jumps at each quantile's time.
            let mut steps = vec![(0.0, 0.0)];
            let mut prev = 0.0;
            for &(x, y) in points.iter() {
                steps.push((x, prev));
                steps.push((x, y));
                prev = y;
            }
            steps.push((x_max, prev));
            let width = if i == 0 { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(steps, color.stroke_width(width)))
                .map_err(chart_err)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(Some(svg))
}

/// Vertical bars of counts per labelled category.
pub fn count_bars(
    counts: &[(String, u64)],
    x_desc: &str,
    y_desc: &str,
) -> Result<Option<String>, ReportError> {
    if counts.is_empty() || counts.iter().all(|c| c.1 == 0) {
        return Ok(None);
    }
    let n = counts.len();
    let y_max = counts.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64 * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(segments(n), 0f64..y_max)
            .map_err(chart_err)?;
        let labels: Vec<String> = counts.iter().map(|c| c.0.clone()).collect();
        let formatter = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(n)
            .x_label_formatter(&formatter)
            .x_label_style((FONT, 12))
            .y_label_style((FONT, 12))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(chart_err)?;
        // One series per bar: plotters' Histogram sums its data in a HashMap
        // and draws in that map's order, which changes from run to run; a
        // report must be the same bytes for the same input.
        for (i, c) in counts.iter().enumerate() {
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(BAR.filled())
                        .margin(8)
                        .data([(i, c.1 as f64)]),
                )
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(Some(svg))
}
