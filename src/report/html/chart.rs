//! Small line charts as inline SVG for the page: a run's loss and dev F1, a priming run's
//! losses. Drawn here rather than with plotters so that a page of a few hundred runs stays
//! small (a chart is a few polylines and a handful of labels, coloured by the page's CSS).

use maud::{Markup, html};

/// Width of a chart and height of its plot area in CSS pixels (it scales down with the page).
const WIDTH: f64 = 360.0;
const PLOT_HEIGHT: f64 = 130.0;

/// Plot area inside the chart: room on the left for y labels, below for x labels.
const LEFT: f64 = 46.0;
const RIGHT: f64 = 10.0;
/// Above the plot: the title, then one legend line per series.
const TITLE_HEIGHT: f64 = 18.0;
const LEGEND_LINE: f64 = 11.0;
const BOTTOM: f64 = 34.0;

/// Longest series drawn point by point; longer ones are averaged into this many buckets.
pub const MAX_POINTS: usize = 60;

/// One line: its legend label and (x, y) points in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A chart's title, axis labels and lines; `mark` circles one point of the first series
/// (e.g. the epoch selected on dev).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub mark: Option<(f64, f64)>,
}

/// Averages `points` into at most `max` buckets of consecutive points (x and y both
/// averaged), so that a curve of thousands of steps keeps its shape in a few hundred bytes.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    (0..max)
        .map(|b| {
            let lo = b * points.len() / max;
            let hi = ((b + 1) * points.len() / max).max(lo + 1);
            let chunk = &points[lo..hi];
            let n = chunk.len() as f64;
            (
                chunk.iter().map(|p| p.0).sum::<f64>() / n,
                chunk.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// Three tick values spanning `lo..=hi` (whole numbers on an axis of whole numbers).
fn ticks(lo: f64, hi: f64, whole: bool) -> Vec<f64> {
    if hi <= lo {
        return vec![lo];
    }
    let mid = (lo + hi) / 2.0;
    vec![lo, if whole { mid.round() } else { mid }, hi]
}

/// A tick label short enough for the axis.
fn tick_label(v: f64, whole: bool) -> String {
    let a = v.abs();
    if whole && a < 1e6 {
        format!("{v:.0}")
    } else if a == 0.0 || (0.01..10_000.0).contains(&a) {
        if a >= 100.0 {
            format!("{v:.0}")
        } else if a >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        }
    } else {
        format!("{v:.1e}")
    }
}

impl LineChart {
    /// What a screen reader says of the chart: its title, axes and series (the legend's
    /// colours and dashes are not read out).
    fn aria_label(&self) -> String {
        let series: Vec<&str> = self.series.iter().map(|s| s.label.as_str()).collect();
        format!(
            "{}: {} against {}; {}",
            self.title,
            self.y_label,
            self.x_label,
            series.join(", ")
        )
    }

    /// The chart as an `<svg>` element; a chart without points says so instead.
    pub fn to_svg(&self) -> Markup {
        let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter(finite).copied())
            .collect();
        if all.is_empty() {
            return html! { p.note { (self.title) ": no points recorded." } };
        }
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (x, y) in &all {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y0 = y0.min(*y);
            y1 = y1.max(*y);
        }
        let whole_x = all.iter().all(|p| p.0.fract() == 0.0);
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let top = TITLE_HEIGHT + LEGEND_LINE * self.series.len() as f64 + 6.0;
        let height = top + PLOT_HEIGHT + BOTTOM;
        let pw = WIDTH - LEFT - RIGHT;
        let ph = PLOT_HEIGHT;
        let sx = move |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = move |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
        let polyline = |pts: &[(f64, f64)]| -> String {
            downsample(pts, MAX_POINTS)
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| format!("{:.0},{:.0}", sx(x), sy(y)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let view_box = format!("0 0 {WIDTH} {height:.0}");
        html! {
            svg.chart viewBox=(view_box) width=(WIDTH) height=(format!("{height:.0}")) role="img"
                aria-label=(self.aria_label()) {
                text.title x=(LEFT) y="12" { (self.title) }
                @for (i, s) in self.series.iter().enumerate() {
                    text class={ "legend s" (i % 4) } x=(WIDTH - RIGHT)
                        y=(format!("{:.0}", TITLE_HEIGHT + 8.0 + LEGEND_LINE * i as f64)) { (s.label) }
                }
                path.axis d=(format!("M{LEFT},{top:.0}V{:.0}H{:.0}", top + ph, LEFT + pw)) {}
                @for t in ticks(y0, y1, false) {
                    text.tick.y x=(LEFT - 4.0) y=(format!("{:.0}", sy(t) + 3.0)) { (tick_label(t, false)) }
                }
                @for t in ticks(x0, x1, whole_x) {
                    text.tick.x x=(format!("{:.0}", sx(t))) y=(format!("{:.0}", top + ph + 12.0)) {
                        (tick_label(t, whole_x))
                    }
                }
                text.axis-label x=(LEFT + pw / 2.0) y=(format!("{:.0}", height - 4.0)) { (self.x_label) }
                text.axis-label x="10" y=(format!("{:.0}", top + ph / 2.0))
                    transform=(format!("rotate(-90 10 {:.0})", top + ph / 2.0)) {
                    (self.y_label)
                }
                @for (i, s) in self.series.iter().enumerate() {
                    @if s.points.len() == 1 {
                        circle class={ "dot s" (i % 4) } cx=(format!("{:.0}", sx(s.points[0].0)))
                            cy=(format!("{:.0}", sy(s.points[0].1))) r="2.5" {}
                    } @else {
                        polyline class={ "line s" (i % 4) } points=(polyline(&s.points)) {}
                    }
                }
                @if let Some((x, y)) = self.mark.filter(|m| m.0.is_finite() && m.1.is_finite()) {
                    circle.mark cx=(format!("{:.0}", sx(x))) cy=(format!("{:.0}", sy(y))) r="4" {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_short_curves_and_averages_long_ones() {
        let short: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, 1.0)).collect();
        assert_eq!(downsample(&short, 10), short);
        let long: Vec<(f64, f64)> = (0..1000).map(|i| (i as f64, i as f64)).collect();
        let d = downsample(&long, 100);
        assert_eq!(d.len(), 100);
        // Buckets of 10 consecutive points: the first averages 0..=9.
        assert_eq!(d[0], (4.5, 4.5));
        assert_eq!(d[99], (994.5, 994.5));
    }

    #[test]
    fn labels_are_escaped_and_points_land_inside_the_plot_area() {
        let chart = LineChart {
            title: "loss <b>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                label: "a & b".into(),
                points: vec![(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)],
            }],
            mark: Some((2.0, 1.0)),
        };
        let svg = chart.to_svg().into_string();
        assert!(
            svg.contains("loss &lt;b&gt;") && svg.contains("a &amp; b"),
            "{svg}"
        );
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for p in points.split(' ') {
            let (x, y) = p.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{p}");
            let top = TITLE_HEIGHT + LEGEND_LINE + 6.0;
            assert!((top..=top + PLOT_HEIGHT).contains(&y), "{p}");
        }
        assert!(svg.contains("class=\"mark\""), "{svg}");
    }

    #[test]
    fn a_chart_without_points_says_so() {
        let chart = LineChart {
            title: "dev F1".into(),
            x_label: "epoch".into(),
            y_label: "F1".into(),
            series: vec![Series {
                label: "dev".into(),
                points: vec![],
            }],
            mark: None,
        };
        assert!(chart.to_svg().into_string().contains("no points recorded"));
    }
}
