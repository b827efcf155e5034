use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::GrayImage;

/// A small 8-bit rendering of an image for display (preview panes, grids).
#[derive(Clone, Debug, PartialEq)]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// A rectangle of source pixels, in pixel units (fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Crop {
    /// The whole image.
    pub fn full(img: &GrayImage) -> Self {
        Self {
            left: 0.0,
            top: 0.0,
            width: img.width as f64,
            height: img.height as f64,
        }
    }

    /// The largest centred square.
    pub fn center_square(img: &GrayImage) -> Self {
        let side = img.width.min(img.height) as f64;
        Self {
            left: (img.width as f64 - side) / 2.0,
            top: (img.height as f64 - side) / 2.0,
            width: side,
            height: side,
        }
    }
}

/// Resize (a crop of) a grayscale image with an antialiasing bilinear filter, keeping 16 bits.
pub fn resize_gray(img: &GrayImage, crop: Crop, width: u32, height: u32) -> GrayImage {
    let src_bytes: &[u8] = bytemuck::cast_slice(&img.pixels);
    let src = ImageRef::new(img.width, img.height, src_bytes, PixelType::U16)
        .expect("buffer length matches dimensions by GrayImage's invariant");
    let mut dst = Image::new(width.max(1), height.max(1), PixelType::U16);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(crop.left, crop.top, crop.width, crop.height);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("same pixel type and a crop inside the image");
    let pixels = dst
        .buffer()
        .chunks_exact(2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .collect();
    GrayImage {
        width: dst.width(),
        height: dst.height(),
        bit_depth: img.bit_depth,
        pixels,
    }
}

/// Fit the image into `max_side` x `max_side` (aspect kept, never enlarged), keeping 16 bits.
pub fn fit(img: &GrayImage, max_side: u32) -> GrayImage {
    let scale = (max_side as f64 / img.width.max(img.height) as f64).min(1.0);
    let w = ((img.width as f64 * scale).round() as u32).max(1);
    let h = ((img.height as f64 * scale).round() as u32).max(1);
    if (w, h) == (img.width, img.height) {
        img.clone()
    } else {
        resize_gray(img, Crop::full(img), w, h)
    }
}

/// Fit the image into `max_side` x `max_side` (aspect kept) and window it to 8 bits.
///
/// The window runs from the 0.5th to the 99.5th percentile of the thumbnail's own values, so a
/// 12-bit image in a 16-bit container or a dim scan is shown with full contrast.
pub fn thumbnail(img: &GrayImage, max_side: u32) -> Thumbnail {
    let small = fit(img, max_side);
    render(&small, Window::percentile(&small.pixels), false)
}

/// The image through a window, as 8 bits (inverted: white is black).
pub fn render(img: &GrayImage, window: Window, invert: bool) -> Thumbnail {
    let pixels = img
        .pixels
        .iter()
        .map(|&v| {
            let g = window.map(v);
            if invert { 255 - g } else { g }
        })
        .collect();
    Thumbnail {
        width: img.width,
        height: img.height,
        pixels,
    }
}

/// A display window over an image's samples: `lo` and below show black, `hi` and above white,
/// linear between (window/level: the width is `hi - lo`, the level its middle).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub lo: f32,
    pub hi: f32,
}

impl Window {
    /// From the 0.5th to the 99.5th percentile of the samples (what previews open with when
    /// the file names no window). One pass over a histogram: no sort of a full-size image.
    pub fn percentile(pixels: &[u16]) -> Self {
        if pixels.is_empty() {
            return Self { lo: 0.0, hi: 1.0 };
        }
        let mut counts = vec![0u32; 1 << 16];
        for &v in pixels {
            counts[v as usize] += 1;
        }
        // The k-th smallest value (0-based), as sorting would give it.
        let nth = |k: usize| -> f32 {
            let mut seen = 0usize;
            for (v, &c) in counts.iter().enumerate() {
                seen += c as usize;
                if seen > k {
                    return v as f32;
                }
            }
            u16::MAX as f32
        };
        let n = pixels.len();
        Self {
            lo: nth(n * 5 / 1000),
            hi: nth((n * 995 / 1000).min(n - 1)),
        }
    }

    /// The window a DICOM file names (Window Center and Width, in the same units as `lo`).
    pub fn from_center_width(center: f32, width: f32) -> Self {
        let half = width.max(1.0) / 2.0;
        Self {
            lo: center - half,
            hi: center + half,
        }
    }

    pub fn width(self) -> f32 {
        self.hi - self.lo
    }

    pub fn level(self) -> f32 {
        (self.lo + self.hi) / 2.0
    }

    /// The gray level of sample `v` (rounded; 0 below the window, 255 above it).
    pub fn map(self, v: u16) -> u8 {
        let range = (self.hi - self.lo).max(1.0);
        ((v as f32 - self.lo) / range * 255.0)
            .round()
            .clamp(0.0, 255.0) as u8
    }

    /// Wider (`factor` > 1) or narrower around the same level; never under 2 samples wide nor
    /// over twice the container (`max`).
    pub fn scaled(self, factor: f32, max: f32) -> Self {
        let width = (self.width() * factor).clamp(2.0, 2.0 * max.max(1.0));
        Self::from_center_width(self.level(), width)
    }

    /// The level moved by `by` samples, kept within the container (`0..=max`).
    pub fn shifted(self, by: f32, max: f32) -> Self {
        let level = (self.level() + by).clamp(0.0, max);
        Self::from_center_width(level, self.width())
    }
}

/// An image as a viewer shows it: samples linear in the file's values before any window
/// (DICOM: after the rescale, before the VOI window the model's input went through), the
/// file's own window, and what a sample means (for `W 400 L 40`).
#[derive(Clone, Debug, PartialEq)]
pub struct Film {
    pub image: GrayImage,
    /// The film's own window, in samples: DICOM's Window Center/Width, or the percentile
    /// window once [`Film::settled`] has fixed it; `None`: computed by [`Film::voi`].
    pub window: Option<Window>,
    /// The file's value of a sample: `offset + scale * sample` (DICOM's rescaled units);
    /// `None`: windows are shown as a percentage of the container's range.
    pub units: Option<(f64, f64)>,
}

impl Film {
    /// A film of an image whose samples are its values (PNG, JPEG, TIFF, BMP).
    pub fn plain(image: GrayImage) -> Self {
        Self {
            image,
            window: None,
            units: None,
        }
    }

    /// The same film fitted into `max_side` (windows and units still hold: resizing keeps
    /// the samples' scale).
    pub fn fitted(&self, max_side: u32) -> Self {
        Self {
            image: fit(&self.image, max_side),
            window: self.window,
            units: self.units,
        }
    }

    /// The file's own window: DICOM's, else the image's own range (0.5th to 99.5th
    /// percentile, what the previews have always opened with).
    pub fn voi(&self) -> Window {
        self.window
            .unwrap_or_else(|| Window::percentile(&self.image.pixels))
    }

    /// The film with its own window fixed: [`Film::voi`] is then free, not a pass over every
    /// pixel (a full-size film is millions; the UI asks on every frame).
    pub fn settled(mut self) -> Self {
        self.window = Some(self.voi());
        self
    }

    /// Largest sample of the container.
    pub fn max(&self) -> f32 {
        self.image.max_value() as f32
    }

    /// `W 400 L 40` in the file's units, else as a percentage of the container's range.
    pub fn describe(&self, w: Window) -> String {
        match self.units {
            Some((offset, scale)) => format!(
                "W {:.0} L {:.0}",
                w.width() as f64 * scale.abs(),
                offset + w.level() as f64 * scale
            ),
            None => format!(
                "W {:.0}% L {:.0}%",
                w.width() / self.max() * 100.0,
                w.level() / self.max() * 100.0
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-bit gradient: 0, 257, ..., 65535 across 256 columns.
    fn gradient() -> GrayImage {
        let pixels = (0..4u32)
            .flat_map(|_| (0..256u32).map(|x| (x * 257) as u16))
            .collect();
        GrayImage::new(256, 4, 16, pixels).unwrap()
    }

    #[test]
    fn the_percentile_window_is_what_sorting_gives() {
        let img = gradient();
        let mut sorted = img.pixels.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        let w = Window::percentile(&img.pixels);
        assert_eq!(w.lo, sorted[n * 5 / 1000] as f32);
        assert_eq!(w.hi, sorted[(n * 995 / 1000).min(n - 1)] as f32);
        // The thumbnail keeps exactly the mapping it always had.
        let t = thumbnail(&img, 256);
        let range = (w.hi - w.lo).max(1.0);
        for (i, &v) in img.pixels.iter().enumerate() {
            let old = ((v as f32 - w.lo) / range * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8;
            assert_eq!(t.pixels[i], old);
        }
    }

    #[test]
    fn a_window_maps_its_ends_to_black_and_white_and_clips_outside() {
        // W 1000 L 30000 on the gradient: below 29500 black, above 30500 white.
        let w = Window::from_center_width(30000.0, 1000.0);
        let t = render(&gradient(), w, false);
        for (x, &g) in t.pixels[..256].iter().enumerate() {
            let v = x as f32 * 257.0;
            if v <= 29500.0 {
                assert_eq!(g, 0, "x {x}");
            } else if v >= 30500.0 {
                assert_eq!(g, 255, "x {x}");
            } else {
                assert!(g > 0 && g < 255, "x {x}: {g}");
            }
        }
        // Inverted: every level turned over.
        let inv = render(&gradient(), w, true);
        assert!(t.pixels.iter().zip(&inv.pixels).all(|(a, b)| a + b == 255));
        // A narrower window is steeper around the same level; the level moves with `shifted`.
        let narrow = w.scaled(0.5, 65535.0);
        assert_eq!((narrow.level(), narrow.width()), (30000.0, 500.0));
        let up = w.shifted(1000.0, 65535.0);
        assert_eq!((up.level(), up.width()), (31000.0, 1000.0));
    }

    #[test]
    fn windows_stay_within_bounds() {
        let w = Window::from_center_width(100.0, 10.0);
        assert_eq!(w.scaled(1e-9, 255.0).width(), 2.0);
        assert_eq!(w.scaled(1e9, 255.0).width(), 510.0);
        assert_eq!(w.shifted(-1e9, 255.0).level(), 0.0);
        assert_eq!(w.shifted(1e9, 255.0).level(), 255.0);
        // A flat image still has a usable window.
        let flat = Window::percentile(&[7; 10]);
        assert_eq!(flat.map(7), 0);
        assert_eq!(Window::percentile(&[]).width(), 1.0);
    }

    #[test]
    fn a_settled_film_keeps_its_own_window() {
        let film = Film::plain(gradient());
        let own = film.voi();
        assert_eq!(film.clone().settled().window, Some(own));
        // A DICOM's window is kept as it is.
        let dicom = Film {
            window: Some(Window { lo: 10.0, hi: 20.0 }),
            ..film
        };
        assert_eq!(dicom.settled().window, Some(Window { lo: 10.0, hi: 20.0 }));
    }

    #[test]
    fn films_describe_windows_in_their_units_or_as_a_share_of_the_range() {
        let plain = Film::plain(GrayImage::new(1, 1, 8, vec![0]).unwrap());
        let w = Window {
            lo: 51.0,
            hi: 204.0,
        };
        assert_eq!(plain.describe(w), "W 60% L 50%");
        // value = -1024 + 0.5 * sample: samples 2000..2800 are values -24..376.
        let ct = Film {
            units: Some((-1024.0, 0.5)),
            ..plain.clone()
        };
        assert_eq!(
            ct.describe(Window {
                lo: 2000.0,
                hi: 2800.0
            }),
            "W 400 L 176"
        );
    }
}
