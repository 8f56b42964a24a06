//! A hand-written SVG line chart: panels with axes, ticks, grid lines and a
//! legend. No dependency: the plots this example draws need a few dozen
//! lines of SVG, and a plotting crate would be most of the build time.

use std::fmt::Write as _;

/// One line of a panel.
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// Dash pattern (`""` for solid).
    pub dash: &'a str,
    /// (x, y) points, in order of x.
    pub points: Vec<(f64, f64)>,
}

/// One chart: its title, axis labels and lines.
pub struct Panel<'a> {
    /// Title above the plot area.
    pub title: &'a str,
    /// Label under the x axis.
    pub x_label: &'a str,
    /// Label beside the y axis.
    pub y_label: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Legend in the bottom right corner (else top right): put it where
    /// the lines are not.
    pub legend_bottom: bool,
    /// The lines.
    pub series: Vec<Series<'a>>,
}

const PANEL_W: f64 = 480.0;
const PANEL_H: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// Renders the panels side by side under a caption.
pub fn render(caption: &str, panels: &[Panel<'_>]) -> String {
    let width = PANEL_W * panels.len() as f64;
    let height = PANEL_H + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        escape(caption)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut s, panel, PANEL_W * i as f64, 30.0);
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, p: &Panel<'_>, ox: f64, oy: f64) {
    let (x0, x1) = (ox + LEFT, ox + PANEL_W - RIGHT);
    let (y0, y1) = (oy + TOP, oy + PANEL_H - BOTTOM);
    let finite = |v: f64| v.is_finite() && (!p.log_y || v > 0.0);
    let pts = p.series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        if finite(y) {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 1.0, 10.0);
    }
    if xmax == xmin {
        xmax = xmin + 1.0;
    }
    let (yticks, ylo, yhi) = if p.log_y {
        log_ticks(ymin, ymax)
    } else {
        linear_ticks(ymin, ymax)
    };
    let (xticks, xlo, xhi) = linear_ticks(xmin, xmax);
    let ty = |y: f64| {
        let (y, lo, hi) = if p.log_y {
            (y.log10(), ylo.log10(), yhi.log10())
        } else {
            (y, ylo, yhi)
        };
        y1 - (y - lo) / (hi - lo) * (y1 - y0)
    };
    let tx = |x: f64| x0 + (x - xlo) / (xhi - xlo) * (x1 - x0);

    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        oy + 22.0,
        escape(p.title)
    );
    // Grid and tick labels.
    for &y in &yticks {
        let py = ty(y);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            py + 4.0,
            tick_label(y)
        );
    }
    for &x in &xticks {
        let px = tx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{y0}" x2="{px:.1}" y2="{y1}" stroke="#e4e4e4"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y1 + 16.0,
            tick_label(x)
        );
    }
    // Axes.
    let _ = writeln!(
        s,
        r#"<polyline points="{x0},{y0} {x0},{y1} {x1},{y1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y1 + 36.0,
        escape(p.x_label)
    );
    let (lx, ly) = (ox + 16.0, (y0 + y1) / 2.0);
    let _ = writeln!(
        s,
        r#"<text x="{lx}" y="{ly}" text-anchor="middle" transform="rotate(-90 {lx} {ly})">{}</text>"#,
        escape(p.y_label)
    );
    // Lines, clipped to the plot area.
    let clip = format!("clip{}", ox as u64);
    let _ = writeln!(
        s,
        r#"<clipPath id="{clip}"><rect x="{x0}" y="{y0}" width="{}" height="{}"/></clipPath>"#,
        x1 - x0,
        y1 - y0
    );
    for series in &p.series {
        let mut d = String::new();
        for &(x, y) in &series.points {
            if finite(y) {
                let _ = write!(d, "{:.1},{:.1} ", tx(x), ty(y));
            }
        }
        let dash = if series.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, series.dash)
        };
        let _ = writeln!(
            s,
            r#"<polyline clip-path="url(#{clip})" points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            d.trim_end(),
            series.color
        );
    }
    // Legend, inside the plot area, wide enough for the longest name
    // (about 7 px a character at 12 px).
    let longest = p.series.iter().map(|s| s.name.chars().count()).max();
    let lw = 150f64.max(50.0 + 7.0 * longest.unwrap_or(0) as f64);
    let lh = 8.0 + 18.0 * p.series.len() as f64;
    let ly = if p.legend_bottom {
        y1 - lh - 8.0
    } else {
        y0 + 8.0
    };
    let lx = x1 - lw - 8.0;
    let _ = writeln!(
        s,
        r##"<rect x="{lx}" y="{ly}" width="{lw}" height="{lh}" fill="white" fill-opacity="0.9" stroke="#999"/>"##
    );
    for (i, series) in p.series.iter().enumerate() {
        let y = ly + 16.0 + 18.0 * i as f64;
        let dash = if series.dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{}""#, series.dash)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 8.0,
            y - 4.0,
            lx + 36.0,
            y - 4.0,
            series.color,
            lx + 42.0,
            y,
            escape(series.name)
        );
    }
}

/// "Nice" ticks (1, 2 or 5 times a power of ten apart) covering
/// `[lo, hi]`, and the axis range they span.
fn linear_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let raw = (hi - lo) / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let last = (hi / step).ceil() * step;
    let n = ((last - first) / step).round() as usize;
    let ticks = (0..=n).map(|i| first + step * i as f64).collect();
    (ticks, first, last)
}

/// Ticks for a log axis: 1, 2, 5 times each power of ten inside the range
/// (decades only when the range spans more than two, and only some of them
/// past eight), and the range, which is widened to the ticks just outside
/// the data.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64, f64) {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo / 2.0, lo * 2.0)
    };
    let decades = hi.log10() - lo.log10();
    let mults: &[f64] = if decades > 2.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    // Over many decades, every 2nd, 5th or 10th one, so labels stay apart.
    let every = [1, 2, 5, 10, 20, 50]
        .into_iter()
        .find(|&k| decades / f64::from(k) <= 8.0)
        .unwrap_or(100);
    let mut all = Vec::new();
    for e in (lo.log10().floor() as i32 - 1)..=(hi.log10().ceil() as i32 + 1) {
        if e.rem_euclid(every) != 0 {
            continue;
        }
        for &m in mults {
            all.push(m * 10f64.powi(e));
        }
    }
    let below = all.iter().copied().filter(|&t| t <= lo).fold(lo, |_, t| t);
    let above = all.iter().copied().find(|&t| t >= hi).unwrap_or(hi);
    let ticks = all
        .into_iter()
        .filter(|&t| t >= below * 0.999 && t <= above * 1.001)
        .collect();
    (ticks, below, above)
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
