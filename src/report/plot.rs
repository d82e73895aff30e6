//! Rendering: grouped bar charts, annotated heatmaps, line charts with error bars (one panel
//! per facet) and learning curves, drawn with plotters in the embedded DejaVu Sans font (no
//! system fonts), written atomically as SVG and PNG.

use crate::report::ReportError;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform, register_font};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Family name the embedded font is registered under (also written into SVG text elements).
pub const FONT_FAMILY: &str = "DejaVu Sans";
static FONT_BYTES: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");

/// Registers the embedded font once (under [`FONT_FAMILY`] and plotters' default "sans-serif").
pub fn ensure_font() -> Result<(), ReportError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        [FONT_FAMILY, "sans-serif"]
            .iter()
            .all(|name| register_font(name, FontStyle::Normal, FONT_BYTES).is_ok())
    });
    if ok { Ok(()) } else { Err(ReportError::Font) }
}

/// Series colours (colour-blind-safe Okabe-Ito palette).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(230, 159, 0),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
];

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// Size in pixels (also the SVG's size).
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// A [`Figure`] behind a pointer: the two backends the report draws on, as methods, so that a
/// figure chosen at run time (a `[[report.figure]]`'s kind) needs no enum of every kind.
/// Every `Figure` is one.
pub trait AnyFigure {
    /// [`Figure::size`].
    fn pixels(&self) -> (u32, u32);
    fn draw_svg(&self, root: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>;
    fn draw_bitmap(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>;
}

impl<F: Figure> AnyFigure for F {
    fn pixels(&self) -> (u32, u32) {
        self.size()
    }
    fn draw_svg(&self, root: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String> {
        self.draw(root)
    }
    fn draw_bitmap(&self, root: &DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String> {
        self.draw(root)
    }
}

fn de<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    e.to_string()
}

/// Renders `fig` to an SVG string.
pub fn render_svg(fig: &dyn AnyFigure) -> Result<String, ReportError> {
    ensure_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, fig.pixels()).into_drawing_area();
        fig.draw_svg(&root).map_err(|message| ReportError::Plot {
            path: PathBuf::from("<svg>"),
            message,
        })?;
        root.present().map_err(|e| ReportError::Plot {
            path: PathBuf::from("<svg>"),
            message: e.to_string(),
        })?;
    }
    Ok(svg)
}

/// Writes `<dir>/<stem>.svg` and `<dir>/<stem>.png` atomically; returns both paths.
pub fn write_figure(
    fig: &dyn AnyFigure,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>, ReportError> {
    let svg_path = dir.join(format!("{stem}.svg"));
    let svg = render_svg(fig).map_err(|e| match e {
        ReportError::Plot { message, .. } => ReportError::Plot {
            path: svg_path.clone(),
            message,
        },
        other => other,
    })?;
    crate::fsutil::write_atomic(&svg_path, svg.as_bytes())?;

    // The PNG encoder writes to a path: draw into a temporary sibling, then rename it.
    let png_path = dir.join(format!("{stem}.png"));
    let plot_err = |message: String| ReportError::Plot {
        path: png_path.clone(),
        message,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".png")
        .tempfile_in(dir)
        .map_err(|e| plot_err(e.to_string()))?;
    {
        let root = BitMapBackend::new(tmp.path(), fig.pixels()).into_drawing_area();
        fig.draw_bitmap(&root).map_err(plot_err)?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    crate::fsutil::persist_temp_file(tmp, &png_path)?;
    Ok(vec![svg_path, png_path])
}

fn font(size: f64) -> TextStyle<'static> {
    (FONT_FAMILY, size).into_font().color(&BLACK)
}

fn anchored(size: f64, h: HPos, v: VPos) -> TextStyle<'static> {
    font(size).pos(Pos::new(h, v))
}

/// One bar (or point): the mean and its error bar's low and high ends (None: no error bar);
/// None: no finished run, the bar is absent.
pub type Bar = Option<(f64, Option<(f64, f64)>)>;

/// A grouped bar chart: for each group (x position), one bar per series.
#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub groups: Vec<String>,
    /// (label, one bar per group).
    pub series: Vec<(String, Vec<Bar>)>,
}

impl BarChart {
    /// Lower and upper y bounds: the bars start from a round value below the smallest bar so
    /// that differences of a point or two remain visible.
    pub fn y_range(&self) -> (f64, f64) {
        let bars = self.series.iter().flat_map(|s| s.1.iter().flatten());
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (m, bar) in bars {
            let (low, high) = bar.unwrap_or((*m, *m));
            lo = lo.min(low);
            hi = hi.max(high);
        }
        if !lo.is_finite() {
            return (0.0, 100.0);
        }
        let lo = (((lo - 5.0) / 10.0).floor() * 10.0).max(0.0);
        let hi = ((hi + (hi - lo) * 0.08 + 1.0) / 5.0).ceil() * 5.0;
        (lo, hi)
    }
}

impl Figure for BarChart {
    fn size(&self) -> (u32, u32) {
        (1200, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        let (w, _) = self.size();
        let legend_w = 300;
        let (plot_area, legend_area) = root.split_horizontally(w - legend_w);
        let n = self.groups.len().max(1);
        let (lo, hi) = self.y_range();
        let mut chart = ChartBuilder::on(&plot_area)
            .caption(&self.title, font(26.0))
            .margin(20)
            .x_label_area_size(70)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..n as f64, lo..hi)
            .map_err(de)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(10)
            .light_line_style(WHITE)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(&self.y_desc)
            .x_desc(&self.x_desc)
            .label_style(font(16.0))
            .axis_desc_style(font(18.0))
            .draw()
            .map_err(de)?;
        let k = self.series.len().max(1) as f64;
        let slot = 0.8 / k;
        // backend_coord gives backend pixels; text goes on the plot area, which sits at the
        // backend's origin unless the chart is a panel of a larger figure.
        let (bx, by) = plot_area.get_base_pixel();
        for (j, (_, bars)) in self.series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            for (i, bar) in bars.iter().enumerate() {
                let x0 = i as f64 + 0.1 + j as f64 * slot;
                let (x1, xc) = (x0 + slot * 0.9, x0 + slot * 0.45);
                match bar {
                    Some((m, bar)) => {
                        chart
                            .draw_series(std::iter::once(Rectangle::new(
                                [(x0, lo), (x1, *m)],
                                color.filled(),
                            )))
                            .map_err(de)?;
                        let top = bar.map_or(*m, |b| b.1);
                        if let Some((low, high)) = *bar {
                            // Whisker with caps (plotters' ErrorBar also draws a marker at the mean).
                            let cap = slot * 0.15;
                            let whisker = [
                                vec![(xc, low), (xc, high)],
                                vec![(xc - cap, low), (xc + cap, low)],
                                vec![(xc - cap, high), (xc + cap, high)],
                            ];
                            chart
                                .draw_series(
                                    whisker
                                        .into_iter()
                                        .map(|p| PathElement::new(p, BLACK.stroke_width(2))),
                                )
                                .map_err(de)?;
                        }
                        let (px, py) = chart.backend_coord(&(xc, top));
                        plot_area
                            .draw(&Text::new(
                                format!("{m:.1}"),
                                (px - bx, py - by - 4),
                                anchored(13.0, HPos::Center, VPos::Bottom),
                            ))
                            .map_err(de)?;
                    }
                    None => {
                        let (px, py) = chart.backend_coord(&(xc, lo));
                        plot_area
                            .draw(&Text::new(
                                "n/a",
                                (px - bx, py - by - 4),
                                anchored(13.0, HPos::Center, VPos::Bottom),
                            ))
                            .map_err(de)?;
                    }
                }
            }
        }
        // Group labels under the axis (plotters' automatic ticks cannot sit at group centres).
        for (i, g) in self.groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, lo));
            plot_area
                .draw(&Text::new(
                    g.clone(),
                    (px - bx, py - by + 8),
                    anchored(18.0, HPos::Center, VPos::Top),
                ))
                .map_err(de)?;
        }
        // Legend in its own panel, so it never hides a bar.
        let y0 = 90;
        for (j, (label, _)) in self.series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let y = y0 + j as i32 * 34;
            legend_area
                .draw(&Rectangle::new([(10, y), (32, y + 22)], color.filled()))
                .map_err(de)?;
            legend_area
                .draw(&Text::new(
                    label.clone(),
                    (42, y + 11),
                    anchored(16.0, HPos::Left, VPos::Center),
                ))
                .map_err(de)?;
        }
        Ok(())
    }
}

/// One heatmap cell.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatCell {
    /// None: no finished run (grey, "–").
    pub value: Option<f64>,
    /// Smaller lines under the value (setting name, coverage, paper value).
    pub notes: Vec<String>,
}

/// An annotated heatmap: rows × columns of cells in a fixed 600 × 420 grid (Figure 4's 2×2
/// cells are 300 × 210).
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub row_desc: String,
    pub col_desc: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<HeatCell>>,
}

/// Light-to-dark blue ramp for t in [0, 1].
fn ramp(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let (a, b) = ((222.0, 235.0, 247.0), (8.0, 69.0, 148.0));
    let mix = |x: f64, y: f64| (x + (y - x) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

impl Figure for Heatmap {
    fn size(&self) -> (u32, u32) {
        (900, 640)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        let (w, _) = self.size();
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, 20),
            anchored(24.0, HPos::Center, VPos::Top),
        ))
        .map_err(de)?;
        let (rows, cols) = (self.row_labels.len().max(1), self.col_labels.len().max(1));
        let (left, top, cw, ch) = (250, 150, 600 / cols as i32, 420 / rows as i32);
        // Figure 4's 36 px values in its 300 px cells; smaller ones where cells are narrower.
        let value_size = (f64::from(cw) / 4.0).min(36.0);
        let values: Vec<f64> = self
            .cells
            .iter()
            .flatten()
            .filter_map(|c| c.value)
            .collect();
        let (vmin, vmax) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        // Column axis: description, then one label per column.
        root.draw(&Text::new(
            self.col_desc.clone(),
            (left + cw * cols as i32 / 2, top - 80),
            anchored(20.0, HPos::Center, VPos::Center),
        ))
        .map_err(de)?;
        root.draw(&Text::new(
            self.row_desc.clone(),
            (left - 140, top + ch * rows as i32 / 2),
            anchored(20.0, HPos::Center, VPos::Center).transform(FontTransform::Rotate270),
        ))
        .map_err(de)?;
        for (j, label) in self.col_labels.iter().enumerate() {
            let x = left + cw * j as i32 + cw / 2;
            root.draw(&Text::new(
                label.clone(),
                (x, top - 30),
                anchored(20.0, HPos::Center, VPos::Center),
            ))
            .map_err(de)?;
        }
        for (i, row) in self.cells.iter().enumerate() {
            let y = top + ch * i as i32 + ch / 2;
            root.draw(&Text::new(
                self.row_labels[i].clone(),
                (left - 20, y),
                anchored(20.0, HPos::Right, VPos::Center),
            ))
            .map_err(de)?;
            for (j, cell) in row.iter().enumerate() {
                let (x0, y0) = (left + cw * j as i32, top + ch * i as i32);
                let t = match cell.value {
                    Some(v) if vmax > vmin => (v - vmin) / (vmax - vmin),
                    Some(_) => 0.5,
                    None => 0.0,
                };
                let fill = if cell.value.is_some() {
                    ramp(0.15 + 0.85 * t)
                } else {
                    RGBColor(220, 220, 220)
                };
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    fill.filled(),
                ))
                .map_err(de)?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + cw, y0 + ch)],
                    WHITE.stroke_width(3),
                ))
                .map_err(de)?;
                let ink = if cell.value.is_some() && t > 0.45 {
                    WHITE
                } else {
                    BLACK
                };
                let main = cell.value.map_or("–".to_string(), |v| format!("{v:.2}"));
                let cx = x0 + cw / 2;
                // Figure 4's offsets (25 and 20 px in 210 px cells), smaller in smaller cells.
                let (up, down) = ((ch / 7).min(25), (ch / 8).min(20));
                root.draw(&Text::new(
                    main,
                    (cx, y0 + ch / 2 - up),
                    anchored(value_size, HPos::Center, VPos::Center).color(&ink),
                ))
                .map_err(de)?;
                for (k, note) in cell.notes.iter().enumerate() {
                    root.draw(&Text::new(
                        note.clone(),
                        (cx, y0 + ch / 2 + down + 22 * k as i32),
                        anchored(15.0, HPos::Center, VPos::Center).color(&ink),
                    ))
                    .map_err(de)?;
                }
            }
        }
        Ok(())
    }
}

/// A line chart (learning curves).
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    /// (label, points).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Draw the first series faintly (raw values under a smoothed line).
    pub faint_first: bool,
}

impl Figure for LineChart {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.1.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, font(24.0))
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(de)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(238, 238, 238))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .label_style(font(15.0))
            .axis_desc_style(font(17.0))
            .draw()
            .map_err(de)?;
        for (j, (label, points)) in self.series.iter().enumerate() {
            let base = PALETTE[j % PALETTE.len()];
            let color = if j == 0 && self.faint_first {
                base.mix(0.35)
            } else {
                base.mix(1.0)
            };
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .copied()
                        .filter(|p| p.0.is_finite() && p.1.is_finite()),
                    color.stroke_width(2),
                ))
                .map_err(de)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(font(15.0))
            .draw()
            .map_err(de)?;
        Ok(())
    }
}

/// Figures of one kind side by side, one per facet (language), under a common title; each
/// panel keeps its own size, title and legend.
#[derive(Debug, Clone)]
pub struct Panels<T> {
    pub title: String,
    /// One line under the title: what the values and their intervals are.
    pub subtitle: String,
    pub panels: Vec<T>,
}

/// Height of the common title strip of [`Panels`] and [`LinePanels`].
const HEADER_H: u32 = 80;

/// Columns of a grid of `n` panels: six languages come out as 3 × 2.
fn grid_columns(n: usize) -> usize {
    match n {
        0 | 1 => 1,
        2 | 4 => 2,
        _ => 3,
    }
}

impl<T: Figure> Figure for Panels<T> {
    fn size(&self) -> (u32, u32) {
        let (pw, ph) = self.panels.first().map_or((400, 300), |p| p.size());
        let cols = grid_columns(self.panels.len());
        let rows = self.panels.len().div_ceil(cols).max(1);
        (pw * cols as u32, HEADER_H + ph * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        let (w, _) = self.size();
        root.draw(&Text::new(
            self.title.clone(),
            (w as i32 / 2, 14),
            anchored(24.0, HPos::Center, VPos::Top),
        ))
        .map_err(de)?;
        root.draw(&Text::new(
            self.subtitle.clone(),
            (w as i32 / 2, 48),
            anchored(15.0, HPos::Center, VPos::Top),
        ))
        .map_err(de)?;
        let (_, body) = root.split_vertically(HEADER_H);
        let cols = grid_columns(self.panels.len());
        let rows = self.panels.len().div_ceil(cols).max(1);
        for (panel, area) in self.panels.iter().zip(body.split_evenly((rows, cols))) {
            panel.draw(&area)?;
        }
        Ok(())
    }
}

/// Means with error bars over a shared x axis, one panel per facet (a shared y range so that
/// panels compare), the legend in its own strip so it never covers a point. Positions on x are
/// given (log10 of the value on a log scale); labels are drawn at exactly those positions.
#[derive(Debug, Clone)]
pub struct LinePanels {
    pub title: String,
    /// One line under the title: what the points and error bars are.
    pub subtitle: String,
    pub x_desc: String,
    pub y_desc: String,
    pub x_labels: Vec<String>,
    pub x_positions: Vec<f64>,
    /// Legend labels, one per series.
    pub series: Vec<String>,
    pub panels: Vec<LinePanel>,
}

/// One facet of a [`LinePanels`].
#[derive(Debug, Clone)]
pub struct LinePanel {
    pub title: String,
    /// `points[series][x]`.
    pub points: Vec<Vec<Bar>>,
}

const LEGEND_W: u32 = 330;

impl LinePanels {
    fn panel_size(&self) -> (u32, u32) {
        if self.panels.len() <= 1 {
            (900, 560)
        } else {
            (560, 400)
        }
    }

    /// The shared y range: every mean and error bar, padded, on round numbers.
    pub fn y_range(&self) -> (f64, f64) {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (m, bar) in self
            .panels
            .iter()
            .flat_map(|p| p.points.iter().flatten().flatten())
        {
            let (a, b) = bar.unwrap_or((*m, *m));
            lo = lo.min(a.min(*m));
            hi = hi.max(b.max(*m));
        }
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.08).max(0.5);
        let step = if hi - lo > 20.0 { 5.0 } else { 1.0 };
        (
            ((lo - pad) / step).floor() * step,
            ((hi + pad) / step).ceil() * step,
        )
    }
}

impl Figure for LinePanels {
    fn size(&self) -> (u32, u32) {
        let (pw, ph) = self.panel_size();
        let cols = grid_columns(self.panels.len());
        let rows = self.panels.len().div_ceil(cols).max(1);
        (pw * cols as u32 + LEGEND_W, HEADER_H + ph * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(de)?;
        let (w, _) = self.size();
        let (plots, legend) = root.split_horizontally(w - LEGEND_W);
        let centre = (w - LEGEND_W) as i32 / 2;
        plots
            .draw(&Text::new(
                self.title.clone(),
                (centre, 14),
                anchored(24.0, HPos::Center, VPos::Top),
            ))
            .map_err(de)?;
        plots
            .draw(&Text::new(
                self.subtitle.clone(),
                (centre, 48),
                anchored(15.0, HPos::Center, VPos::Top),
            ))
            .map_err(de)?;
        let (_, body) = plots.split_vertically(HEADER_H);
        let cols = grid_columns(self.panels.len());
        let rows = self.panels.len().div_ceil(cols).max(1);
        let (lo, hi) = self.y_range();
        let (x0, x1) = self
            .x_positions
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let span = if x1 > x0 { x1 - x0 } else { 1.0 };
        let (x0, x1) = (x0 - span * 0.1, x1 + span * 0.1);
        let k = self.series.len().max(1) as f64;
        for (panel, area) in self.panels.iter().zip(body.split_evenly((rows, cols))) {
            let mut chart = ChartBuilder::on(&area)
                .caption(&panel.title, font(19.0))
                .margin(12)
                .x_label_area_size(64)
                .y_label_area_size(72)
                .build_cartesian_2d(x0..x1, lo..hi)
                .map_err(de)?;
            chart
                .configure_mesh()
                .x_labels(0)
                .disable_x_mesh()
                .y_labels(8)
                .light_line_style(WHITE)
                .bold_line_style(RGBColor(225, 225, 225))
                .y_label_formatter(&|v| format!("{v:.0}"))
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .label_style(font(14.0))
                .axis_desc_style(font(16.0))
                .draw()
                .map_err(de)?;
            // Labels at the values' own positions (backend pixels, hence drawn on the root).
            for (label, &x) in self.x_labels.iter().zip(&self.x_positions) {
                let (px, py) = chart.backend_coord(&(x, lo));
                root.draw(&Text::new(
                    label.clone(),
                    (px, py + 6),
                    anchored(14.0, HPos::Center, VPos::Top),
                ))
                .map_err(de)?;
            }
            for (j, points) in panel.points.iter().enumerate() {
                let color = PALETTE[j % PALETTE.len()];
                // Series side by side around each x, so that their error bars do not overlap.
                let dodge = (j as f64 - (k - 1.0) / 2.0) * span * 0.015;
                // (x, mean, error bar) of each x the series has a point at.
                type Placed = Option<(f64, f64, Option<(f64, f64)>)>;
                let placed: Vec<Placed> = points
                    .iter()
                    .zip(&self.x_positions)
                    .map(|(p, &x)| p.map(|(m, bar)| (x + dodge, m, bar)))
                    .collect();
                // Lines join neighbouring points; a missing point breaks the line.
                for pair in placed.windows(2) {
                    if let [Some(a), Some(b)] = pair {
                        chart
                            .draw_series(std::iter::once(PathElement::new(
                                vec![(a.0, a.1), (b.0, b.1)],
                                color.stroke_width(2),
                            )))
                            .map_err(de)?;
                    }
                }
                let cap = span * 0.008;
                for (x, m, bar) in placed.iter().flatten() {
                    if let Some((low, high)) = bar {
                        let whisker = [
                            vec![(*x, *low), (*x, *high)],
                            vec![(x - cap, *low), (x + cap, *low)],
                            vec![(x - cap, *high), (x + cap, *high)],
                        ];
                        chart
                            .draw_series(
                                whisker
                                    .into_iter()
                                    .map(|p| PathElement::new(p, color.stroke_width(1))),
                            )
                            .map_err(de)?;
                    }
                    chart
                        .draw_series(std::iter::once(Circle::new((*x, *m), 4, color.filled())))
                        .map_err(de)?;
                }
            }
        }
        for (j, label) in self.series.iter().enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            let y = HEADER_H as i32 + 20 + j as i32 * 30;
            legend
                .draw(&PathElement::new(
                    vec![(10, y), (40, y)],
                    color.stroke_width(3),
                ))
                .map_err(de)?;
            legend
                .draw(&Circle::new((25, y), 4, color.filled()))
                .map_err(de)?;
            legend
                .draw(&Text::new(
                    label.clone(),
                    (50, y),
                    anchored(15.0, HPos::Left, VPos::Center),
                ))
                .map_err(de)?;
        }
        Ok(())
    }
}
