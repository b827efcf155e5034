//! Real pixels in the terminal: kitty, sixel and iTerm2 through `ratatui-image`, chosen at
//! start (a terminal query with a short timeout and `TERM`/`TERM_PROGRAM` hints, or forced by
//! `--image-protocol` / `CXR_TRIAGE_IMAGE_PROTOCOL`); our half-blocks everywhere else.
//!
//! A [`Shot`] is one picture for one place on screen: a film (or a crop of it) through a
//! window, sized to a number of cells. [`Graphics::take`] makes it, off the UI thread: the
//! 16-bit film resized to the cells' pixels, windowed to 8 bits, the heatmap laid over, then
//! padded to the whole area (so it covers whatever picture was there before) and encoded in
//! the terminal's protocol. The UI draws a finished shot as one widget; until it arrives the
//! half-block picture stands in.

use std::sync::Arc;

use ratatui::layout::Size;
use ratatui_image::picker::{Picker, ProtocolType, cap_parser::QueryStdioOptions};
use ratatui_image::protocol::Protocol;

use crate::imaging::{Crop, Film, Thumbnail, Window, render, resize_gray};
use crate::tui::app::HeatView;

/// Which way pictures reach the terminal (`--image-protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageProtocol {
    /// Ask the terminal (kitty, sixel, iTerm2 if it answers), else half-blocks.
    Auto,
    Kitty,
    Sixel,
    Iterm2,
    /// Two pixels a cell in colour: works in every terminal, tmux and SSH included.
    Halfblocks,
}

/// The environment variable that chooses the protocol when the flag does not.
pub const PROTOCOL_ENV: &str = "CXR_TRIAGE_IMAGE_PROTOCOL";

impl ImageProtocol {
    /// The flag, else the environment variable, else `auto`.
    pub fn resolve(flag: Option<Self>, env: Option<&std::ffi::OsStr>) -> Result<Self, String> {
        if let Some(p) = flag {
            return Ok(p);
        }
        let Some(value) = env.and_then(|v| v.to_str()).filter(|v| !v.is_empty()) else {
            return Ok(Self::Auto);
        };
        Self::from_name(value).ok_or_else(|| {
            format!("{PROTOCOL_ENV}={value}: expected auto, kitty, sixel, iterm2 or halfblocks")
        })
    }

    /// The command-line name (`auto`, `kitty`, `sixel`, `iterm2`, `halfblocks`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Kitty => "kitty",
            Self::Sixel => "sixel",
            Self::Iterm2 => "iterm2",
            Self::Halfblocks => "halfblocks",
        }
    }

    /// The protocol of a name, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Auto,
            Self::Kitty,
            Self::Sixel,
            Self::Iterm2,
            Self::Halfblocks,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name))
    }
}

/// The largest sixel picture, in pixels a side (xterm's default maxGraphicSize).
pub const SIXEL_MAX_PX: u32 = 1000;

/// Where a picture of `size` cells sits in `area`: centred (it may be smaller than its place).
pub fn centred(area: ratatui::layout::Rect, size: Size) -> ratatui::layout::Rect {
    let (w, h) = (size.width.min(area.width), size.height.min(area.height));
    ratatui::layout::Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// How pictures are drawn: our half-blocks, or a graphics protocol and the cell size in pixels
/// it needs.
#[derive(Clone, Debug)]
pub struct Graphics {
    picker: Option<Picker>,
}

impl Graphics {
    /// Half-blocks: no query, nothing sent to the terminal but text.
    pub fn halfblocks() -> Self {
        Self { picker: None }
    }

    /// A protocol with a known cell size, without asking the terminal (tests and `bench`).
    pub fn forced(protocol: ImageProtocol, font: (u16, u16)) -> Self {
        let kind = match protocol {
            ImageProtocol::Kitty => ProtocolType::Kitty,
            ImageProtocol::Sixel => ProtocolType::Sixel,
            ImageProtocol::Iterm2 => ProtocolType::Iterm2,
            ImageProtocol::Auto | ImageProtocol::Halfblocks => return Self::halfblocks(),
        };
        // The one constructor that takes a cell size (deprecated in favour of the query,
        // which a forced protocol in a test or a benchmark must not send).
        #[allow(deprecated)]
        let mut picker = Picker::from_fontsize(ratatui_image::FontSize::new(font.0, font.1));
        picker.set_protocol_type(kind);
        Self {
            picker: Some(picker),
        }
    }

    /// Ask the terminal what it can show (call before anything else reads stdin). `auto`
    /// keeps half-blocks when the terminal names no protocol or its cell size; a forced
    /// protocol still asks, for the cell size.
    pub fn detect(choice: ImageProtocol) -> Self {
        if choice == ImageProtocol::Halfblocks {
            return Self::halfblocks();
        }
        let options = QueryStdioOptions {
            timeout_ms: 500,
            ..QueryStdioOptions::default()
        };
        // The query turns raw mode on and, when the terminal does not answer in time, leaves
        // it on (ratatui-image 12.0.0-rc.3 returns before restoring): the terminal's modes
        // are saved here and put back whatever the query did.
        let saved = Termios::save();
        let picker = Picker::from_query_stdio_with_options(options);
        saved.restore();
        let Ok(mut picker) = picker else {
            return Self::halfblocks();
        };
        match choice {
            ImageProtocol::Kitty => picker.set_protocol_type(ProtocolType::Kitty),
            ImageProtocol::Sixel => picker.set_protocol_type(ProtocolType::Sixel),
            ImageProtocol::Iterm2 => picker.set_protocol_type(ProtocolType::Iterm2),
            ImageProtocol::Auto | ImageProtocol::Halfblocks => {}
        }
        if picker.protocol_type() == ProtocolType::Halfblocks {
            return Self::halfblocks();
        }
        // kitty before 0.28 answers the graphics query but has no Unicode placeholders, which
        // ratatui-image places its pictures with: every cell would show a missing glyph.
        if choice == ImageProtocol::Auto
            && picker.protocol_type() == ProtocolType::Kitty
            && !picker.tmux_detected()
            && terminal_version()
                .as_deref()
                .is_some_and(kitty_without_placeholders)
        {
            return Self::halfblocks();
        }
        Self {
            picker: Some(picker),
        }
    }

    /// Are pictures pixels over the cells (sixel, iTerm2) rather than placed in them (kitty)?
    pub fn overdrawn(&self) -> bool {
        matches!(
            self.picker.as_ref().map(|p| p.protocol_type()),
            Some(ProtocolType::Sixel | ProtocolType::Iterm2)
        )
    }

    /// The UI's view of it.
    pub fn screen(&self) -> crate::tui::app::Screen {
        crate::tui::app::Screen {
            graphics: self.is_graphics(),
            cell_px: self.cell_px(),
            overdrawn: self.overdrawn(),
            name: self.name(),
        }
    }

    /// Is a graphics protocol in use (else half-blocks)?
    pub fn is_graphics(&self) -> bool {
        self.picker.is_some()
    }

    /// The protocol's name, for the help.
    pub fn name(&self) -> &'static str {
        match self.picker.as_ref().map(|p| p.protocol_type()) {
            Some(ProtocolType::Kitty) => "kitty",
            Some(ProtocolType::Sixel) => "sixel",
            Some(ProtocolType::Iterm2) => "iTerm2",
            Some(ProtocolType::Halfblocks) | None => "half-blocks",
        }
    }

    /// Pixels of one cell: the font's for a protocol, one by two for half-blocks.
    pub fn cell_px(&self) -> (u32, u32) {
        match &self.picker {
            Some(p) => {
                let f = p.font_size();
                (f.width.max(1) as u32, f.height.max(1) as u32)
            }
            None => (1, 2),
        }
    }

    /// Make one shot (slow: resize, window, encode; never on the UI thread).
    pub fn take(&self, shot: &Shot) -> Result<Picture, String> {
        let (cw, ch) = self.cell_px();
        // xterm drops a sixel picture larger than its maxGraphicSize (1000 x 1000 by
        // default) whole: sixel pictures stay within it, centred in their place.
        let (mut cols, mut rows) = shot.cells;
        if self.picker.as_ref().map(|p| p.protocol_type()) == Some(ProtocolType::Sixel) {
            cols = cols.min((SIXEL_MAX_PX / cw) as u16);
            rows = rows.min((SIXEL_MAX_PX / ch) as u16);
        }
        let (tw, th) = (cols as u32 * cw, rows as u32 * ch);
        if tw == 0 || th == 0 {
            return Err("no room for the picture".into());
        }
        let (pw, ph) = fitted_px(shot.crop.width, shot.crop.height, tw, th);
        let small = resize_gray(&shot.film.image, shot.crop, pw, ph);
        let window = shot.window.unwrap_or_else(|| shot.film.voi());
        let thumb = render(&small, window, shot.invert);
        let Some(picker) = &self.picker else {
            return Ok(Picture::Cells(Arc::new(thumb)));
        };
        // The picture centred on black over the whole area: a new shot covers an old one.
        let mut canvas = image::RgbImage::new(tw, th);
        let picture = match &shot.heat {
            Some(h) => h.heatmap.overlay(&thumb, &h.region),
            None => gray_to_rgb(&thumb),
        };
        image::imageops::overlay(
            &mut canvas,
            &picture,
            ((tw - pw) / 2) as i64,
            ((th - ph) / 2) as i64,
        );
        let size = Size::new(cols, rows);
        picker
            .new_protocol(
                image::DynamicImage::ImageRgb8(canvas),
                size,
                ratatui_image::Resize::Fit(None),
            )
            .map(|p| Picture::Protocol(Arc::new(p)))
            .map_err(|e| e.to_string())
    }
}

/// The terminal's name and version (XTVERSION, e.g. `kitty(0.26.5)`), if it answers within
/// 300 ms. Asked with a status report after it, which every terminal answers, so a terminal
/// that ignores XTVERSION costs no wait.
fn terminal_version() -> Option<String> {
    use std::io::Write;
    let saved = Termios::save();
    let original = saved.0?;
    let mut raw = original;
    // SAFETY: cfmakeraw edits the copy; tcsetattr applies it to stdin, restored below.
    unsafe {
        libc::cfmakeraw(&mut raw);
        libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw);
    }
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x1b[>0q\x1b[5n").and_then(|_| out.flush());
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    let mut answer = Vec::new();
    // Until the status report's answer (`ESC [ 0 n`) or the deadline.
    while !answer.windows(4).any(|w| w == b"\x1b[0n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let mut fd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for stdin; read into a local buffer of its length.
        let ready = unsafe { libc::poll(&mut fd, 1, left.as_millis() as i32) };
        if ready <= 0 {
            break;
        }
        let mut buf = [0u8; 256];
        let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n as usize]);
    }
    saved.restore();
    let text = String::from_utf8_lossy(&answer);
    let start = text.find("\x1bP>|")? + 4;
    let end = text[start..].find('\x1b')? + start;
    Some(text[start..end].to_string())
}

/// Is this XTVERSION answer a kitty older than 0.28 (no Unicode placeholders)?
fn kitty_without_placeholders(version: &str) -> bool {
    let Some(v) = version
        .strip_prefix("kitty(")
        .and_then(|v| v.strip_suffix(')'))
    else {
        return false;
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) < (0, 28)
}

/// Standard input's terminal modes, to be put back.
struct Termios(Option<libc::termios>);

impl Termios {
    fn save() -> Self {
        // SAFETY: tcgetattr writes a termios for a valid descriptor; failure is reported and
        // leaves nothing to restore.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            Self((libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(t))
        }
    }

    fn restore(&self) {
        if let Some(t) = &self.0 {
            // SAFETY: the modes tcgetattr gave for the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

fn gray_to_rgb(t: &Thumbnail) -> image::RgbImage {
    let rgb = t.pixels.iter().flat_map(|&v| [v, v, v]).collect();
    image::RgbImage::from_raw(t.width, t.height, rgb).expect("3 bytes a pixel")
}

/// The largest `w` x `h` (aspect kept, at least 1 x 1) that fits a `tw` x `th` box.
pub fn fitted_px(w: f64, h: f64, tw: u32, th: u32) -> (u32, u32) {
    let scale = (tw as f64 / w.max(1e-9)).min(th as f64 / h.max(1e-9));
    (
        ((w * scale).round() as u32).clamp(1, tw.max(1)),
        ((h * scale).round() as u32).clamp(1, th.max(1)),
    )
}

/// One picture for one place on the screen.
#[derive(Clone, Debug, PartialEq)]
pub struct Shot {
    pub key: ShotKey,
    pub film: Arc<Film>,
    /// The part of the film shown (all of it but in a zoom).
    pub crop: Crop,
    /// Columns and rows it fills.
    pub cells: (u16, u16),
    /// The reader's window; `None`: the film's own.
    pub window: Option<Window>,
    pub invert: bool,
    pub heat: Option<Arc<HeatView>>,
}

impl Shot {
    pub fn new(
        item: usize,
        film: Arc<Film>,
        crop: Crop,
        cells: (u16, u16),
        window: Option<Window>,
        invert: bool,
        heat: Option<Arc<HeatView>>,
    ) -> Self {
        Self {
            key: ShotKey::new(item, cells, window, crop, invert, heat.is_some()),
            film,
            crop,
            cells,
            window,
            invert,
            heat,
        }
    }
}

/// What tells two shots apart: whose, where, how big, through which window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShotKey {
    pub item: usize,
    /// The zoom's picture, not the list's.
    pub zoom: bool,
    pub cells: (u16, u16),
    /// The window and the crop, as bits (floats are neither `Eq` nor `Hash`).
    pub view: [u32; 6],
    pub invert: bool,
    pub heat: bool,
}

impl ShotKey {
    pub fn new(
        item: usize,
        cells: (u16, u16),
        window: Option<Window>,
        crop: Crop,
        invert: bool,
        heat: bool,
    ) -> Self {
        let f = |v: f64| (v as f32).to_bits();
        let (lo, hi) = window.map_or((f32::NAN, f32::NAN), |w| (w.lo, w.hi));
        Self {
            item,
            zoom: false,
            cells,
            view: [
                lo.to_bits(),
                hi.to_bits(),
                f(crop.left),
                f(crop.top),
                f(crop.width),
                f(crop.height),
            ],
            invert,
            heat,
        }
    }
}

/// A finished shot.
#[derive(Clone)]
pub enum Picture {
    /// Pixels for half-blocks, exactly the cells' size (two a cell, stacked).
    Cells(Arc<Thumbnail>),
    /// Encoded for the terminal's protocol.
    Protocol(Arc<Protocol>),
}

impl std::fmt::Debug for Picture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cells(t) => write!(f, "Cells({}x{})", t.width, t.height),
            Self::Protocol(_) => f.write_str("Protocol"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn the_flag_wins_over_the_environment_and_auto_is_the_default() {
        let env = Some(OsStr::new("sixel"));
        assert_eq!(
            ImageProtocol::resolve(Some(ImageProtocol::Kitty), env),
            Ok(ImageProtocol::Kitty)
        );
        assert_eq!(ImageProtocol::resolve(None, env), Ok(ImageProtocol::Sixel));
        assert_eq!(
            ImageProtocol::resolve(None, Some(OsStr::new("HalfBlocks"))),
            Ok(ImageProtocol::Halfblocks)
        );
        assert_eq!(ImageProtocol::resolve(None, None), Ok(ImageProtocol::Auto));
        assert_eq!(
            ImageProtocol::resolve(None, Some(OsStr::new(""))),
            Ok(ImageProtocol::Auto)
        );
        let err = ImageProtocol::resolve(None, Some(OsStr::new("vt340"))).unwrap_err();
        assert!(err.contains("CXR_TRIAGE_IMAGE_PROTOCOL=vt340"), "{err}");
    }

    #[test]
    fn kitty_before_0_28_has_no_placeholders() {
        assert!(kitty_without_placeholders("kitty(0.26.5)"));
        assert!(!kitty_without_placeholders("kitty(0.28.0)"));
        assert!(!kitty_without_placeholders("kitty(0.35.2)"));
        assert!(!kitty_without_placeholders("WezTerm 20240203"));
        assert!(!kitty_without_placeholders("tmux 3.3a"));
    }

    #[test]
    fn pictures_fit_their_box_and_keep_their_shape() {
        assert_eq!(fitted_px(100.0, 50.0, 400, 400), (400, 200));
        assert_eq!(fitted_px(1.0, 1.0, 480, 500), (480, 480));
        assert_eq!(fitted_px(10_000.0, 10.0, 480, 500), (480, 1));
        assert_eq!(fitted_px(10.0, 10_000.0, 480, 500), (1, 500));
    }

    #[test]
    fn a_halfblock_shot_is_the_crop_windowed_at_two_pixels_a_cell() {
        use crate::imaging::GrayImage;
        let pixels = (0..64u32 * 64).map(|i| ((i % 64) * 1000) as u16).collect();
        let film = Arc::new(Film::plain(GrayImage::new(64, 64, 16, pixels).unwrap()));
        let crop = Crop::full(&film.image);
        let shot = Shot::new(0, film, crop, (20, 10), None, true, None);
        let Ok(Picture::Cells(t)) = Graphics::halfblocks().take(&shot) else {
            panic!("half-blocks make cells");
        };
        // 20 x 10 cells are 20 x 20 pixels; inverted: the bright right side is dark.
        assert_eq!((t.width, t.height), (20, 20));
        assert!(t.pixels[0] > t.pixels[19]);
    }
}
