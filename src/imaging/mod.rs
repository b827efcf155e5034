//! The one decode path: file bytes in, one grayscale image type out.
//!
//! Everything that looks at pixels (thumbnails, inference, training, evaluation) goes through
//! [`load`]. The format is detected from the content (magic bytes), never from the extension,
//! and decoding is bounded by [`Limits`] so a decompression bomb or a 50,000 x 50,000 header is
//! an error rather than an out-of-memory kill.

mod decode;
pub mod dhash;
mod dicom;
mod dicom_check;
mod jpeg_extended;
mod jpegls;
pub mod guard;
mod thumb;

pub use dicom::{DicomInfo, DicomWrite, Phi, dicomdir_images, read_phi, rle_frame, write_dicom};

pub use decode::{
    Format, Limits, decode_bytes, decode_film, load, load_film, load_with, read_file, sniff,
};
pub use thumb::{Crop, Film, Thumbnail, Window, fit, render, resize_gray, thumbnail};

use thiserror::Error;

/// A decoded grayscale image that keeps up to 16 bits of precision.
///
/// `pixels` holds `width * height` samples in row-major order. Samples are the source values,
/// not rescaled: an 8-bit image has values in `0..=255`, a 16-bit one in `0..=65535` (and a
/// 12-bit image stored in 16 bits keeps its `0..=4095`).
#[derive(Clone, Debug, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    /// Bits per sample of the container: 8 or 16.
    pub bit_depth: u8,
    pub pixels: Vec<u16>,
}

impl GrayImage {
    /// Build an image, checking that the buffer matches the dimensions.
    pub fn new(
        width: u32,
        height: u32,
        bit_depth: u8,
        pixels: Vec<u16>,
    ) -> Result<Self, ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Invalid(format!(
                "zero-sized image ({width}x{height})"
            )));
        }
        if pixels.len() != width as usize * height as usize {
            return Err(ImageError::Invalid(format!(
                "pixel buffer has {} samples, expected {}x{}",
                pixels.len(),
                width,
                height
            )));
        }
        Ok(Self {
            width,
            height,
            bit_depth,
            pixels,
        })
    }

    /// Largest value the container can hold (255 or 65535).
    pub fn max_value(&self) -> u16 {
        if self.bit_depth <= 8 { 255 } else { u16::MAX }
    }
}

/// What was decoded from one file, with the facts the UI and `scan` show about it.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub image: GrayImage,
    pub format: Format,
    /// Metadata, for DICOM files.
    pub dicom: Option<DicomInfo>,
}

impl Decoded {
    /// One-line description, e.g. `1024x1024 PNG 8-bit` or `2048x2500 DICOM 12-bit DX PA`.
    pub fn describe(&self) -> String {
        let (w, h) = (self.image.width, self.image.height);
        match &self.dicom {
            None => format!("{w}x{h} {} {}-bit", self.format, self.image.bit_depth),
            Some(d) => {
                let mut s = format!("{w}x{h} DICOM {}-bit", d.bits_stored);
                for part in [&d.modality, &d.view_position].into_iter().flatten() {
                    s.push(' ');
                    s.push_str(part);
                }
                if d.frames > 1 {
                    s.push_str(&format!(" (frame 1 of {})", d.frames));
                }
                s
            }
        }
    }
}

/// Why a file could not be decoded. Every variant renders as one line for a per-file error row.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("is a directory")]
    IsDirectory,
    /// A FIFO, socket or device: reading it could block forever, so it is never opened.
    #[error("not a regular file (a FIFO, socket or device)")]
    NotRegularFile,
    #[error("empty file")]
    Empty,
    #[error("file is {size} bytes, over the {limit}-byte limit")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("image is {width}x{height}, over the limit of {limit} pixels")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("not a recognised image format (starts with {0})")]
    UnknownFormat(String),
    #[error("corrupt or unsupported {format}: {message}")]
    Decode { format: Format, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    /// A decoder's complaint about a file of a known format.
    /// Decoders' messages can span lines or end in one: folded to a single line here, because
    /// every error is one row of a table.
    pub(crate) fn decode(format: Format, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self::Decode {
            format,
            message: message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_messages_become_one_line() {
        let e = ImageError::decode(Format::Jpeg, "not enough bytes\n\n  at offset 3\n");
        assert_eq!(
            e.to_string(),
            "corrupt or unsupported JPEG: not enough bytes; at offset 3"
        );
    }
}
