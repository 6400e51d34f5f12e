//! Plots (PNG) of runs: accuracy against compute, reliability diagrams and
//! training loss curves.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

/// Common places of a sans-serif TrueType font; the plot's text needs one.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, PlotError>;

fn failed(path: &Path, e: Box<dyn std::error::Error>) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Whether a TrueType font for the plots' text was found (`QSTAR_FONT` or
/// a usual system place); without one, plots are drawn without text, and
/// the caller may want to say so.
pub fn font_available() -> bool {
    load_font()
}

/// Registers a system font once; false when none was found (the plot is
/// then drawn without text).
fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let path = std::env::var("QSTAR_FONT")
            .ok()
            .into_iter()
            .chain(FONT_PATHS.iter().map(|p| p.to_string()))
            .find(|p| Path::new(p).exists());
        let Some(bytes) = path.and_then(|p| std::fs::read(p).ok()) else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line per strategy through its (tokens per question, accuracy)
/// points, in budget order, and the compute-optimal curve in black.
pub fn accuracy_vs_compute(
    path: &Path,
    title: &str,
    points: &[(String, f64, f64)],
    optimal: &[(f64, f64)],
) -> Result<()> {
    let text = load_font();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let xs = points
            .iter()
            .map(|p| p.1)
            .chain(optimal.iter().map(|p| p.0));
        let (lo, hi) = xs.fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if lo.is_finite() && lo > 0.0 {
            (lo / 1.5, hi * 1.5)
        } else {
            (1.0, 10.0)
        };
        let top = points
            .iter()
            .map(|p| p.2)
            .chain(optimal.iter().map(|p| p.1))
            .fold(0.05f64, f64::max);
        let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(24)
            .x_label_area_size(50)
            .y_label_area_size(64);
        if text {
            builder.caption(title, ("sans-serif", 24));
        }
        let mut chart =
            builder.build_cartesian_2d((lo..hi).log_scale(), 0f64..(top * 1.15).min(1.0))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("tokens generated per question (log scale)")
                .y_desc("accuracy")
                .x_labels(8)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{:.0} %", y * 100.0));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let mut names: Vec<&str> = Vec::new();
        for p in points {
            if !names.contains(&p.0.as_str()) {
                names.push(&p.0);
            }
        }
        for (i, name) in names.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut line: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.0 == *name)
                .map(|p| (p.1, p.2))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let series = chart.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?;
            if text {
                series.label(*name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
        }
        if !optimal.is_empty() {
            let series =
                chart.draw_series(LineSeries::new(optimal.to_vec(), BLACK.stroke_width(3)))?;
            if text {
                series.label("compute-optimal").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| failed(path, e))
}

/// A reliability diagram: per confidence bin, how often the labeler agreed
/// with the human (bars) against perfect calibration (the diagonal).
/// `bins` holds (low, high, count, mean confidence, accuracy).
pub fn reliability(path: &Path, title: &str, bins: &[(f64, f64, usize, f64, f64)]) -> Result<()> {
    let text = load_font();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (720, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(24)
            .x_label_area_size(50)
            .y_label_area_size(64);
        if text {
            builder.caption(title, ("sans-serif", 22));
        }
        let mut chart = builder.build_cartesian_2d(0.5f64..1.0f64, 0f64..1f64)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("confidence of the soft label")
                .y_desc("agreement with the human");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        chart.draw_series(
            bins.iter()
                .filter(|b| b.2 > 0)
                .map(|&(low, high, _, _, acc)| {
                    Rectangle::new(
                        [(low + 0.004, 0.0), (high - 0.004, acc)],
                        COLORS[0].mix(0.7).filled(),
                    )
                }),
        )?;
        chart.draw_series(LineSeries::new(
            vec![(0.5, 0.5), (1.0, 1.0)],
            BLACK.stroke_width(2),
        ))?;
        chart.draw_series(
            bins.iter()
                .filter(|b| b.2 > 0)
                .map(|&(_, _, _, conf, acc)| Circle::new((conf, acc), 4, COLORS[1].filled())),
        )?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| failed(path, e))
}

/// Training loss per step, and the evaluation loss where it was measured.
pub fn loss_curve(
    path: &Path,
    title: &str,
    train: &[(f64, f64)],
    eval: &[(f64, f64)],
) -> Result<()> {
    let text = load_font();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let last = train.iter().chain(eval).map(|p| p.0).fold(1f64, f64::max);
        let top = train
            .iter()
            .chain(eval)
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold(0.1f64, f64::max);
        let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(24)
            .x_label_area_size(50)
            .y_label_area_size(64);
        if text {
            builder.caption(title, ("sans-serif", 24));
        }
        let mut chart = builder.build_cartesian_2d(0f64..last, 0f64..top * 1.05)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("step").y_desc("cross-entropy (nats per token)");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        let series =
            chart.draw_series(LineSeries::new(train.to_vec(), COLORS[0].stroke_width(2)))?;
        if text {
            series.label("training").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0].stroke_width(2))
            });
        }
        if !eval.is_empty() {
            let series =
                chart.draw_series(LineSeries::new(eval.to_vec(), COLORS[1].stroke_width(2)))?;
            if text {
                series.label("evaluation").legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], COLORS[1].stroke_width(2))
                });
            }
            chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, COLORS[1].filled())))?;
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| failed(path, e))
}
