use std::fmt;
use std::io::{Cursor, Read};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::{Decoded, Film, GrayImage, ImageError};

/// Container formats recognised from their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Jpeg,
    Bmp,
    Tiff,
    Dicom,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Bmp => "BMP",
            Format::Tiff => "TIFF",
            Format::Dicom => "DICOM",
        })
    }
}

/// Bounds on what one file may cost to decode.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest file read, in bytes.
    pub max_bytes: u64,
    /// Largest `width * height` decoded.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // 512 MiB covers any real radiograph (a 4k x 5k 16-bit DICOM is 40 MB); 100 MP is
        // 10,000 x 10,000, far above any detector, and bounds a decode to < 1 GiB of RGBA16.
        Self {
            max_bytes: 512 << 20,
            max_pixels: 100_000_000,
        }
    }
}

/// Detect the format from the first bytes of a file (at least 132 bytes for DICOM): the
/// `DICM` marker after the preamble or at the start, or a bare implicit-VR data set.
pub fn sniff(head: &[u8]) -> Option<Format> {
    // First: a DICOM's 128-byte preamble may hold anything, a TIFF header included.
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        Some(Format::Dicom)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if head.starts_with(b"II*\0") || head.starts_with(b"MM\0*") {
        Some(Format::Tiff)
    } else if head.starts_with(b"DICM") || super::dicom::looks_like_bare_dataset(head) {
        Some(Format::Dicom)
    } else if head.starts_with(b"BM") && head.len() >= 14 {
        Some(Format::Bmp)
    } else {
        None
    }
}

/// Read and decode one file with the default [`Limits`].
pub fn load(path: &Path) -> Result<Decoded, ImageError> {
    load_with(path, &Limits::default())
}

/// Read and decode one file.
pub fn load_with(path: &Path, limits: &Limits) -> Result<Decoded, ImageError> {
    let (bytes, _) = read_file(path, limits)?;
    decode_bytes(&bytes, limits)
}

/// Read one file's bytes (bounded by `limits.max_bytes`), with the metadata taken before the
/// read. Directories, FIFOs, sockets and devices are refused without being opened.
pub fn read_file(path: &Path, limits: &Limits) -> Result<(Vec<u8>, std::fs::Metadata), ImageError> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(ImageError::IsDirectory);
    }
    if !meta.is_file() {
        return Err(ImageError::NotRegularFile);
    }
    if meta.len() > limits.max_bytes {
        return Err(ImageError::FileTooLarge {
            size: meta.len(),
            limit: limits.max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows (or is a FIFO) after the metadata call.
    std::fs::File::open(path)?
        .take(limits.max_bytes + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(ImageError::FileTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bytes,
        });
    }
    Ok((bytes, meta))
}

/// Decode an in-memory file. The format comes from the bytes, never from a name.
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<Decoded, ImageError> {
    decode_inner(bytes, limits, None)
}

/// Read and decode one file for a viewer: what [`load`] gives, and the [`Film`] to window
/// (a DICOM's values before its VOI window; any other image as decoded).
pub fn load_film(path: &Path) -> Result<(Decoded, Film), ImageError> {
    let limits = Limits::default();
    let (bytes, _) = read_file(path, &limits)?;
    decode_film(&bytes, &limits)
}

/// [`decode_bytes`] and the [`Film`] a viewer windows (see [`load_film`]).
pub fn decode_film(bytes: &[u8], limits: &Limits) -> Result<(Decoded, Film), ImageError> {
    let mut film = None;
    let decoded = decode_inner(bytes, limits, Some(&mut film))?;
    let film = film.unwrap_or_else(|| Film::plain(decoded.image.clone()));
    Ok((decoded, film))
}

fn decode_inner(
    bytes: &[u8],
    limits: &Limits,
    film: Option<&mut Option<Film>>,
) -> Result<Decoded, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    let format = sniff(bytes).ok_or_else(|| ImageError::UnknownFormat(hex_head(bytes)))?;
    let image_format = match format {
        Format::Png => ImageFormat::Png,
        Format::Jpeg => ImageFormat::Jpeg,
        Format::Bmp => ImageFormat::Bmp,
        Format::Tiff => ImageFormat::Tiff,
        Format::Dicom => {
            let decoded = super::guard::catch(|| super::dicom::decode(bytes, limits, film))
                .unwrap_or_else(|m| Err(ImageError::decode(format, panicked(&m))));
            let (image, info) = decoded?;
            return Ok(Decoded {
                image,
                format,
                dicom: Some(info),
            });
        }
    };
    // Decoders are third-party code fed hostile bytes: a panic in one becomes this file's error.
    let decoded = super::guard::catch(|| decode_raster(bytes, image_format, limits))
        .unwrap_or_else(|m| Err(RasterError::Panicked(m)));
    let dynamic = decoded.map_err(|e| match e {
        RasterError::Panicked(m) => ImageError::decode(format, panicked(&m)),
        RasterError::Pixels { width, height } => ImageError::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        },
        RasterError::Image(e) => ImageError::decode(format, e.to_string()),
    })?;
    Ok(Decoded {
        image: to_gray(dynamic)?,
        format,
        dicom: None,
    })
}

enum RasterError {
    Panicked(String),
    Pixels { width: u32, height: u32 },
    Image(image::ImageError),
}

fn decode_raster(
    bytes: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<DynamicImage, RasterError> {
    // A PNG says its size in the first chunk: refuse a huge one before the decoder reads on
    // (a header-only file would otherwise end as "unexpected end of file").
    if format == ImageFormat::Png && bytes.len() >= 24 && &bytes[12..16] == b"IHDR" {
        let width = u32::from_be_bytes(bytes[16..20].try_into().expect("4 bytes"));
        let height = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
        if width as u64 * height as u64 > limits.max_pixels {
            return Err(RasterError::Pixels { width, height });
        }
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    // RGBA16 is the widest buffer a decoder allocates: 8 bytes a pixel, plus slack.
    image_limits.max_alloc = Some(limits.max_pixels * 8 + (64 << 20));
    reader.limits(image_limits);
    let decoder = reader.into_decoder().map_err(RasterError::Image)?;
    let (width, height) = decoder.dimensions();
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(RasterError::Pixels { width, height });
    }
    DynamicImage::from_decoder(decoder).map_err(RasterError::Image)
}

/// Collapse any colour layout to one channel, keeping 16-bit sources at 16 bits.
fn to_gray(image: DynamicImage) -> Result<GrayImage, ImageError> {
    let (width, height) = (image.width(), image.height());
    let (bit_depth, pixels): (u8, Vec<u16>) = match image {
        DynamicImage::ImageLuma8(buf) => (8, buf.into_raw().into_iter().map(u16::from).collect()),
        DynamicImage::ImageLuma16(buf) => (16, buf.into_raw()),
        img @ (DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_)) => (
            8,
            img.to_luma8()
                .into_raw()
                .into_iter()
                .map(u16::from)
                .collect(),
        ),
        img => (16, img.to_luma16().into_raw()),
    };
    GrayImage::new(width, height, bit_depth, pixels)
}

fn hex_head(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error text for a decoder panic: one line, the decoder's own words kept.
fn panicked(message: &str) -> String {
    let first = message.lines().next().unwrap_or("");
    format!("decoder failed on this file ({first})")
}
