//! The burst as an SVG chart: admissions per second, drain per second and
//! the queue depth they imply, in three panels on one time axis. Hand-written SVG keeps the
//! dependency list short and the output a single self-contained file.

use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
/// Where the first panel starts, below the title.
const TOP: f64 = 80.0;
const PANEL_HEIGHT: f64 = 150.0;
/// Space between panels, for tick labels and the next legend.
const PANEL_GAP: f64 = 50.0;

const ADMIT_COLOUR: &str = "#2563eb";
const DRAIN_COLOUR: &str = "#ea580c";
const DEPTH_COLOUR: &str = "#7c3aed";

/// One panel: a series on its own value axis. Admissions peak far above the
/// drain rate in a flash sale, so each series gets its own scale rather
/// than one flattening the other.
struct Panel<'a> {
    legend: &'a str,
    axis_title: &'a str,
    colour: &'a str,
    values: Vec<f64>,
    /// Draw as a filled area (levels) rather than a line (rates).
    filled: bool,
    /// A dashed reference line with its label.
    reference: Option<(f64, String)>,
}

/// Renders the report's timeline as an SVG document.
pub fn render(report: &Report) -> String {
    let mut svg = String::new();
    // Writing to a String cannot fail.
    let _ = draw(&mut svg, report);
    svg
}

fn draw(o: &mut String, r: &Report) -> std::fmt::Result {
    let points = &r.timeline.points;
    let panels = [
        Panel {
            legend: "admissions/s (tickets handed out)",
            axis_title: "admissions / s",
            colour: ADMIT_COLOUR,
            values: points.iter().map(|p| p.admitted_per_second).collect(),
            filled: false,
            reference: None,
        },
        Panel {
            legend: "drained/s (tickets completed, by completed_at)",
            axis_title: "drained / s",
            colour: DRAIN_COLOUR,
            values: points.iter().map(|p| p.drained_per_second).collect(),
            filled: false,
            reference: r
                .drain
                .as_ref()
                .filter(|d| d.rate_per_second > 0.0)
                .map(|d| {
                    (
                        d.rate_per_second,
                        format!("observed drain {:.1}/s", d.rate_per_second),
                    )
                }),
        },
        Panel {
            legend: "queue depth estimate (admitted - drained)",
            axis_title: "tickets waiting",
            colour: DEPTH_COLOUR,
            values: points.iter().map(|p| p.depth as f64).collect(),
            filled: true,
            reference: None,
        },
    ];
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + PANEL_GAP) + 20.0;
    writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(o, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##)?;
    writeln!(
        o,
        r#"<text x="{LEFT}" y="28" font-size="18" font-weight="bold">flashgate burst: {}</text>"#,
        esc(&r.target)
    )?;
    writeln!(
        o,
        r##"<text x="{LEFT}" y="50" fill="#444">{}</text>"##,
        esc(&subtitle(r))
    )?;
    if points.is_empty() {
        writeln!(
            o,
            r#"<text x="{LEFT}" y="200">no tickets were admitted: nothing to draw</text>"#
        )?;
        return writeln!(o, "</svg>");
    }

    let width = r.timeline.bucket_seconds;
    let t_max = points.last().map_or(1.0, |p| p.t + width);
    let x_axis = Axis::new(t_max);
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * t / x_axis.max;
    // Rates are drawn at the middle of their bucket, levels at its end.
    let mids: Vec<f64> = points.iter().map(|p| x(p.t + width / 2.0)).collect();
    let ends: Vec<f64> = points.iter().map(|p| x(p.t + width)).collect();

    let mut top = TOP;
    for panel in &panels {
        let bottom = top + PANEL_HEIGHT;
        let peak = panel.values.iter().copied().fold(1.0, f64::max);
        let axis = Axis::new(panel.reference.as_ref().map_or(peak, |(v, _)| peak.max(*v)));
        let y = |v: f64| bottom - PANEL_HEIGHT * v / axis.max;
        grid(o, &axis, (top, bottom), panel.axis_title, y)?;
        for tick in x_axis.ticks() {
            let xt = x(tick);
            writeln!(
                o,
                r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{top}" y2="{bottom}" stroke="#e5e5e5"/><text x="{xt:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 16.0,
                label(tick)
            )?;
        }
        if panel.filled {
            let mut d = format!("M{:.1},{bottom:.1}", x(0.0));
            for (xe, v) in ends.iter().zip(&panel.values) {
                let _ = write!(d, " L{xe:.1},{:.1}", y(*v));
            }
            let _ = write!(d, " L{:.1},{bottom:.1} Z", x(t_max));
            writeln!(
                o,
                r#"<path d="{d}" fill="{0}" fill-opacity="0.25" stroke="{0}" stroke-width="1.5"/>"#,
                panel.colour
            )?;
        } else {
            let pts: Vec<(f64, f64)> = mids
                .iter()
                .zip(&panel.values)
                .map(|(xm, v)| (*xm, y(*v)))
                .collect();
            line(o, &pts, panel.colour)?;
        }
        if let Some((value, text)) = &panel.reference {
            let yr = y(*value);
            writeln!(
                o,
                r#"<line x1="{LEFT}" x2="{right}" y1="{yr:.1}" y2="{yr:.1}" stroke="{colour}" stroke-dasharray="6 4"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="{colour}">{text}</text>"#,
                right = WIDTH - RIGHT,
                colour = panel.colour,
                text = esc(text),
                tx = WIDTH - RIGHT - 4.0,
                ty = yr - 5.0,
            )?;
        }
        legend(o, top - 10.0, panel.legend, panel.colour)?;
        top = bottom + PANEL_GAP;
    }
    writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds since the burst started</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        top - PANEL_GAP + 36.0
    )?;
    writeln!(o, "</svg>")
}

fn subtitle(r: &Report) -> String {
    let a = &r.admission;
    let mut s = format!(
        "{} admitted at {:.0}/s, p99 {:.2} ms",
        a.admitted, a.admitted_per_second, a.latency_ms.p99
    );
    if let Some(t) = &r.tickets {
        let _ = write!(
            s,
            "; {} completed, {} failed, {} unfinished",
            t.completed, t.failed, t.never_finished
        );
    }
    if let Some(lost) = r.upstream.as_ref().and_then(|u| u.lost) {
        let _ = write!(s, "; lost {lost}");
    }
    s
}

/// A value axis from 0 to a round maximum, with round steps.
struct Axis {
    max: f64,
    step: f64,
}

impl Axis {
    fn new(value_max: f64) -> Self {
        let raw = value_max / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * magnitude)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * magnitude);
        let max = (value_max / step).ceil().max(1.0) * step;
        Axis { max, step }
    }

    fn ticks(&self) -> impl Iterator<Item = f64> + '_ {
        let n = (self.max / self.step).round() as usize;
        (0..=n).map(move |i| i as f64 * self.step)
    }
}

fn grid(
    o: &mut String,
    axis: &Axis,
    (top, bottom): (f64, f64),
    title: &str,
    y: impl Fn(f64) -> f64,
) -> std::fmt::Result {
    for tick in axis.ticks() {
        let yt = y(tick);
        writeln!(
            o,
            r##"<line x1="{LEFT}" x2="{}" y1="{yt:.1}" y2="{yt:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yt + 4.0,
            label(tick)
        )?;
    }
    writeln!(
        o,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="#333"/>"##,
        WIDTH - RIGHT
    )?;
    let cy = (top + bottom) / 2.0;
    writeln!(
        o,
        r#"<text x="18" y="{cy}" text-anchor="middle" transform="rotate(-90 18 {cy})">{title}</text>"#
    )
}

fn line(o: &mut String, pts: &[(f64, f64)], colour: &str) -> std::fmt::Result {
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    writeln!(
        o,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"/>"#,
        coords.join(" ")
    )
}

fn legend(o: &mut String, y: f64, name: &str, colour: &str) -> std::fmt::Result {
    writeln!(
        o,
        r#"<rect x="{LEFT}" y="{}" width="14" height="4" fill="{colour}"/><text x="{}" y="{y}">{}</text>"#,
        y - 5.0,
        LEFT + 20.0,
        esc(name)
    )
}

/// Tick labels: no trailing zeros, thousands as `k`.
fn label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
