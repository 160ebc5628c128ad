//! The benchmark plots (PNG, plotters' bitmap backend). Text is drawn with ab_glyph from a
//! system TTF (DejaVu Sans, Debian's `fonts-dejavu-core`), registered at run time.

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::path::Path;

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path}: not a usable font"))?;
    Ok(())
}

const COLORS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(70, 130, 180),
    RGBColor(214, 96, 39),
    RGBColor(240, 170, 110),
];

pub fn plots(report: &Value, out: &Path) -> Result<()> {
    register_font()?;
    if report["dataplane"].is_object() {
        dataplane(&report["dataplane"], &out.join("bench-dataplane.png")).context("bench-dataplane.png")?;
    }
    if report["convergence"].is_array() {
        convergence(report, &out.join("bench-convergence.png")).context("bench-convergence.png")?;
    }
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend, Shift>,
    title: &str,
    unit: &str,
    labels: &[String],
    values: &[f64],
) -> Result<()> {
    let max = values.iter().cloned().filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.18;
    let n = values.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(55)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..max.max(1e-9))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_labels(n as usize)
        .x_label_formatter(&|_| String::new())
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, v) in values.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                Histogram::vertical(&chart)
                    .style(c.filled())
                    .margin(6)
                    .data([(i as u32, *v)]),
            )
            .map_err(|e| anyhow!("{e}"))?;
        let digits = if *v >= 100.0 {
            0
        } else if *v >= 1.0 {
            2
        } else {
            3
        };
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{v:.digits$}"),
                (SegmentValue::CenterOf(i as u32), *v + max * 0.02),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Bottom,
                    )),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    let _ = labels;
    Ok(())
}

fn dataplane(dp: &Value, path: &Path) -> Result<()> {
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, rest) = root.split_vertically(40);
    top.titled(
        &format!(
            "weft data plane, 2 lab hosts: medians of {} interleaved rounds (higher is better, RTT lower)",
            dp["rounds"]
        ),
        ("sans-serif", 22),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let (body, legend) = rest.split_vertically(480);
    let setups: Vec<(String, String)> = dp["setups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["key"].as_str().unwrap_or("").to_string(),
                s["label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let labels: Vec<String> = setups.iter().map(|s| s.1.clone()).collect();
    let panels = body.split_evenly((1, 4));
    let tests = [
        ("tcp1", "TCP, 1 stream", "Gbit/s", 1.0),
        ("tcp2", "TCP, 2 streams", "Gbit/s", 1.0),
        ("udp64", "UDP, 64-byte packets", "kpackets/s received", 1e-3),
        ("ping", "ping RTT (median)", "µs", 1e3),
    ];
    for (area, (key, title, unit, scale)) in panels.iter().zip(tests) {
        let values: Vec<f64> = setups
            .iter()
            .map(|(k, _)| dp["medians"][k][key].as_f64().unwrap_or(f64::NAN) * scale)
            .collect();
        panel(area, title, unit, &labels, &values)?;
    }
    // Legend row.
    let x0 = 60;
    let step = (1400 - x0) / i32::try_from(labels.len().max(1)).unwrap_or(1);
    for (i, l) in labels.iter().enumerate() {
        let x = x0 + i as i32 * step;
        legend
            .draw(&Rectangle::new(
                [(x, 10), (x + 22, 28)],
                COLORS[i % COLORS.len()].filled(),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        legend
            .draw(&Text::new(l.clone(), (x + 30, 11), ("sans-serif", 17)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn convergence(report: &Value, path: &Path) -> Result<()> {
    let rows = report["convergence"].as_array().cloned().unwrap_or_default();
    let pts = |store: &str, key: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r["store"] == store)
            .filter_map(|r| Some((r["hosts"].as_f64()?, r[key].as_f64()?)))
            .collect()
    };
    let stores: Vec<String> = {
        let mut s: Vec<String> = rows
            .iter()
            .filter_map(|r| r["store"].as_str().map(String::from))
            .collect();
        s.dedup();
        s
    };
    let mut ymax: f64 = 260.0;
    for r in &rows {
        for k in ["join_ms_p90", "removal_ms_p90"] {
            ymax = ymax.max(r[k].as_f64().unwrap_or(0.0));
        }
    }
    let xmax = rows.iter().filter_map(|r| r["hosts"].as_f64()).fold(50.0, f64::max) + 3.0;
    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "weft convergence versus lab size (median, bars to p90)",
            ("sans-serif", 24),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax * 1.1)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("hosts in the lab")
        .y_desc("ms")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    // Targets: ≤ 50 ms at 3 hosts, ≤ 250 ms at 50 hosts; flannel's 100–220 ms at 3 hosts.
    let red = RGBColor(200, 30, 30);
    chart
        .draw_series(LineSeries::new([(3.0, 50.0), (50.0, 250.0)], red.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label("target (≤ 50 ms at 3 hosts, ≤ 250 ms at 50)")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
    chart
        .draw_series([(3.0, 50.0), (50.0, 250.0)].map(|p| Cross::new(p, 7, red.stroke_width(2))))
        .map_err(|e| anyhow!("{e}"))?;
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(2.2, 100.0), (3.8, 220.0)],
            grey.mix(0.35).filled(),
        )))
        .map_err(|e| anyhow!("{e}"))?
        .label("flannel v0.20.2, new host reachable, 3 hosts (100–220 ms)")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], grey.mix(0.35).filled()));
    let series = [
        ("join_ms", "join: new host reachable by all", 1usize),
        ("removal_ms", "removal: lease gone from every host", 2),
    ];
    for (si, store) in stores.iter().enumerate() {
        for (key, label, ci) in series {
            let c = if si == 0 {
                COLORS[ci]
            } else {
                COLORS[(ci + 2) % COLORS.len()]
            };
            let med = pts(store, &format!("{key}_median"));
            let p90 = pts(store, &format!("{key}_p90"));
            chart
                .draw_series(LineSeries::new(med.clone(), c.stroke_width(3)))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{label} ({store})"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
            chart
                .draw_series(med.iter().map(|p| Circle::new(*p, 5, c.filled())))
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(
                    med.iter()
                        .zip(&p90)
                        .map(|(m, q)| PathElement::new([*m, (m.0, q.1)], c.stroke_width(2))),
                )
                .map_err(|e| anyhow!("{e}"))?;
            chart
                .draw_series(med.iter().map(|p| {
                    Text::new(
                        format!("{:.0}", p.1),
                        (p.0 + 0.6, p.1 + ymax * 0.01),
                        ("sans-serif", 14).into_font().color(&c),
                    )
                }))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
