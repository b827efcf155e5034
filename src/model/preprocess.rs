//! The one preprocessing function: decoded image in, network input out.

use crate::imaging::{Crop, GrayImage, resize_gray};

use super::ModelError;
use super::manifest::{CropMode, InputSpec, Intensity};

/// Smallest side accepted for scoring; smaller images are not radiographs worth a guess.
pub const MIN_SIDE: u32 = 16;

/// Turn a decoded image into one `size * size` plane, mapped onto `spec.scale`.
/// Per-channel `mean`/`std` are applied by [`super::input_tensor`] when planes become a batch.
pub fn preprocess(img: &GrayImage, spec: &InputSpec) -> Result<Vec<f32>, ModelError> {
    preprocess_region(img, input_crop(img, spec), spec)
}

/// The region of the image the model sees (what a heatmap covers).
pub fn input_crop(img: &GrayImage, spec: &InputSpec) -> Crop {
    match spec.crop {
        CropMode::CenterSquare => Crop::center_square(img),
        CropMode::Stretch => Crop::full(img),
    }
}

/// [`preprocess`] on a chosen region of the image: training's random crops use this, so
/// training and inference share every step after the crop.
pub fn preprocess_region(
    img: &GrayImage,
    crop: Crop,
    spec: &InputSpec,
) -> Result<Vec<f32>, ModelError> {
    if img.width < MIN_SIDE || img.height < MIN_SIDE {
        return Err(ModelError::Input(format!(
            "image is {}x{} px, too small to score (minimum {MIN_SIDE} px a side)",
            img.width, img.height
        )));
    }
    let size = spec.size as u32;
    let small = resize_gray(img, crop, size, size);
    let unit = match spec.intensity {
        Intensity::Equalize => equalize(&small.pixels),
        Intensity::Raw => {
            let max = img.max_value() as f32;
            small.pixels.iter().map(|&v| v as f32 / max).collect()
        }
    };
    Ok(to_scale(unit, spec))
}

/// Map [0, 1] values linearly onto `spec.scale`.
pub fn to_scale(mut unit: Vec<f32>, spec: &InputSpec) -> Vec<f32> {
    let [lo, hi] = spec.scale;
    for v in &mut unit {
        *v = lo + *v * (hi - lo);
    }
    unit
}

/// Histogram equalisation to [0, 1]: each value becomes the mid-rank of its level.
pub fn equalize(values: &[u16]) -> Vec<f32> {
    let mut hist = vec![0u32; 65536];
    for &v in values {
        hist[v as usize] += 1;
    }
    let n = values.len() as f32;
    let mut below = 0u32;
    let mut level = vec![0f32; 65536];
    for (i, &count) in hist.iter().enumerate() {
        if count > 0 {
            level[i] = (below as f32 + count as f32 / 2.0) / n;
            below += count;
        }
    }
    values.iter().map(|&v| level[v as usize]).collect()
}
