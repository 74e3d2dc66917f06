//! Latency-against-load plots as hand-written SVG (no plotting crate).
//!
//! Owns the drawing only: the callers (`rr-latency --rates ... --plot`, `capacity --plot`)
//! turn their reports into [`Series`]. X is the load on a linear axis; y is latency in
//! microseconds on a log axis (latencies span decades between p50 and p99 near saturation).

use std::fmt::Write as _;

/// One line of the plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// (load, latency in microseconds) points; non-finite or non-positive latencies are
    /// skipped (a log axis cannot show them).
    pub points: Vec<(f64, f64)>,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct LatencyPlot {
    /// Title above the plot.
    pub title: String,
    /// X-axis label (for example "sessions" or "ping-pongs per second").
    pub x_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// A horizontal limit line (the SLO), microseconds.
    pub limit_us: Option<f64>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

impl LatencyPlot {
    /// The SVG document.
    pub fn to_svg(&self) -> String {
        let pts = |s: &Series| -> Vec<(f64, f64)> {
            s.points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && y > 0.0)
                .collect()
        };
        let all: Vec<(f64, f64)> = self.series.iter().flat_map(pts).collect();
        let x_max = all.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
        let mut y_lo = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut y_hi = all.iter().map(|p| p.1).fold(0.0f64, f64::max);
        if let Some(l) = self.limit_us.filter(|l| *l > 0.0) {
            y_lo = y_lo.min(l);
            y_hi = y_hi.max(l);
        }
        if !y_lo.is_finite() {
            (y_lo, y_hi) = (1.0, 1000.0);
        }
        let d_lo = y_lo.log10().floor();
        let d_hi = y_hi.log10().ceil().max(d_lo + 1.0);
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + x / x_max * pw;
        let sy = |y: f64| TOP + ph - (y.log10() - d_lo) / (d_hi - d_lo) * ph;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        // Y decades and their grid.
        let mut d = d_lo;
        while d <= d_hi + 1e-9 {
            let y = sy(10f64.powf(d));
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                us_label(10f64.powf(d))
            );
            d += 1.0;
        }
        // X ticks.
        let step = nice_step(x_max / 5.0);
        let mut x = 0.0;
        while x <= x_max + 1e-9 {
            let px = sx(x);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                num_label(x)
            );
            x += step;
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 18.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
            TOP + ph / 2.0,
            TOP + ph / 2.0
        );
        let mut legend_y = TOP + 10.0;
        let lx = LEFT + pw + 14.0;
        if let Some(l) = self.limit_us.filter(|l| *l > 0.0) {
            let y = sy(l);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#000" stroke-dasharray="6 4"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r##"<line x1="{lx}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="#000" stroke-dasharray="6 4"/><text x="{}" y="{}">SLO {}</text>"##,
                lx + 24.0,
                lx + 30.0,
                legend_y + 4.0,
                us_label(l)
            );
            legend_y += 20.0;
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let p = pts(series);
            if !p.is_empty() {
                let coords: Vec<String> = p
                    .iter()
                    .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                    coords.join(" ")
                );
                for &(x, y) in &p {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                        sx(x),
                        sy(y)
                    );
                }
            }
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                legend_y + 4.0,
                escape(&series.name)
            );
            legend_y += 20.0;
        }
        s.push_str("</svg>\n");
        s
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn us_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", num_label(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", num_label(us / 1e3))
    } else {
        format!("{} us", num_label(us))
    }
}

fn num_label(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_series_and_the_limit() {
        let plot = LatencyPlot {
            title: "rr-latency <sweep> & more".into(),
            x_label: "ping-pongs per second".into(),
            series: vec![
                Series {
                    name: "p50".into(),
                    points: vec![(500.0, 60.0), (1000.0, 70.0), (2000.0, 90.0)],
                },
                Series {
                    name: "p99".into(),
                    points: vec![(500.0, 200.0), (1000.0, f64::NAN), (2000.0, 4000.0)],
                },
            ],
            limit_us: Some(10_000.0),
        };
        let svg = plot.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // The NaN point is skipped: 3 + 2 markers.
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("&lt;sweep&gt; &amp;"));
        assert!(svg.contains("SLO 10 ms"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_plot_is_still_a_document() {
        let svg = LatencyPlot {
            title: "empty".into(),
            x_label: "x".into(),
            series: vec![],
            limit_us: None,
        }
        .to_svg();
        assert!(svg.contains("</svg>"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn steps_are_nice() {
        assert_eq!(nice_step(180.0), 200.0);
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1000.0), 1000.0);
    }
}
