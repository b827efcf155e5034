//! A 256-bit difference hash for finding near-duplicate images.
//!
//! The image is shrunk to 17 x 16 (whole frame, aspect ignored) and each bit says whether a
//! pixel is brighter than its right-hand neighbour: 16 comparisons per row, 16 rows. Re-encoding,
//! resizing, small crops and contrast or brightness changes move few bits; a different image
//! moves about half of them.

use super::{Crop, GrayImage, resize_gray};

/// The hash: 256 bits, row-major, first bit = top-left comparison.
pub type DHash = [u64; 4];

pub fn dhash(img: &GrayImage) -> DHash {
    let small = resize_gray(img, Crop::full(img), 17, 16);
    let mut bits = [0u64; 4];
    for y in 0..16usize {
        for x in 0..16usize {
            let left = small.pixels[y * 17 + x];
            let right = small.pixels[y * 17 + x + 1];
            if left > right {
                let n = y * 16 + x;
                bits[n / 64] |= 1 << (n % 64);
            }
        }
    }
    bits
}

/// Number of differing bits (0 = same picture at this scale, about 128 = unrelated).
pub fn hamming(a: &DHash, b: &DHash) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: u32, h: u32, f: impl Fn(u32, u32) -> u16) -> GrayImage {
        let pixels = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y));
        GrayImage::new(w, h, 16, pixels.collect()).unwrap()
    }

    fn scene(x: u32, y: u32, w: u32, h: u32) -> u16 {
        let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
        (((fx * 7.0).sin() * (fy * 5.0).cos() * 0.5 + 0.5) * 60000.0) as u16
    }

    #[test]
    fn a_resized_brighter_copy_stays_close_and_another_picture_does_not() {
        let a = picture(400, 500, |x, y| scene(x, y, 400, 500));
        let b = picture(200, 250, |x, y| scene(x, y, 200, 250) / 2 + 1000);
        let c = picture(400, 500, |x, y| scene(y, x, 500, 400));
        let (ha, hb, hc) = (dhash(&a), dhash(&b), dhash(&c));
        assert!(hamming(&ha, &hb) <= 12, "copy: {}", hamming(&ha, &hb));
        assert!(hamming(&ha, &hc) >= 50, "other: {}", hamming(&ha, &hc));
        assert_eq!(hamming(&ha, &ha), 0);
    }
}
