//! Plots of a run: congestion window, queueing delay and throughput per flow
//! over time, as one SVG with three panels.

use std::path::Path;

use plotters::prelude::*;

use crate::result::{FlowSeries, SimResult};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// One line of a panel: its name, colour and points.
type Line = (String, RGBColor, Vec<(f64, f64)>);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    t_max: f64,
    series: &[Line],
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    let y_max = series
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(y_label)
        .light_line_style(WHITE)
        .draw()?;
    for (name, color, pts) in series {
        let c = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}

/// Writes an SVG of `r` to `path`, titled `title`.
pub fn svg(r: &SimResult, title: &str, path: &Path) -> PlotResult {
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((3, 1));
    let t_max = r.t.last().copied().unwrap_or(1.0);
    let color = |i: usize| COLORS[i % COLORS.len()];

    // One line per flow of one series, scaled.
    let per_flow = |series: fn(&FlowSeries) -> &Vec<f64>, scale: f64| -> Vec<Line> {
        r.flows
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let pts =
                    r.t.iter()
                        .zip(series(f))
                        .map(|(&t, &v)| (t, v * scale))
                        .collect();
                (f.label.clone(), color(i), pts)
            })
            .collect()
    };
    let cwnd = per_flow(|f| &f.cwnd_bytes, 1.0 / 1024.0);
    panel(&panels[0], "congestion window", "KiB", t_max, &cwnd)?;

    let mut delay = vec![(
        "bottleneck queue".to_string(),
        RGBColor(0, 0, 0),
        r.t.iter()
            .zip(&r.links[0].queue_ms)
            .map(|(&t, &q)| (t, q))
            .collect::<Vec<_>>(),
    )];
    for (i, f) in r.flows.iter().enumerate() {
        let pts: Vec<_> =
            r.t.iter()
                .zip(&f.queuing_estimate_ms)
                .filter_map(|(&t, e)| e.map(|e| (t, e)))
                .collect();
        if !pts.is_empty() {
            delay.push((format!("{} estimate", f.label), color(i), pts));
        }
    }
    panel(&panels[1], "queueing delay", "ms", t_max, &delay)?;

    let tput = per_flow(|f| &f.goodput_bps, 1e-6);
    panel(&panels[2], "throughput (goodput)", "Mbit/s", t_max, &tput)?;
    root.present()?;
    Ok(())
}
