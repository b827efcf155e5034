//! Where the model looked: Grad-CAM (Selvaraju et al. 2017) on the last convolutional stage,
//! and the border-attention share computed from it.
//!
//! For a label `c`, the gradient of its logit with respect to the stage's map `A` (channels
//! `k`, positions `i, j`) is averaged over the positions into one weight per channel,
//! `alpha_k = mean_ij d y_c / d A_kij`, and the heatmap is `ReLU(sum_k alpha_k A_k)`: the
//! positions whose features push the label up. The gradient comes from candle's autograd
//! through whatever the network does after the stage ([`super::Net::from_stage`]), so a
//! network with a different head gets the right map without code of its own. For our
//! networks (global average pool, then one linear layer) `alpha_k` is the classifier's weight
//! over the number of positions, and Grad-CAM equals CAM (Zhou et al. 2016).
//!
//! Grad-CAM rather than Grad-CAM++: one backward pass and no higher-order terms; with a
//! pool-and-linear head the "++" weights only re-weigh positions by their share of the
//! positive gradient, which matters for several instances of an object in one image, not for
//! the question asked here (did the score come from the lungs or from a marker in a corner?).
//!
//! A heatmap is a hint, not a localisation: it has the stage's resolution (6x6 cells for a
//! 192 px input), it shows what raised the score, not where the disease is.

use candle_core::{Tensor, Var};

use crate::imaging::{Crop, Thumbnail};

/// One image's heatmap over the model's input (the region the preprocessing crop took),
/// `width x height` cells, row-major, each >= 0 (not normalised).
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
    /// The label it explains (an index into the model's labels).
    pub label: usize,
}

/// The outer band, as a fraction of each side, where burned-in markers and labels sit.
pub const BORDER: f32 = 0.10;

impl Heatmap {
    /// The largest value (0 for a map with nothing positive).
    pub fn max(&self) -> f32 {
        self.values.iter().copied().fold(0.0, f32::max)
    }

    /// The value at `(u, v)` in `[0, 1] x [0, 1]` of the input, bilinear between cell centres
    /// (the edge cells' values held out to the edges).
    pub fn sample(&self, u: f32, v: f32) -> f32 {
        if self.width == 0 || self.height == 0 {
            return 0.0;
        }
        let axis = |t: f32, n: usize| -> (usize, usize, f32) {
            let x = (t.clamp(0.0, 1.0) * n as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let i = (x.floor() as usize).min(n - 1);
            (i, (i + 1).min(n - 1), x - i as f32)
        };
        let (x0, x1, fx) = axis(u, self.width);
        let (y0, y1, fy) = axis(v, self.height);
        let at = |x: usize, y: usize| self.values[y * self.width + x];
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// The map resampled to `width x height` (bilinear), scaled to `[0, 1]` by its maximum;
    /// all zeros when nothing in the image raised the label.
    pub fn resample(&self, width: usize, height: usize) -> Vec<f32> {
        let heat = self.heat_fn(Region::WHOLE);
        let mut out = Vec::with_capacity(width * height);
        for y in 0..height {
            let v = (y as f32 + 0.5) / height as f32;
            for x in 0..width {
                out.push(heat((x as f32 + 0.5) / width as f32, v));
            }
        }
        out
    }

    /// Heat in `[0, 1]` (scaled by the map's maximum, found once) at `(fx, fy)`, fractions of
    /// the whole image whose `region` the model saw; 0 outside the region, and everywhere for a
    /// map with nothing positive. What every drawing of the map samples.
    pub fn heat_fn(&self, region: Region) -> impl Fn(f32, f32) -> f32 + '_ {
        let max = self.max();
        let scale = if max > 0.0 { 1.0 / max } else { 0.0 };
        move |fx, fy| {
            region
                .inside(fx, fy)
                .map_or(0.0, |(u, v)| self.sample(u, v) * scale)
        }
    }

    /// The share of the heatmap's mass in the outer [`BORDER`] band of the input (its four
    /// edges, corners included): near 0 for attention on the lungs, near 1 for attention on
    /// markers and borders; `None` when the map is all zero. A map spread evenly gives
    /// `1 - 0.8^2 = 0.36`. Measured on a 100 x 100 resampling of the map.
    pub fn border_share(&self) -> Option<f32> {
        const N: usize = 100;
        let band = (BORDER * N as f32).round() as usize;
        let grid = self.resample(N, N);
        let (mut all, mut edge) = (0f64, 0f64);
        for y in 0..N {
            for x in 0..N {
                let v = grid[y * N + x] as f64;
                all += v;
                if x < band || y < band || x >= N - band || y >= N - band {
                    edge += v;
                }
            }
        }
        (all > 0.0).then(|| (edge / all) as f32)
    }
}

/// Where the model's input sits in the image (the preprocessing crop), as fractions of the
/// image's width and height: a heatmap covers this region and nothing outside it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Region {
    pub left: f32,
    pub top: f32,
    pub width: f32,
    pub height: f32,
}

impl Region {
    pub const WHOLE: Region = Region {
        left: 0.0,
        top: 0.0,
        width: 1.0,
        height: 1.0,
    };

    /// A crop of a `width x height` image.
    pub fn of(crop: Crop, width: u32, height: u32) -> Self {
        let (w, h) = (width.max(1) as f64, height.max(1) as f64);
        Self {
            left: (crop.left / w) as f32,
            top: (crop.top / h) as f32,
            width: (crop.width / w) as f32,
            height: (crop.height / h) as f32,
        }
    }

    /// `(fx, fy)` (fractions of the image) as fractions of the region; `None` outside it.
    pub fn inside(&self, fx: f32, fy: f32) -> Option<(f32, f32)> {
        let u = (fx - self.left) / self.width;
        let v = (fy - self.top) / self.height;
        ((0.0..=1.0).contains(&u) && (0.0..=1.0).contains(&v)).then_some((u, v))
    }
}

/// A heatmap with the picture it explains: what `scan --heatmaps` writes.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlay {
    /// The image in gray (8-bit, windowed like the previews).
    pub picture: Thumbnail,
    /// Where the model's input sits in the picture.
    pub region: Region,
    pub heatmap: Heatmap,
}

impl Overlay {
    pub fn render(&self) -> image::RgbImage {
        self.heatmap.overlay(&self.picture, &self.region)
    }
}

/// The colour of a heat value in `[0, 1]`: dark blue, blue, green, yellow, red.
pub fn heat_rgb(v: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [48.0, 18.0, 59.0],
        [60.0, 120.0, 245.0],
        [30.0, 215.0, 130.0],
        [250.0, 200.0, 40.0],
        [210.0, 25.0, 20.0],
    ];
    let x = v.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |c: usize| (STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// A gray pixel with heat `v` (in `[0, 1]`) laid over it: cold areas stay gray, hot ones take
/// the colour of [`heat_rgb`] (at most 60 % opaque, so the film shows through).
pub fn blend(gray: u8, v: f32) -> [u8; 3] {
    let a = 0.6 * v.clamp(0.0, 1.0);
    let c = heat_rgb(v);
    let mix = |c: u8| (gray as f32 * (1.0 - a) + c as f32 * a).round() as u8;
    [mix(c[0]), mix(c[1]), mix(c[2])]
}

impl Heatmap {
    /// [`Heatmap::heat_fn`] at one point.
    pub fn heat_at(&self, region: &Region, fx: f32, fy: f32) -> f32 {
        self.heat_fn(*region)(fx, fy)
    }

    /// The picture in gray with the heatmap blended over it (an RGB image of the picture's
    /// size).
    pub fn overlay(&self, picture: &Thumbnail, region: &Region) -> image::RgbImage {
        let (w, h) = (picture.width.max(1), picture.height.max(1));
        let heat = self.heat_fn(*region);
        image::RgbImage::from_fn(picture.width, picture.height, |x, y| {
            let gray = picture.pixels[(y * picture.width + x) as usize];
            let v = heat((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
            image::Rgb(blend(gray, v))
        })
    }
}

/// Grad-CAM for a batch: `map` is the last stage's output `(n, channels, h, w)`, `logits` the
/// rest of the network from it (differentiable), `labels[i]` the label to explain for image
/// `i`. One backward pass serves the whole batch (the images do not interact at inference).
pub fn grad_cam(
    map: &Tensor,
    logits: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    labels: &[usize],
) -> candle_core::Result<Vec<Heatmap>> {
    let (n, _, h, w) = map.dims4()?;
    if labels.len() != n {
        candle_core::bail!("grad_cam: {} labels for {n} images", labels.len());
    }
    let var = Var::from_tensor(&map.detach())?;
    let out = logits(var.as_tensor())?;
    let (rows, classes) = out.dims2()?;
    if rows != n || labels.iter().any(|&l| l >= classes) {
        candle_core::bail!("grad_cam: a label outside the model's {classes} labels");
    }
    let mut pick = vec![0f32; n * classes];
    for (i, &l) in labels.iter().enumerate() {
        pick[i * classes + l] = 1.0;
    }
    let pick = Tensor::from_vec(pick, (n, classes), map.device())?;
    let grads = (out * pick)?.sum_all()?.backward()?;
    let Some(grad) = grads.get(var.as_tensor()) else {
        candle_core::bail!("grad_cam: the logits do not depend on the map");
    };
    let alpha = grad.mean_keepdim((2, 3))?;
    let cam = map.broadcast_mul(&alpha)?.sum(1)?.relu()?;
    let cam = cam.flatten_from(1)?.to_vec2::<f32>()?;
    Ok(cam
        .into_iter()
        .zip(labels)
        .map(|(values, &label)| Heatmap {
            width: w,
            height: h,
            values,
            label,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn map(width: usize, height: usize, values: Vec<f32>) -> Heatmap {
        Heatmap {
            width,
            height,
            values,
            label: 0,
        }
    }

    fn blob(width: usize, height: usize, cx: f32, cy: f32, r: f32) -> Heatmap {
        let values = (0..width * height)
            .map(|i| {
                let (x, y) = ((i % width) as f32 + 0.5, (i / width) as f32 + 0.5);
                let d2 = ((x - cx).powi(2) + (y - cy).powi(2)) / (r * r);
                (-d2).exp()
            })
            .collect();
        map(width, height, values)
    }

    #[test]
    fn border_share_is_near_zero_for_a_centred_blob_and_near_one_for_a_corner_blob() {
        let centre = blob(24, 24, 12.0, 12.0, 2.5).border_share().unwrap();
        assert!(centre < 0.02, "centre {centre}");
        let corner = blob(24, 24, 0.5, 23.5, 1.0).border_share().unwrap();
        assert!(corner > 0.95, "corner {corner}");
        // Spread evenly: the band's share of the area.
        let flat = map(6, 6, vec![1.0; 36]);
        assert!((flat.border_share().unwrap() - 0.36).abs() < 1e-4);
        let none = Heatmap {
            values: vec![0.0; 36],
            ..flat
        };
        assert_eq!(none.border_share(), None);
    }

    #[test]
    fn sampling_holds_the_edges_and_interpolates_between_centres() {
        let m = map(2, 1, vec![0.0, 1.0]);
        assert_eq!(m.sample(0.0, 0.5), 0.0);
        assert_eq!(m.sample(1.0, 0.5), 1.0);
        assert!((m.sample(0.5, 0.5) - 0.5).abs() < 1e-6);
        let one = map(1, 1, vec![2.0]);
        assert_eq!(one.resample(3, 1), vec![1.0; 3]);
        assert!(one.resample(0, 0).is_empty());
    }

    /// A small network whose label-1 logit depends only on a known patch of its input: its
    /// stage has one channel that sees the patch and one that sees the rest, its head pools
    /// them and weighs the first for label 1, the second for label 0. Each label's heatmap
    /// peaks on the part of the image its logit depends on, and is zero elsewhere.
    #[test]
    fn the_heatmap_peaks_where_the_output_depends_on_the_input() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (8usize, 8usize);
        let patch = |i: usize| (5..7).contains(&(i / w)) && (1..3).contains(&(i % w));
        // The input: positive noise everywhere.
        let image: Vec<f32> = (0..h * w)
            .map(|i| 0.5 + ((i * 7919) % 97) as f32 / 97.0)
            .collect();
        let inside: Vec<f32> = (0..h * w).map(|i| f32::from(patch(i))).collect();
        let x = Tensor::from_vec(image, (1, 1, h, w), &dev)?;
        let mask = Tensor::from_vec(inside, (1, 1, h, w), &dev)?;
        let stage = Tensor::cat(&[x.mul(&mask)?, x.mul(&mask.affine(-1.0, 1.0)?)?], 1)?;
        let head = candle_nn::Linear::new(Tensor::new(&[[0.0f32, 1.0], [3.0, 0.0]], &dev)?, None);
        let logits = |m: &Tensor| head.forward(&m.mean((2, 3))?);
        let peak = |m: &Heatmap| {
            m.values
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0
        };
        let on_patch = &grad_cam(&stage, logits, &[1])?[0];
        assert!(patch(peak(on_patch)), "peak at {}", peak(on_patch));
        for (i, &v) in on_patch.values.iter().enumerate() {
            assert_eq!(v > 0.0, patch(i), "cell {i}: {v}");
        }
        let elsewhere = &grad_cam(&stage, logits, &[0])?[0];
        assert!(!patch(peak(elsewhere)));
        assert!(
            (0..h * w)
                .filter(|&i| patch(i))
                .all(|i| elsewhere.values[i] == 0.0)
        );
        Ok(())
    }

    #[test]
    fn overlays_of_any_size_keep_the_picture_and_colour_the_hot_region() {
        let hot_left = map(2, 1, vec![1.0, 0.0]);
        for (w, h) in [(1, 1), (1, 7), (4096, 3), (3, 4096)] {
            let picture = Thumbnail {
                width: w,
                height: h,
                pixels: vec![100; (w * h) as usize],
            };
            let out = hot_left.overlay(&picture, &Region::WHOLE);
            assert_eq!(out.dimensions(), (w, h));
        }
        let picture = Thumbnail {
            width: 40,
            height: 10,
            pixels: vec![100; 400],
        };
        let out = hot_left.overlay(&picture, &Region::WHOLE);
        assert_eq!(out.get_pixel(39, 5).0, [100, 100, 100], "cold stays gray");
        assert_ne!(out.get_pixel(0, 5).0, [100, 100, 100], "hot is coloured");
        // A centre crop: outside it there is no heat at all.
        let crop = Region::of(
            Crop {
                left: 15.0,
                top: 0.0,
                width: 10.0,
                height: 10.0,
            },
            40,
            10,
        );
        let out = hot_left.overlay(&picture, &crop);
        assert_eq!(out.get_pixel(5, 5).0, [100, 100, 100]);
        assert_ne!(out.get_pixel(15, 5).0, [100, 100, 100]);
        assert_eq!(hot_left.heat_at(&crop, 0.1, 0.5), 0.0);
        assert!(hot_left.heat_at(&crop, 0.38, 0.5) > 0.9);
        assert_eq!(heat_rgb(-1.0), heat_rgb(0.0));
        assert_eq!(heat_rgb(2.0), [210, 25, 20]);
    }

    #[test]
    fn labels_must_fit_the_batch_and_the_model() {
        let dev = Device::Cpu;
        let map = Tensor::ones((2, 1, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let head = |m: &Tensor| m.mean((2, 3));
        assert!(grad_cam(&map, head, &[0]).is_err());
        assert!(grad_cam(&map, head, &[0, 1]).is_err());
        assert_eq!(grad_cam(&map, head, &[0, 0]).unwrap().len(), 2);
    }
}
