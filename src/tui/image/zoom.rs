//! The full-screen zoom: the image printed with viuer (kitty, iTerm2, sixel, else
//! half-blocks) while the UI's input thread is paused.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use ratatui::crossterm::{cursor, execute, terminal};

use super::{ColorMode, fitted_cells};
use crate::imaging::Thumbnail;
use crate::tui::app::HeatView;
use crate::tui::workers::Pause;

/// Print the image full-screen with viuer (kitty, iTerm2, sixel, else half-blocks).
pub fn show(
    thumb: &Thumbnail,
    heat: Option<&HeatView>,
    colors: ColorMode,
    paused: &Pause,
) -> anyhow::Result<()> {
    let (cols, rows) = terminal::size().unwrap_or((80, 24));
    // viuer reads the terminal's answers to its protocol queries from stdin: stop ours first.
    paused.paused.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(300);
    while !paused.idle.load(Ordering::Acquire) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let mut out = std::io::stdout();
    execute!(out, terminal::Clear(terminal::ClearType::All))?;
    // With a heatmap (and colours), the overlay in colour; else the film in gray.
    let img = match heat {
        Some(h) if colors != ColorMode::None => Some(::image::DynamicImage::ImageRgb8(
            h.heatmap.overlay(thumb, &h.region),
        )),
        _ => ::image::GrayImage::from_raw(thumb.width, thumb.height, thumb.pixels.clone())
            .map(::image::DynamicImage::ImageLuma8),
    };
    let result = match img {
        Some(img) => {
            // viuer stretches to the width and height it is given: fit them first.
            let (w, h) = fitted_cells(thumb.width, thumb.height, cols, rows.saturating_sub(1));
            let config = viuer::Config {
                absolute_offset: true,
                x: (cols - w) / 2,
                y: 0,
                width: Some(w.max(1) as u32),
                height: Some(h.max(1) as u32),
                truecolor: colors == ColorMode::TrueColor,
                ..Default::default()
            };
            viuer::print(&img, &config)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => Err("bad thumbnail".into()),
    };
    execute!(out, cursor::MoveTo(0, rows.saturating_sub(1)))?;
    match result {
        Ok(()) => write!(out, "any key returns")?,
        Err(e) => write!(out, "cannot show the image: {e} · any key returns")?,
    }
    out.flush()?;
    paused.paused.store(false, Ordering::Release);
    Ok(())
}

/// Longest side of the zoomed image: what the terminal can show, capped.
pub fn side() -> u32 {
    let (cols, rows) = terminal::size().unwrap_or((80, 24));
    // Graphics protocols show more than one pixel per cell; 1024 px is plenty for any screen.
    (cols as u32 * 10).max(rows as u32 * 20).clamp(256, 1024)
}
