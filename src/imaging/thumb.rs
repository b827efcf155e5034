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

/// Fit the image into `max_side` x `max_side` (aspect kept) and window it to 8 bits.
///
/// The window runs from the 0.5th to the 99.5th percentile of the thumbnail's own values, so a
/// 12-bit image in a 16-bit container or a dim scan is shown with full contrast.
pub fn thumbnail(img: &GrayImage, max_side: u32) -> Thumbnail {
    let scale = (max_side as f64 / img.width.max(img.height) as f64).min(1.0);
    let w = ((img.width as f64 * scale).round() as u32).max(1);
    let h = ((img.height as f64 * scale).round() as u32).max(1);
    let small = if (w, h) == (img.width, img.height) {
        img.clone()
    } else {
        resize_gray(img, Crop::full(img), w, h)
    };
    let mut sorted = small.pixels.clone();
    sorted.sort_unstable();
    let lo = sorted[sorted.len() * 5 / 1000] as f32;
    let hi = sorted[(sorted.len() * 995 / 1000).min(sorted.len() - 1)] as f32;
    let range = (hi - lo).max(1.0);
    let pixels = small
        .pixels
        .iter()
        .map(|&v| ((v as f32 - lo) / range * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    Thumbnail {
        width: w,
        height: h,
        pixels,
    }
}
