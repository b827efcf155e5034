//! Augmentation against source cues: the same film as another hospital might have sent it
//! (downscaled, re-compressed, cropped, rotated, blurred, exposed differently, partly erased).

use super::*;

/// Keep training images small in memory: shorter side at most 1.4x the input size.
pub(super) fn shrink(img: &GrayImage, size: usize) -> GrayImage {
    let short = img.width.min(img.height) as f64;
    let target = size as f64 * 1.4;
    if short <= target {
        return img.clone();
    }
    let s = target / short;
    let (w, h) = (
        (img.width as f64 * s).round() as u32,
        (img.height as f64 * s).round() as u32,
    );
    resize_gray(img, Crop::full(img), w.max(1), h.max(1))
}

/// One augmented training plane, randomising what differs between sources: a random
/// downscale (half the images: the longer side to 192-320 px, as heavily resized archives
/// are), JPEG re-compression (half the 8-bit images, quality 30-90), a random resized crop of
/// the preprocessing's region (any position, 55-100 % of its area, aspect 3:4-4:3: borders and
/// corner markers come and go), rotation +-10 degrees, blur (30 %, sigma 0.4-1.2 px), gamma
/// 0.7-1.4, contrast 0.8-1.2, noise, and up to two erased patches (30 %). Everything after the
/// crop is the inference preprocessing.
pub fn augment(
    img: &GrayImage,
    spec: &InputSpec,
    rng: &mut StdRng,
) -> Result<Vec<f32>, ModelError> {
    let small;
    let img = if rng.random_bool(0.5) && img.width.max(img.height) > 320 {
        let target = rng.random_range(192.0..=320.0) / img.width.max(img.height) as f64;
        let (w, h) = (
            (img.width as f64 * target).round().max(16.0) as u32,
            (img.height as f64 * target).round().max(16.0) as u32,
        );
        small = resize_gray(img, Crop::full(img), w, h);
        &small
    } else {
        img
    };
    let recompressed;
    let img = if img.bit_depth == 8 && rng.random_bool(0.5) {
        recompressed =
            jpeg_roundtrip(img, rng.random_range(30..=90)).unwrap_or_else(|| img.clone());
        &recompressed
    } else {
        img
    };
    let base = match spec.crop {
        CropMode::CenterSquare => Crop::center_square(img),
        CropMode::Stretch => Crop::full(img),
    };
    let area = rng.random_range(0.55..=1.0);
    let aspect: f64 = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
    let cw = (base.width * (area * aspect).sqrt()).min(img.width as f64);
    let ch = (base.height * (area / aspect).sqrt()).min(img.height as f64);
    let crop = Crop {
        left: rng.random_range(0.0..=(img.width as f64 - cw)),
        top: rng.random_range(0.0..=(img.height as f64 - ch)),
        width: cw,
        height: ch,
    };
    let plane = preprocess_region(
        img,
        crop,
        &InputSpec {
            scale: [0.0, 1.0],
            ..spec.clone()
        },
    )?;
    let size = spec.size;
    let mut plane = rotate(&plane, size, rng.random_range(-10.0f32..=10.0).to_radians());
    if rng.random_bool(0.3) {
        plane = blur(&plane, size, rng.random_range(0.4f32..=1.2));
    }
    let gamma = rng.random_range(0.7f32..=1.4);
    let contrast = rng.random_range(0.8f32..=1.2);
    let noise = rng.random_range(0.0f32..=0.03);
    let mut unit: Vec<f32> = plane
        .into_iter()
        .map(|v| {
            let v =
                ((v.clamp(0.0, 1.0).powf(gamma) - 0.5) * contrast + 0.5) + noise * gaussian(rng);
            v.clamp(0.0, 1.0)
        })
        .collect();
    if rng.random_bool(0.3) {
        for _ in 0..rng.random_range(1..=2) {
            let (w, h) = (
                rng.random_range(size / 20..=size / 6).max(1),
                rng.random_range(size / 20..=size / 6).max(1),
            );
            let (x0, y0) = (
                rng.random_range(0..=size - w),
                rng.random_range(0..=size - h),
            );
            let fill: f32 = rng.random();
            for y in y0..y0 + h {
                unit[y * size + x0..y * size + x0 + w].fill(fill);
            }
        }
    }
    Ok(to_scale(unit, spec))
}

/// Separable Gaussian blur of a square plane (edges clamped).
pub(super) fn blur(plane: &[f32], size: usize, sigma: f32) -> Vec<f32> {
    let r = (2.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..size {
            for x in 0..size {
                let mut acc = 0f32;
                for (j, k) in kernel.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal {
                        ((x as isize + d).clamp(0, size as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, size as isize - 1) as usize)
                    };
                    acc += src[sy * size + sx] * k;
                }
                out[y * size + x] = acc / total;
            }
        }
        out
    };
    pass(&pass(plane, true), false)
}

pub(super) fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

pub(super) fn jpeg_roundtrip(img: &GrayImage, quality: u8) -> Option<GrayImage> {
    let bytes: Vec<u8> = img.pixels.iter().map(|&v| v.min(255) as u8).collect();
    let buf = image::GrayImage::from_raw(img.width, img.height, bytes)?;
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&buf)
        .ok()?;
    imaging::decode_bytes(out.get_ref(), &imaging::Limits::default())
        .ok()
        .map(|d| d.image)
}

/// Rotate a square plane about its centre (bilinear, edges clamped).
pub(super) fn rotate(plane: &[f32], size: usize, angle: f32) -> Vec<f32> {
    let (s, c) = angle.sin_cos();
    let mid = (size as f32 - 1.0) / 2.0;
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, size as isize - 1) as usize;
        let y = y.clamp(0, size as isize - 1) as usize;
        plane[y * size + x]
    };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 - mid, y as f32 - mid);
            let (sx, sy) = (c * dx + s * dy + mid, -s * dx + c * dy + mid);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}
