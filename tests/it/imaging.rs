use std::io::Cursor;

use cxr_triage::imaging::{Format, ImageError, Limits, decode_bytes, load, thumbnail};
use cxr_triage::model::{CropMode, InputSpec, Intensity, preprocess};
use image::{DynamicImage, ImageFormat};

use crate::common::{pattern8, png_bytes};

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn decode(bytes: &[u8]) -> Result<cxr_triage::imaging::Decoded, ImageError> {
    decode_bytes(bytes, &Limits::default())
}

#[test]
fn lossless_formats_round_trip_exactly() {
    let gray = pattern8(37, 23);
    let dynamic = DynamicImage::ImageLuma8(gray.clone());
    for (format, expected) in [
        (ImageFormat::Png, Format::Png),
        (ImageFormat::Bmp, Format::Bmp),
        (ImageFormat::Tiff, Format::Tiff),
    ] {
        let d = decode(&encode(&dynamic, format)).unwrap();
        assert_eq!(d.format, expected);
        assert_eq!(
            (d.image.width, d.image.height, d.image.bit_depth),
            (37, 23, 8)
        );
        let expected_pixels: Vec<u16> = gray.as_raw().iter().map(|&v| v as u16).collect();
        assert_eq!(d.image.pixels, expected_pixels, "{format:?}");
    }
}

#[test]
fn colour_and_alpha_png_become_one_gray_channel() {
    let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 3, image::Rgb([90, 90, 90])));
    let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
        4,
        3,
        image::Rgba([200, 200, 200, 10]),
    ));
    assert!(
        decode(&encode(&rgb, ImageFormat::Png))
            .unwrap()
            .image
            .pixels
            .iter()
            .all(|&v| v == 90)
    );
    assert!(
        decode(&encode(&rgba, ImageFormat::Png))
            .unwrap()
            .image
            .pixels
            .iter()
            .all(|&v| v == 200)
    );
}

#[test]
fn sixteen_bit_png_keeps_precision_and_range() {
    // 12-bit values in a 16-bit container, as detectors write them.
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(64, 48, |x, y| {
        image::Luma([((x * 64 + y) % 4096) as u16])
    });
    let d = decode(&encode(
        &DynamicImage::ImageLuma16(img.clone()),
        ImageFormat::Png,
    ))
    .unwrap();
    assert_eq!(d.image.bit_depth, 16);
    assert_eq!(d.image.pixels, img.into_raw());
    assert!(d.image.pixels.iter().all(|&v| v < 4096));
    // Shown with full contrast, not nearly black.
    let thumb = thumbnail(&d.image, 32);
    assert!(
        *thumb.pixels.iter().max().unwrap() > 240,
        "thumbnail is windowed to the used range"
    );
}

#[test]
fn twelve_bit_image_gets_the_same_model_input_as_its_8_bit_version() {
    let gray = pattern8(80, 60);
    let wide = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(80, 60, |x, y| {
        image::Luma([gray.get_pixel(x, y)[0] as u16 * 16])
    });
    let spec = InputSpec {
        channels: 1,
        size: 32,
        crop: CropMode::CenterSquare,
        intensity: Intensity::Equalize,
        scale: [0.0, 1.0],
        mean: vec![0.5],
        std: vec![0.29],
    };
    let a = preprocess(&decode(&png_bytes(&gray)).unwrap().image, &spec).unwrap();
    let b = preprocess(
        &decode(&encode(&DynamicImage::ImageLuma16(wide), ImageFormat::Png))
            .unwrap()
            .image,
        &spec,
    )
    .unwrap();
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff < 0.02, "max difference {max_diff}");
}

#[test]
fn jpeg_gray_and_rgb_decode_close_to_source() {
    let gray = pattern8(64, 64);
    for img in [
        DynamicImage::ImageLuma8(gray.clone()),
        DynamicImage::ImageRgb8(DynamicImage::ImageLuma8(gray.clone()).to_rgb8()),
    ] {
        let d = decode(&encode(&img, ImageFormat::Jpeg)).unwrap();
        assert_eq!(d.format, Format::Jpeg);
        let mean_err: f64 = d
            .image
            .pixels
            .iter()
            .zip(gray.as_raw())
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / 4096.0;
        assert!(mean_err < 4.0, "mean abs error {mean_err}");
    }
}

#[test]
fn format_comes_from_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("really-a-png.jpg");
    std::fs::write(&path, png_bytes(&pattern8(8, 8))).unwrap();
    assert_eq!(load(&path).unwrap().format, Format::Png);
}

#[test]
fn bad_bytes_give_errors_not_panics() {
    let png = png_bytes(&pattern8(64, 64));
    let mut jpeg = encode(
        &DynamicImage::ImageLuma8(pattern8(64, 64)),
        ImageFormat::Jpeg,
    );
    jpeg.truncate(40);
    jpeg.extend(std::iter::repeat_n(0xAB, 500));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated png", png[..png.len() / 2].to_vec()),
        ("png signature only", png[..8].to_vec()),
        ("jpeg with garbage after the header", jpeg),
        ("text", b"hello, I am not an image\n".to_vec()),
        (
            "dicom",
            [vec![0u8; 128], b"DICM".to_vec(), vec![0; 64]].concat(),
        ),
    ];
    for (name, bytes) in cases {
        let err = decode(&bytes).expect_err(name);
        assert!(!err.to_string().is_empty(), "{name}");
    }
    assert!(matches!(decode(b"").unwrap_err(), ImageError::Empty));
    assert!(matches!(
        decode(b"plain text").unwrap_err(),
        ImageError::UnknownFormat(_)
    ));
}

#[test]
fn huge_declared_dimensions_are_refused_before_allocation() {
    // A valid PNG header claiming 50,000 x 50,000 pixels, followed by nothing.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend(50_000u32.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    let idat = [b"IDAT".as_slice(), &[0x78, 0x9c, 0, 0]].concat();
    png.extend(4u32.to_be_bytes());
    png.extend(&idat);
    png.extend(crc32(&idat).to_be_bytes());
    let err = decode(&png).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 50_000,
                height: 50_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn file_size_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.png");
    std::fs::write(&path, png_bytes(&pattern8(64, 64))).unwrap();
    let err = cxr_triage::imaging::load_with(
        &path,
        &Limits {
            max_bytes: 100,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::FileTooLarge { .. }), "{err}");
}

#[test]
fn directory_and_missing_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("y.jpg");
    std::fs::create_dir(&sub).unwrap();
    assert!(matches!(load(&sub).unwrap_err(), ImageError::IsDirectory));
    assert!(matches!(
        load(&dir.path().join("nope.png")).unwrap_err(),
        ImageError::Io(_)
    ));
}

#[test]
fn one_pixel_image_loads_but_is_refused_for_scoring() {
    let d = decode(&png_bytes(&pattern8(1, 1))).unwrap();
    assert_eq!((d.image.width, d.image.height), (1, 1));
    let spec = InputSpec {
        channels: 1,
        size: 32,
        crop: CropMode::CenterSquare,
        intensity: Intensity::Equalize,
        scale: [0.0, 1.0],
        mean: vec![0.5],
        std: vec![0.29],
    };
    let err = preprocess(&d.image, &spec).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    assert_eq!(thumbnail(&d.image, 16).pixels.len(), 1);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_with(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p);
        }
        encoder
            .write_header()
            .unwrap()
            .write_image_data(data)
            .unwrap();
    }
    out
}

#[test]
fn one_bit_and_palette_png_decode_to_gray() {
    // 1-bit: 8 pixels in one byte, 10110000 -> white, black, white, white, black...
    let bits = png_with(
        8,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::One,
        None,
        &[0b1011_0000],
    );
    let d = decode(&bits).unwrap();
    assert_eq!(d.image.pixels, [255, 0, 255, 255, 0, 0, 0, 0]);
    assert_eq!(d.image.bit_depth, 8);

    // Palette: index 0 dark gray, index 1 light gray.
    let palette = vec![20, 20, 20, 220, 220, 220];
    let indexed = png_with(
        4,
        1,
        png::ColorType::Indexed,
        png::BitDepth::Eight,
        Some(palette),
        &[0, 1, 1, 0],
    );
    assert_eq!(decode(&indexed).unwrap().image.pixels, [20, 220, 220, 20]);
}

#[test]
fn sixteen_bit_tiff_keeps_values() {
    let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(16, 8, |x, y| {
        image::Luma([(x * 1000 + y) as u16])
    });
    let d = decode(&encode(
        &DynamicImage::ImageLuma16(img.clone()),
        ImageFormat::Tiff,
    ))
    .unwrap();
    assert_eq!((d.format, d.image.bit_depth), (Format::Tiff, 16));
    assert_eq!(d.image.pixels, img.into_raw());
}
