//! The grayscale preview widget: an 8-bit thumbnail drawn into ratatui's buffer.
//!
//! Each terminal cell shows two pixels stacked (`▀` with the upper pixel as foreground and the
//! lower one as background). Cells are about twice as tall as wide, so a half-block pixel is
//! square and the image keeps its aspect ratio. Without colour (`NO_COLOR`) each cell gets a
//! character from a density ramp instead. Works over any SSH connection and inside tmux, and
//! draws into `TestBackend` like any other widget.
//!
//! With a heatmap (`H`), each pixel is blended with the heat's colour
//! ([`crate::model::heatmap::blend`]); without colour the ramp shows the heat instead of the
//! brightness, so the overlay still reads under `NO_COLOR`.

pub mod graphics;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

use crate::imaging::Thumbnail;
use crate::model::heatmap::blend;
use crate::tui::app::HeatView;

/// How the terminal can show shades of gray.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// 24-bit colour (`COLORTERM=truecolor` or `24bit`).
    TrueColor,
    /// The 256-colour palette's gray ramp.
    Ansi256,
    /// No colour at all (`NO_COLOR`): characters from a density ramp.
    None,
}

impl ColorMode {
    /// From the environment: `NO_COLOR` (any non-empty value) wins, then `COLORTERM`.
    pub fn detect() -> Self {
        Self::from_env(
            std::env::var_os("NO_COLOR").as_deref(),
            std::env::var_os("COLORTERM").as_deref(),
        )
    }

    pub fn from_env(
        no_color: Option<&std::ffi::OsStr>,
        colorterm: Option<&std::ffi::OsStr>,
    ) -> Self {
        if no_color.is_some_and(|v| !v.is_empty()) {
            return Self::None;
        }
        match colorterm.and_then(|v| v.to_str()) {
            Some("truecolor" | "24bit") => Self::TrueColor,
            _ => Self::Ansi256,
        }
    }

    /// The terminal colour for an RGB pixel (the 6x6x6 cube of the 256 colours).
    pub fn rgb(self, [r, g, b]: [u8; 3]) -> Color {
        match self {
            Self::TrueColor => Color::Rgb(r, g, b),
            Self::Ansi256 | Self::None => {
                let q = |v: u8| (v as u16 * 5 + 127) / 255;
                Color::Indexed((16 + 36 * q(r) + 6 * q(g) + q(b)) as u8)
            }
        }
    }

    /// The terminal colour for gray level `v`.
    pub fn gray(self, v: u8) -> Color {
        match self {
            Self::TrueColor => Color::Rgb(v, v, v),
            // 232..=255 are the grays 8, 18, ..., 238; 16 is black and 231 white.
            Self::Ansi256 | Self::None => {
                if v < 4 {
                    Color::Indexed(16)
                } else if v > 246 {
                    Color::Indexed(231)
                } else {
                    Color::Indexed(232 + ((v as u16).saturating_sub(3) / 10).min(23) as u8)
                }
            }
        }
    }
}

const RAMP: &[u8] = b" .:-=+*#%@";

/// A thumbnail fitted into the widget's area, centred, aspect kept.
pub struct GrayPicture<'a> {
    pub thumb: &'a Thumbnail,
    pub mode: ColorMode,
    /// A heatmap to lay over the picture.
    pub heat: Option<&'a HeatView>,
    /// Black on white (`i`).
    pub invert: bool,
}

/// The size in cells (columns, rows) a `w` x `h` image gets when fitted into `area`.
pub fn fitted_cells(w: u32, h: u32, cols: u16, rows: u16) -> (u16, u16) {
    if w == 0 || h == 0 || cols == 0 || rows == 0 {
        return (0, 0);
    }
    // Pixel grid: one pixel per column, two per row.
    let scale = (cols as f64 / w as f64).min(rows as f64 * 2.0 / h as f64);
    let pw = ((w as f64 * scale).round() as u16).clamp(1, cols);
    let ph = ((h as f64 * scale).round() as u16).clamp(1, rows * 2);
    (pw, ph.div_ceil(2))
}

impl Widget for GrayPicture<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let t = self.thumb;
        let (cols, rows) = fitted_cells(t.width, t.height, area.width, area.height);
        if cols == 0 || rows == 0 {
            return;
        }
        let (pw, ph) = (cols as u32, rows as u32 * 2);
        // Box-filter the thumbnail down to pw x ph pixels.
        let sample = |px: u32, py: u32| -> u8 {
            let x0 = px * t.width / pw;
            let x1 = ((px + 1) * t.width / pw).max(x0 + 1).min(t.width);
            let y0 = py * t.height / ph;
            let y1 = ((py + 1) * t.height / ph).max(y0 + 1).min(t.height);
            if y0 >= t.height {
                return 0;
            }
            let mut sum = 0u32;
            for y in y0..y1 {
                let row = &t.pixels[(y * t.width) as usize..][..t.width as usize];
                sum += row[x0 as usize..x1 as usize]
                    .iter()
                    .map(|&v| v as u32)
                    .sum::<u32>();
            }
            let v = (sum / ((x1 - x0) * (y1 - y0))) as u8;
            if self.invert { 255 - v } else { v }
        };
        let left = area.x + (area.width - cols) / 2;
        let top = area.y + (area.height - rows) / 2;
        // Heat in [0, 1] at a pixel of the pw x ph grid (`None` without a heatmap).
        let sampler = self.heat.map(|h| h.heatmap.heat_fn(h.region));
        let heat = |px: u32, py: u32| -> Option<f32> {
            let f = sampler.as_ref()?;
            Some(f(
                (px as f32 + 0.5) / pw as f32,
                (py as f32 + 0.5) / ph as f32,
            ))
        };
        for cy in 0..rows {
            for cx in 0..cols {
                let (px, py) = (cx as u32, cy as u32 * 2);
                let upper = sample(px, py);
                let lower = sample(px, py + 1);
                let cell = &mut buf[(left + cx, top + cy)];
                match (self.mode, heat(px, py), heat(px, py + 1)) {
                    (ColorMode::None, Some(a), Some(b)) => {
                        let v = ((a + b) / 2.0).clamp(0.0, 1.0);
                        let i = ((v * RAMP.len() as f32) as usize).min(RAMP.len() - 1);
                        cell.set_char(RAMP[i] as char);
                    }
                    (ColorMode::None, _, _) => {
                        let v = (upper as usize + lower as usize) / 2;
                        let c = RAMP[v * RAMP.len() / 256] as char;
                        cell.set_char(c);
                    }
                    (mode, Some(a), Some(b)) => {
                        cell.set_char('▀')
                            .set_fg(mode.rgb(blend(upper, a)))
                            .set_bg(mode.rgb(blend(lower, b)));
                    }
                    (mode, _, _) => {
                        cell.set_char('▀')
                            .set_fg(mode.gray(upper))
                            .set_bg(mode.gray(lower));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thumb(width: u32, height: u32, f: impl Fn(u32, u32) -> u8) -> Thumbnail {
        let pixels = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Thumbnail {
            width,
            height,
            pixels,
        }
    }

    #[test]
    fn a_square_image_fills_the_height_and_keeps_its_aspect() {
        // 40 columns x 10 rows = 40 x 20 pixels: a square image becomes 20 x 20 pixels.
        assert_eq!(fitted_cells(100, 100, 40, 10), (20, 10));
        // A wide image is limited by the width.
        assert_eq!(fitted_cells(200, 100, 10, 10), (10, 3));
        assert_eq!(fitted_cells(0, 100, 10, 10), (0, 0));
    }

    #[test]
    fn top_and_bottom_halves_carry_their_own_pixels() {
        // Upper half white, lower half black, drawn 4 columns x 1 row: each cell's foreground
        // (upper pixel) is white and background (lower pixel) black.
        let t = thumb(2, 2, |_, y| if y == 0 { 255 } else { 0 });
        let mut buf = Buffer::empty(Rect::new(0, 0, 2, 1));
        GrayPicture {
            thumb: &t,
            mode: ColorMode::TrueColor,
            heat: None,
            invert: false,
        }
        .render(buf.area, &mut buf);
        for x in 0..2 {
            let cell = &buf[(x, 0)];
            assert_eq!(cell.symbol(), "▀");
            assert_eq!(cell.fg, Color::Rgb(255, 255, 255));
            assert_eq!(cell.bg, Color::Rgb(0, 0, 0));
        }
    }

    #[test]
    fn without_colour_the_ramp_shows_brightness() {
        let t = thumb(2, 2, |x, _| if x == 0 { 0 } else { 255 });
        let mut buf = Buffer::empty(Rect::new(0, 0, 2, 1));
        GrayPicture {
            thumb: &t,
            mode: ColorMode::None,
            heat: None,
            invert: false,
        }
        .render(buf.area, &mut buf);
        assert_eq!(buf, Buffer::with_lines([" @"]));
    }

    #[test]
    fn gray_levels_map_onto_the_256_colour_ramp() {
        let m = ColorMode::Ansi256;
        assert_eq!(m.gray(0), Color::Indexed(16));
        assert_eq!(m.gray(255), Color::Indexed(231));
        assert_eq!(m.gray(8), Color::Indexed(232));
        assert_eq!(m.gray(238), Color::Indexed(255));
        assert_eq!(m.gray(128), Color::Indexed(244));
    }

    #[test]
    fn no_color_wins_over_colorterm() {
        use std::ffi::OsStr;
        assert_eq!(
            ColorMode::from_env(Some(OsStr::new("1")), Some(OsStr::new("truecolor"))),
            ColorMode::None
        );
        assert_eq!(
            ColorMode::from_env(Some(OsStr::new("")), Some(OsStr::new("truecolor"))),
            ColorMode::TrueColor
        );
        assert_eq!(ColorMode::from_env(None, None), ColorMode::Ansi256);
    }
}
