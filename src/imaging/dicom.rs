//! DICOM decoding with dicom-rs (pure-Rust codecs only), in the standard's pixel order:
//! modality LUT (rescale), VOI (first window, else the VOI LUT table, else min-max without
//! padding), MONOCHROME1
//! inverted so bone is always bright. Output is 16-bit gray.

use std::io::Cursor;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, VoiLutOption};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
#[allow(deprecated)]
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};

use super::dicom_check::{EXPLICIT_LE, Enc, IMPLICIT_LE, ImplicitInstead};

use super::{Film, Format, GrayImage, ImageError, Limits, Window};

/// What the user sees about a DICOM file (and what decides whether it is in scope).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DicomInfo {
    pub modality: Option<String>,
    pub view_position: Option<String>,
    pub body_part: Option<String>,
    pub bits_stored: u16,
    pub photometric: String,
    pub study_date: Option<String>,
    /// Protected health information: shown and exported only with `--show-phi`, never kept
    /// in the results store (see [`DicomInfo::without_phi`]).
    pub patient_id: Option<String>,
    pub frames: u32,
    pub transfer_syntax: String,
    /// What a PACS worklist links on. The accession number is PHI, like the patient ID.
    #[serde(default)]
    pub accession_number: Option<String>,
    #[serde(default)]
    pub study_uid: Option<String>,
    #[serde(default)]
    pub series_uid: Option<String>,
    #[serde(default)]
    pub sop_uid: Option<String>,
}

/// The protected health information of one file, as read from its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Phi {
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
}

impl DicomInfo {
    /// This info without its PHI (what the results store keeps).
    pub fn without_phi(&self) -> Self {
        let mut info = self.clone();
        info.set_phi(Phi::default());
        info
    }

    /// Make `phi` this info's PHI, replacing what it had (the one place that knows which
    /// fields are PHI, with [`DicomInfo::phi`]).
    pub fn set_phi(&mut self, phi: Phi) {
        let Phi {
            patient_id,
            accession_number,
        } = phi;
        self.patient_id = patient_id;
        self.accession_number = accession_number;
    }

    pub fn phi(&self) -> Phi {
        Phi {
            patient_id: self.patient_id.clone(),
            accession_number: self.accession_number.clone(),
        }
    }

    /// Why this image is not a frontal chest radiograph the model was made for, if it is not.
    pub fn out_of_scope(&self) -> Option<String> {
        if let Some(view) = &self.view_position
            && matches!(
                view.as_str(),
                "LATERAL" | "LL" | "RL" | "LAT" | "LLD" | "RLD"
            )
        {
            return Some(format!(
                "lateral view ({view}); the model reads frontal views only"
            ));
        }
        match self.modality.as_deref() {
            Some("CR" | "DX" | "DR") | None => None,
            Some(m) => Some(format!("modality {m}, not a radiograph (CR/DX/DR)")),
        }
    }
}

fn fail(message: impl Into<String>) -> ImageError {
    ImageError::decode(Format::Dicom, message)
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = obj.element_opt(tag).ok()??;
    let value = element.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_string())
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.element_opt(tag).ok()??.to_int::<i64>().ok()
}

fn float(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    obj.element_opt(tag)
        .ok()??
        .to_multi_float64()
        .ok()?
        .first()
        .copied()
}

/// Parse the bytes: with the 128-byte preamble (whatever the preamble holds: dual-personality
/// files carry a TIFF header there), with the `DICM` marker at offset 0, with the meta group
/// but neither preamble nor marker, or a bare data set (implicit VR little endian as old
/// scanners write them, or explicit VR in either byte order).
fn parse(bytes: &[u8], limits: &Limits) -> Result<DefaultDicomObject, ImageError> {
    let with_meta = |bytes: &[u8]| {
        OpenFileOptions::new()
            .read_preamble(ReadPreamble::Never)
            .from_reader(Cursor::new(bytes))
            .map_err(|e| fail(format!("cannot parse: {e}")))
    };
    let checked = |bytes: &[u8], bare: Option<Enc>| {
        super::dicom_check::check(bytes, bare, limits.max_bytes)
            .map_err(|e| fail(format!("cannot parse: {e}")))
    };
    // A file with a meta group: `marked` starts at its `DICM`.
    let with_marker = |marked: &[u8]| {
        let check = checked(marked, None)?;
        let marked = check.apply(marked);
        match check.implicit {
            None => with_meta(&marked),
            // Implicit VR although the meta group says explicit: read the data set as implicit
            // and keep the declared syntax for the pixel data.
            Some(ImplicitInstead { at, syntax }) => {
                #[allow(deprecated)]
                let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
                bare_dataset(&marked[at..], &ts, &syntax)
            }
        }
    };
    if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        return with_marker(&bytes[128..]);
    }
    if bytes.starts_with(b"DICM") {
        return with_marker(bytes);
    }
    let enc = bare_encoding(bytes).unwrap_or(IMPLICIT_LE);
    if enc == EXPLICIT_LE && bytes.starts_with(&[0x02, 0x00]) {
        // The meta group without its marker: give it one (one copy of the file).
        let mut marked = b"DICM".to_vec();
        marked.extend_from_slice(bytes);
        return with_marker(&marked);
    }
    let bytes = &checked(bytes, Some(enc))?.apply(bytes);
    #[allow(deprecated)]
    let ts = match (enc.explicit, enc.big) {
        (false, _) => IMPLICIT_VR_LITTLE_ENDIAN.erased(),
        (true, false) => EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        (true, true) => EXPLICIT_VR_BIG_ENDIAN.erased(),
    };
    bare_dataset(bytes, &ts, ts.uid())
}

/// Read a data set without meta group in `ts` and give it one that names `meta_syntax`.
fn bare_dataset(
    bytes: &[u8],
    ts: &dicom_encoding::TransferSyntax,
    meta_syntax: &str,
) -> Result<DefaultDicomObject, ImageError> {
    let obj = InMemDicomObject::read_dataset_with_ts(Cursor::new(bytes), ts).map_err(|e| {
        fail(format!(
            "cannot parse as a bare data set ({}): {e}",
            ts.name()
        ))
    })?;
    let sop_class =
        text(&obj, tags::SOP_CLASS_UID).unwrap_or_else(|| "1.2.840.10008.5.1.4.1.1.1".into());
    let sop_instance = text(&obj, tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.0".into());
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(meta_syntax)
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(sop_instance),
    )
    .map_err(|e| fail(format!("cannot parse: {e}")))
}

/// The encoding of a data set that starts at byte 0 without preamble or marker, told from its
/// first element: a tag in group 0002 or 0008 (either byte order), then two VR letters
/// (explicit) or a small length (implicit). `None`: not a data set.
fn bare_encoding(head: &[u8]) -> Option<Enc> {
    if head.len() < 8 {
        return None;
    }
    let vr = head[4].is_ascii_uppercase() && head[5].is_ascii_uppercase();
    let le = u16::from_le_bytes([head[0], head[1]]);
    let be = u16::from_be_bytes([head[0], head[1]]);
    if vr && matches!(le, 0x0002 | 0x0008) {
        return Some(EXPLICIT_LE);
    }
    if vr && be == 0x0008 {
        return Some(Enc {
            explicit: true,
            big: true,
        });
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    (matches!(le, 0x0002 | 0x0008) && len < 1024).then_some(IMPLICIT_LE)
}

/// The PHI in a DICOM file's header, read again when it is to be shown (the results store
/// never keeps it). Empty for a file that is not (or no longer) a readable DICOM.
pub fn read_phi(path: &std::path::Path, limits: &Limits) -> Phi {
    let Ok((bytes, _)) = super::decode::read_file(path, limits) else {
        return Phi::default();
    };
    match parse(&bytes, limits) {
        Ok(obj) => Phi {
            patient_id: text(&obj, tags::PATIENT_ID),
            accession_number: text(&obj, tags::ACCESSION_NUMBER),
        },
        Err(_) => Phi::default(),
    }
}

/// The image files a DICOMDIR (the index of a CD/DVD export, PS3.10) lists: each IMAGE
/// record's Referenced File ID, relative to the DICOMDIR's folder, in the records' order. A
/// record whose file ID is not a plain relative path (`..`, an absolute path, an empty part) is
/// an error: a hostile index must not point the walk outside its own folder.
pub fn dicomdir_images(
    path: &std::path::Path,
    limits: &Limits,
) -> Result<Vec<Result<std::path::PathBuf, String>>, ImageError> {
    let (bytes, _) = super::decode::read_file(path, limits)?;
    let obj = parse(&bytes, limits)?;
    let records = image_records(&obj)
        .ok_or_else(|| fail("not a DICOMDIR: no Directory Record Sequence (0004,1220)"))?;
    let images = records
        .map(|record| {
            let parts = record
                .element_opt(tags::REFERENCED_FILE_ID)
                .ok()
                .flatten()
                .and_then(|e| e.to_multi_str().ok().map(|p| p.into_owned()))
                .unwrap_or_default();
            let parts: Vec<&str> = parts
                .iter()
                .map(|p| p.trim_end_matches([' ', '\0']))
                .collect();
            let plain = |p: &&str| {
                !p.is_empty() && *p != "." && *p != ".." && !p.contains(['/', '\\', ':'])
            };
            if parts.is_empty() {
                Err("an IMAGE record of the DICOMDIR has no Referenced File ID".to_string())
            } else if parts.iter().all(plain) {
                Ok(parts.iter().collect())
            } else {
                Err(format!(
                    "the DICOMDIR lists a file outside its folder ({})",
                    parts.join("\\")
                ))
            }
        })
        .collect();
    Ok(images)
}

/// A DICOMDIR's IMAGE records; `None` for an object without a Directory Record Sequence.
fn image_records(obj: &InMemDicomObject) -> Option<impl Iterator<Item = &InMemDicomObject>> {
    let records = obj
        .element_opt(tags::DIRECTORY_RECORD_SEQUENCE)
        .ok()??
        .items()
        .unwrap_or(&[]);
    Some(
        records
            .iter()
            .filter(|r| text(r, tags::DIRECTORY_RECORD_TYPE).as_deref() == Some("IMAGE")),
    )
}

/// The JPEG 2000 decoder sizes its buffers from the codestream's own SIZ marker, not from Rows
/// and Columns: check that it agrees with them (and so with the pixel limit) and that its tile
/// count is sane, before decoding.
fn check_j2k_size(
    obj: &DefaultDicomObject,
    rows: i64,
    cols: i64,
    limits: &Limits,
) -> Result<(), String> {
    use dicom_core::value::Value;
    let element = obj
        .element(tags::PIXEL_DATA)
        .map_err(|_| "no Pixel Data".to_string())?;
    let Value::PixelSequence(seq) = element.value() else {
        return Err("JPEG 2000 pixel data is not encapsulated".into());
    };
    let first = seq.fragments().first().ok_or("no JPEG 2000 fragment")?;
    // A raw codestream starts with SOC + SIZ; a JP2 file carries one a little later.
    let head = &first[..first.len().min(4096)];
    let at = head
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .ok_or("no JPEG 2000 size header (SIZ) in the first fragment")?;
    let siz = first
        .get(at + 4..at + 4 + 38)
        .ok_or("truncated JPEG 2000 size header")?;
    let u32_at = |i: usize| u32::from_be_bytes([siz[i], siz[i + 1], siz[i + 2], siz[i + 3]]) as u64;
    let (x, y, xo, yo) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16));
    let (xt, yt, xto, yto) = (u32_at(20), u32_at(24), u32_at(28), u32_at(32));
    let components = u16::from_be_bytes([siz[36], siz[37]]) as u64;
    let (w, h) = (x.saturating_sub(xo), y.saturating_sub(yo));
    if w * h > limits.max_pixels || w * h == 0 {
        return Err(format!("JPEG 2000 stream declares {w}x{h} pixels"));
    }
    if (w, h) != (cols as u64, rows as u64) {
        return Err(format!(
            "JPEG 2000 stream is {w}x{h} but Rows/Columns say {cols}x{rows}"
        ));
    }
    if components == 0 || components > 4 {
        return Err(format!("JPEG 2000 stream has {components} components"));
    }
    if xt == 0 || yt == 0 || xto > xo || yto > yo {
        return Err("JPEG 2000 stream has an invalid tile grid".into());
    }
    let tiles = (x - xto).div_ceil(xt) * (y - yto).div_ceil(yt);
    if tiles > 65_535 {
        return Err(format!("JPEG 2000 stream declares {tiles} tiles"));
    }
    Ok(())
}

/// Does this look like a DICOM data set without preamble and marker (see [`parse`])?
pub fn looks_like_bare_dataset(head: &[u8]) -> bool {
    bare_encoding(head).is_some()
}

/// Decode the first frame and read the metadata. With `film`, monochrome images also give what
/// a viewer shows: the rescaled values before the VOI window (the model's input went through
/// it), with the file's own window; other images leave `film` empty (their output is already all
/// there is).
///
/// Long on purpose: one checklist over the data set's attributes in the order a reader meets them;
/// each step needs the ones before.
pub fn decode(
    bytes: &[u8],
    limits: &Limits,
    film: Option<&mut Option<Film>>,
) -> Result<(GrayImage, DicomInfo), ImageError> {
    let obj = parse(bytes, limits)?;
    let ts_uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let ts_name = TransferSyntaxRegistry.get(&ts_uid).map_or_else(
        || format!("unknown transfer syntax {ts_uid}"),
        |ts| format!("{} ({ts_uid})", ts.name()),
    );
    let info = DicomInfo {
        modality: text(&obj, tags::MODALITY),
        view_position: text(&obj, tags::VIEW_POSITION).map(|v| v.to_ascii_uppercase()),
        body_part: text(&obj, tags::BODY_PART_EXAMINED),
        bits_stored: int(&obj, tags::BITS_STORED).unwrap_or(0) as u16,
        photometric: text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default(),
        study_date: text(&obj, tags::STUDY_DATE),
        patient_id: text(&obj, tags::PATIENT_ID),
        frames: int(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as u32,
        transfer_syntax: ts_name.clone(),
        accession_number: text(&obj, tags::ACCESSION_NUMBER),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID),
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID),
        sop_uid: text(&obj, tags::SOP_INSTANCE_UID),
    };

    // Float Pixel Data (OF) or Double Float Pixel Data (OD): parametric maps, processed images.
    let float_data = [tags::FLOAT_PIXEL_DATA, tags::DOUBLE_FLOAT_PIXEL_DATA]
        .into_iter()
        .find(|&tag| obj.element_opt(tag).ok().flatten().is_some());
    // A structured report, an RT plan, a waveform, a DICOMDIR: a valid object, but no image.
    if float_data.is_none() && obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        let sop = text(&obj, tags::SOP_CLASS_UID)
            .or_else(|| {
                Some(
                    obj.meta()
                        .media_storage_sop_class_uid()
                        .trim_end_matches('\0')
                        .to_string(),
                )
            })
            .filter(|s| !s.is_empty());
        let name = sop.as_deref().map(|uid| {
            use dicom_core::dictionary::UidDictionary;
            dicom_dictionary_std::StandardSopClassDictionary
                .by_uid(uid)
                .map_or_else(|| format!("SOP class {uid}"), |e| e.name.to_string())
        });
        let name = match image_records(&obj) {
            Some(images) => format!(
                "a DICOMDIR of {} images: they are files of their own; scan the DICOMDIR itself \
                 to list just them",
                images.count()
            ),
            None => name.unwrap_or_else(|| "no SOP class".into()),
        };
        return Err(ImageError::Invalid(format!(
            "no image in this DICOM ({name})"
        )));
    }
    // Check what the decoder would trust, so hostile headers give errors, not panics or OOM.
    let rows = int(&obj, tags::ROWS).ok_or_else(|| fail("missing Rows (0028,0010)"))?;
    let cols = int(&obj, tags::COLUMNS).ok_or_else(|| fail("missing Columns (0028,0011)"))?;
    if rows <= 0 || cols <= 0 {
        return Err(fail(format!("image is {cols}x{rows}")));
    }
    if (rows * cols) as u64 > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width: cols as u32,
            height: rows as u32,
            limit: limits.max_pixels,
        });
    }
    let allocated = int(&obj, tags::BITS_ALLOCATED).unwrap_or(0);
    let double = float_data == Some(tags::DOUBLE_FLOAT_PIXEL_DATA) && allocated == 64;
    if !(matches!(allocated, 1 | 8 | 16 | 32) || double) {
        return Err(fail(format!(
            "Bits Allocated {allocated} (supported: 1, 8, 16, 32; 64 for double float data)"
        )));
    }
    // Float pixel data has no Bits Stored.
    if float_data.is_none() && !(1..=allocated).contains(&(info.bits_stored as i64)) {
        return Err(fail(format!(
            "Bits Stored {} with Bits Allocated {allocated}",
            info.bits_stored
        )));
    }
    let samples = int(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let colour = match (samples, info.photometric.as_str()) {
        (1, "MONOCHROME1" | "MONOCHROME2") => false,
        (1, "PALETTE COLOR")
        | (3, "RGB" | "YBR_FULL" | "YBR_FULL_422" | "YBR_RCT" | "YBR_ICT" | "YBR_PARTIAL_420") => {
            true
        }
        _ => {
            return Err(fail(format!(
                "photometric interpretation {} with {samples} samples per pixel (supported: \
                 MONOCHROME1, MONOCHROME2; colour as luminance: RGB, YBR_FULL, YBR_FULL_422, \
                 YBR_RCT, YBR_ICT, PALETTE COLOR)",
                info.photometric
            )));
        }
    };

    if ts_uid.starts_with("1.2.840.10008.1.2.4.9") || ts_uid.starts_with("1.2.840.10008.1.2.4.20") {
        check_j2k_size(&obj, rows, cols, limits).map_err(|e| fail(format!("{ts_name}: {e}")))?;
    }
    let n = (rows * cols) as usize;
    // Bits Allocated 1 (segmentations, overlays as images) and 32 (RT dose, integer data):
    // dicom-pixeldata reads neither, so native and 32-bit RLE data is unpacked here, rescale
    // applied.
    // Native YBR_FULL_422 stores Y Y Cb Cr for each pair of pixels (2 bytes a pixel), which
    // dicom-pixeldata sizes as 3: its luminance is every Y.
    if colour && info.photometric == "YBR_FULL_422" && allocated == 8 {
        use dicom_core::value::{PrimitiveValue, Value};
        if let Ok(element) = obj.element(tags::PIXEL_DATA)
            && let Value::Primitive(PrimitiveValue::U8(bytes)) = element.value()
            && bytes.len() >= n * 2
            && n.is_multiple_of(2)
        {
            let out = bytes[..n * 2]
                .chunks_exact(4)
                .flat_map(|c| [c[0], c[1]])
                .map(|y| y as u16 * 257)
                .collect();
            return Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info));
        }
    }
    // RGB in JPEG Baseline with neither a JFIF nor an Adobe marker: the components are R, G
    // and B as the Photometric Interpretation says (jpeg-decoder would take them for YCbCr).
    if colour
        && info.photometric == "RGB"
        && ts_uid == "1.2.840.10008.1.2.4.50"
        && let Some(out) = jpeg_rgb_untransformed(&obj, rows, cols, limits)
    {
        let out = out.map_err(|e| fail(format!("{ts_name}: {e}")))?;
        return Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info));
    }
    // 32-bit colour in RLE (dicom-pixeldata's RLE decoder stops at 16 bits).
    if colour && allocated == 32 && ts_uid == "1.2.840.10008.1.2.5" {
        let out = rle_colour(&obj, n, info.bits_stored, &info.photometric)
            .map_err(|e| fail(format!("{ts_name}: {e}")))?;
        return Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info));
    }
    let packing = Packing::of(&ts_uid, rows as u32, cols as u32);
    // Colour JPEG-LS: our decoder (dicom-pixeldata reads JPEG-LS only through CharLS).
    if colour && matches!(packing, Packing::JpegLs { .. }) {
        let out = jpegls_colour(
            &obj,
            (cols as u32, rows as u32),
            info.bits_stored,
            &info.photometric,
        )
        .map_err(|e| fail(format!("{ts_name}: {e}")))?;
        return Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info));
    }
    let (pixels, values) = if let Some(tag) = float_data {
        if colour {
            return Err(fail(format!(
                "float pixel data in {} (read: monochrome)",
                info.photometric
            )));
        }
        let values = float_samples(&obj, tag, n).map_err(|e| fail(format!("{ts_name}: {e}")))?;
        (None, values)
    } else if (matches!(allocated, 1 | 32) || packing.ours()) && !colour {
        let values = stored_samples(&obj, n, allocated, info.bits_stored, packing)
            .map_err(|e| fail(format!("{ts_name}: {e}")))?;
        (None, values)
    } else {
        // Only the first frame: a multi-frame file of small compressed fragments would
        // otherwise be decoded whole, frames x rows x columns, whatever the file's size.
        let pixels = obj
            .decode_pixel_data_frame(0)
            .map_err(|e| fail(format!("{ts_name}: {e}")))?;
        if colour {
            let (values, max) =
                luminance(&obj, &pixels, n).map_err(|e| fail(format!("{ts_name}: {e}")))?;
            let out = values
                .iter()
                .map(|&v| ((v as f64 / max).clamp(0.0, 1.0) * 65535.0).round() as u16)
                .collect();
            return Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info));
        }
        let options = ConvertOptions::new()
            .with_modality_lut(ModalityLutOption::Default)
            .with_voi_lut(VoiLutOption::Identity);
        // f32 holds every rescaled 16-bit value exactly (integer slopes) at half f64's memory.
        let values: Vec<f32> = pixels
            .to_vec_frame_with_options(0, &options)
            .map_err(|e| fail(format!("{ts_name}: {e}")))?;
        (Some(pixels), values)
    };
    if values.len() != n {
        return Err(fail(format!(
            "pixel data has {} samples for {cols}x{rows}",
            values.len()
        )));
    }

    // Pixel Padding Value is a stored value: compare it after the same rescale.
    let slope = float(&obj, tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = float(&obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let padding = int(&obj, tags::PIXEL_PADDING_VALUE).map(|p| p as f64 * slope + intercept);
    let is_padding = |v: f64| padding.is_some_and(|p| (v - p).abs() < 1e-6);

    let window = match (
        float(&obj, tags::WINDOW_CENTER),
        float(&obj, tags::WINDOW_WIDTH),
    ) {
        (Some(c), Some(w)) if w >= 1.0 => {
            Some((c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0))
        }
        _ => None,
    };
    // VOI: the first window; else the first VOI LUT table; else min-max without padding.
    let table = match window {
        Some(_) => None,
        None => pixels
            .as_ref()
            .and_then(|p| p.voi_lut_sequence().ok().flatten())
            .and_then(|luts| luts.first())
            .filter(|lut| !lut.data.is_empty() && (1..=16).contains(&lut.bits_stored))
            .map(|lut| {
                (
                    lut.min_pixel_value as f64,
                    &lut.data,
                    ((1u32 << lut.bits_stored) - 1) as f64,
                )
            }),
    };
    let (lo, hi) = window.unwrap_or_else(|| {
        values
            .iter()
            .map(|&v| v as f64)
            .filter(|&v| v.is_finite() && !is_padding(v))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    });
    let range = hi - lo;
    let voi = |v: f64| -> f64 {
        match table {
            Some((first, data, max)) => {
                let i = (v.round() - first).clamp(0.0, (data.len() - 1) as f64) as usize;
                (data[i] as f64 / max).clamp(0.0, 1.0)
            }
            None if range > 0.0 => ((v - lo) / range).clamp(0.0, 1.0),
            None => 0.0,
        }
    };
    let invert = info.photometric == "MONOCHROME1";
    let out: Vec<u16> = values
        .iter()
        .map(|&v| {
            let v = v as f64;
            if is_padding(v) || !v.is_finite() {
                return 0;
            }
            let unit = voi(v);
            let unit = if invert { 1.0 - unit } else { unit };
            (unit * 65535.0).round() as u16
        })
        .collect();
    if let Some(film) = film {
        *film = Some(film_of(&values, &is_padding, window, invert, cols, rows)?);
    }
    Ok((GrayImage::new(cols as u32, rows as u32, 16, out)?, info))
}

/// The viewer's film: the rescaled values spread linearly over 16 bits (padding black,
/// MONOCHROME1 turned so bone is bright), the file's window in the same samples.
fn film_of(
    values: &[f32],
    is_padding: &dyn Fn(f64) -> bool,
    window: Option<(f64, f64)>,
    invert: bool,
    cols: i64,
    rows: i64,
) -> Result<Film, ImageError> {
    let kept = || {
        values
            .iter()
            .map(|&v| v as f64)
            .filter(|&v| v.is_finite() && !is_padding(v))
    };
    let lo = kept().fold(f64::INFINITY, f64::min);
    let hi = kept().fold(f64::NEG_INFINITY, f64::max);
    let (lo, span) = if lo.is_finite() && hi > lo {
        (lo, hi - lo)
    } else {
        (0.0, 1.0)
    };
    let sample = |v: f64| -> f64 {
        let s = (v - lo) / span * 65535.0;
        if invert { 65535.0 - s } else { s }
    };
    let pixels = values
        .iter()
        .map(|&v| {
            let v = v as f64;
            if is_padding(v) || !v.is_finite() {
                0
            } else {
                sample(v).round().clamp(0.0, 65535.0) as u16
            }
        })
        .collect();
    let window = window.map(|(a, b)| {
        let (a, b) = (sample(a) as f32, sample(b) as f32);
        Window {
            lo: a.min(b),
            hi: a.max(b),
        }
    });
    // value = offset + scale * sample, the inverse of `sample`.
    let units = if invert {
        (lo + span, -span / 65535.0)
    } else {
        (lo, span / 65535.0)
    };
    Ok(Film {
        image: GrayImage::new(cols as u32, rows as u32, 16, pixels)?,
        window,
        units: Some(units),
    })
}

/// The first frame of Float (OF) or Double Float (OD) Pixel Data, as stored: the standard
/// gives it no rescale (a real-world value map says what the numbers mean). NaN and infinities
/// are kept and shown black, as padding is.
fn float_samples(obj: &DefaultDicomObject, tag: Tag, n: usize) -> Result<Vec<f32>, String> {
    use dicom_core::value::{DicomValueType, PrimitiveValue, Value};
    let element = obj.element(tag).map_err(|e| e.to_string())?;
    let values: Vec<f32> = match element.value() {
        Value::Primitive(PrimitiveValue::F32(v)) => v.iter().take(n).copied().collect(),
        Value::Primitive(PrimitiveValue::F64(v)) => v.iter().take(n).map(|&x| x as f32).collect(),
        // Bytes (an implicit VR file whose reader did not know the tag): little endian floats.
        Value::Primitive(PrimitiveValue::U8(b)) if tag == tags::FLOAT_PIXEL_DATA => b
            .chunks_exact(4)
            .take(n)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => return Err(format!("float pixel data as {:?}", other.value_type())),
    };
    if values.len() < n {
        return Err(format!(
            "float pixel data has {} values for {n} pixels",
            values.len()
        ));
    }
    Ok(values)
}

/// How the pixel data that [`stored_samples`] reads is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// Uncompressed, in the transfer syntax's byte order.
    Native { big_endian: bool },
    /// RLE Lossless (our reader: dicom-pixeldata's stops at 16 bits).
    Rle,
    /// JPEG-LS lossless or near-lossless: our decoder (dicom-pixeldata reads it only through
    /// CharLS, a C++ library).
    JpegLs { rows: u32, cols: u32 },
    /// JPEG Extended (8 or 12 bits), one component: our decoder (jpeg-decoder refuses 12 bits).
    JpegExtended { rows: u32, cols: u32 },
    /// Another compressed syntax: dicom-pixeldata's.
    Other,
}

impl Packing {
    fn of(ts_uid: &str, rows: u32, cols: u32) -> Self {
        match ts_uid {
            "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.1.99" => {
                Packing::Native { big_endian: false }
            }
            "1.2.840.10008.1.2.2" => Packing::Native { big_endian: true },
            "1.2.840.10008.1.2.5" => Packing::Rle,
            "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Packing::JpegLs { rows, cols },
            "1.2.840.10008.1.2.4.51" => Packing::JpegExtended { rows, cols },
            _ => Packing::Other,
        }
    }

    /// A compressed syntax whose monochrome frames [`stored_samples`] decodes.
    fn ours(self) -> bool {
        matches!(self, Packing::JpegLs { .. } | Packing::JpegExtended { .. })
    }
}

/// The first frame's samples of monochrome pixel data that dicom-pixeldata does not read, after
/// the rescale: native 1- or 32-bit data (1-bit is packed little-endian bit first; 32-bit
/// values follow the pixel representation and the byte order of the transfer syntax), 32-bit
/// RLE, and JPEG-LS and JPEG Extended of any depth.
fn stored_samples(
    obj: &DefaultDicomObject,
    n: usize,
    allocated: i64,
    stored: u16,
    packing: Packing,
) -> Result<Vec<f32>, String> {
    use dicom_core::value::{DicomValueType, PrimitiveValue, Value};
    let element = obj.element(tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    let signed = int(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let slope = float(obj, tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = float(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    let rescale = |v: f64| (v * slope + intercept) as f32;
    let big_endian = packing == Packing::Native { big_endian: true };
    let value = match (element.value(), packing) {
        (Value::Primitive(value), _) => value,
        // RLE Lossless: dicom-pixeldata's decoder stops at 16 bits.
        (Value::PixelSequence(seq), Packing::Rle) if allocated == 32 => {
            let words = rle_samples(seq.fragments(), n, 1)?;
            return Ok(bits_stored_values(&words, stored, signed, rescale));
        }
        (
            Value::PixelSequence(seq),
            Packing::JpegLs { rows, cols } | Packing::JpegExtended { rows, cols },
        ) => {
            let codec = if matches!(packing, Packing::JpegLs { .. }) {
                "JPEG-LS"
            } else {
                "JPEG"
            };
            let frame =
                first_frame(obj, seq.fragments()).ok_or_else(|| format!("no {codec} fragment"))?;
            let (samples, width, height) = if matches!(packing, Packing::JpegLs { .. }) {
                let f = super::jpegls::decode(&frame, cols, rows)?;
                if f.components != 1 {
                    return Err(format!(
                        "JPEG-LS stream of {} components for one sample per pixel",
                        f.components
                    ));
                }
                (f.samples, f.width, f.height)
            } else {
                let gray = super::jpeg_extended::decode(&frame, n as u64)?;
                (gray.samples, gray.width, gray.height)
            };
            if (width, height) != (cols, rows) || samples.len() < n {
                return Err(format!(
                    "{codec} stream is {width}x{height}, Rows/Columns say {cols}x{rows}"
                ));
            }
            let words: Vec<u32> = samples[..n].iter().map(|&v| v as u32).collect();
            return Ok(bits_stored_values(&words, stored, signed, rescale));
        }
        _ => {
            return Err(format!(
                "compressed data with Bits Allocated {allocated} (read: native, and RLE for 32 \
                 bits)"
            ));
        }
    };
    Ok(if allocated == 1 {
        let bytes: Vec<u8> = match value {
            PrimitiveValue::U8(b) => b.to_vec(),
            PrimitiveValue::U16(w) => w.iter().flat_map(|w| w.to_le_bytes()).collect(),
            other => return Err(format!("1-bit pixel data as {:?}", other.value_type())),
        };
        if bytes.len() * 8 < n {
            return Err(format!(
                "1-bit pixel data has {} bytes for {n} pixels",
                bytes.len()
            ));
        }
        (0..n)
            .map(|i| rescale(((bytes[i / 8] >> (i % 8)) & 1) as f64))
            .collect()
    } else {
        let words: Vec<u32> = match value {
            PrimitiveValue::U32(v) => v.to_vec(),
            PrimitiveValue::I32(v) => v.iter().map(|&x| x as u32).collect(),
            PrimitiveValue::U8(b) => b
                .chunks_exact(4)
                .map(|c| {
                    let c = [c[0], c[1], c[2], c[3]];
                    if big_endian {
                        u32::from_be_bytes(c)
                    } else {
                        u32::from_le_bytes(c)
                    }
                })
                .collect(),
            // Read as 16-bit words (OW) in the file's byte order: pair them back up.
            PrimitiveValue::U16(w) => w
                .chunks_exact(2)
                .map(|c| {
                    let (hi, lo) = if big_endian {
                        (c[0], c[1])
                    } else {
                        (c[1], c[0])
                    };
                    ((hi as u32) << 16) | lo as u32
                })
                .collect(),
            other => return Err(format!("32-bit pixel data as {:?}", other.value_type())),
        };
        if words.len() < n {
            return Err(format!(
                "pixel data has {} samples for {n} pixels",
                words.len()
            ));
        }
        bits_stored_values(&words[..n], stored, signed, rescale)
    })
}

/// 32-bit words to values: Bits Stored kept (sign-extended when signed), then the rescale.
fn bits_stored_values(
    words: &[u32],
    stored: u16,
    signed: bool,
    rescale: impl Fn(f64) -> f32,
) -> Vec<f32> {
    let shift = 32 - stored.clamp(1, 32) as u32;
    words
        .iter()
        .map(|&w| {
            let w = w << shift;
            rescale(if signed {
                ((w as i32) >> shift) as f64
            } else {
                (w >> shift) as f64
            })
        })
        .collect()
}

/// The first frame of RLE Lossless data with 32-bit samples (PS3.5 G): one fragment, a
/// 64-byte header of segment offsets, then one PackBits segment per byte of each sample,
/// most significant byte first. Returns `samples` planes of `n` words, one after another.
/// Every segment is bounded to `n` bytes, whatever the stream says.
fn rle_samples(fragments: &[Vec<u8>], n: usize, samples: usize) -> Result<Vec<u32>, String> {
    let frame = fragments.first().ok_or("RLE data without a fragment")?;
    let word = |i: usize| -> Result<usize, String> {
        frame
            .get(i * 4..i * 4 + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "RLE header truncated".to_string())
    };
    let segments = samples * 4;
    if word(0)? != segments {
        return Err(format!(
            "RLE header declares {} segments, 32-bit data with {samples} samples needs {segments}",
            word(0)?
        ));
    }
    let mut out = vec![0u32; n * samples];
    for s in 0..segments {
        let start = word(1 + s)?;
        let end = if s + 1 < segments {
            word(2 + s)?
        } else {
            frame.len()
        };
        let segment = frame
            .get(start..end.max(start).min(frame.len()))
            .filter(|_| start >= 64)
            .ok_or_else(|| format!("RLE segment {} has offsets {start}..{end}", s + 1))?;
        let bytes = unpackbits(segment, n);
        if bytes.len() < n {
            return Err(format!(
                "RLE segment {} holds {} bytes for {n} pixels",
                s + 1,
                bytes.len()
            ));
        }
        let (plane, shift) = (s / 4, 8 * (3 - s % 4));
        for (w, &b) in out[plane * n..(plane + 1) * n].iter_mut().zip(&bytes) {
            *w |= (b as u32) << shift;
        }
    }
    Ok(out)
}

/// PackBits decoding of one RLE segment, at most `limit` bytes.
fn unpackbits(segment: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(limit);
    let mut i = 0;
    while i < segment.len() && out.len() < limit {
        let h = segment[i] as i8;
        i += 1;
        if h >= 0 {
            let take = (h as usize + 1)
                .min(segment.len() - i)
                .min(limit - out.len());
            out.extend_from_slice(&segment[i..i + take]);
            i += h as usize + 1;
        } else if h != -128 {
            let Some(&b) = segment.get(i) else { break };
            let run = (1 - h as isize) as usize;
            out.resize(out.len() + run.min(limit - out.len()), b);
            i += 1;
        }
    }
    out
}

/// A colour image's luminance (Rec. 601: 0.299 R + 0.587 G + 0.114 B, which is what YBR's Y
/// already holds) and the largest value it can take. Modality and VOI transforms do not apply
/// to colour images (PS3.3 C.7.6.3.1.2).
fn luminance(
    obj: &DefaultDicomObject,
    pixels: &dicom_pixeldata::DecodedPixelData<'_>,
    n: usize,
) -> Result<(Vec<f32>, f64), String> {
    use dicom_pixeldata::{PhotometricInterpretation as Pi, PlanarConfiguration};
    let luma = |r: f32, g: f32, b: f32| 0.299 * r + 0.587 * g + 0.114 * b;
    if *pixels.photometric_interpretation() == Pi::PaletteColor {
        let options = ConvertOptions::new().with_modality_lut(ModalityLutOption::None);
        let index: Vec<f32> = pixels
            .to_vec_frame_with_options(0, &options)
            .map_err(|e| e.to_string())?;
        let (red, max) = palette(
            obj,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::RED_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        )?;
        let (green, _) = palette(
            obj,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::GREEN_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        )?;
        let (blue, _) = palette(
            obj,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DESCRIPTOR,
            tags::BLUE_PALETTE_COLOR_LOOKUP_TABLE_DATA,
        )?;
        let look = |lut: &Palette, v: f32| {
            let i = (v as i64 - lut.first).clamp(0, lut.data.len() as i64 - 1) as usize;
            lut.data[i] as f32
        };
        let values = index
            .iter()
            .map(|&v| luma(look(&red, v), look(&green, v), look(&blue, v)))
            .collect();
        return Ok((values, max));
    }
    let max = ((1u64 << pixels.bits_stored().clamp(1, 16)) - 1) as f64;
    let samples: Vec<f32> = match pixels.bits_allocated() {
        8 => pixels
            .frame_data(0)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|&v| v as f32)
            .collect(),
        16 => pixels
            .frame_data_ow(0)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|&v| v as f32)
            .collect(),
        b => return Err(format!("colour with Bits Allocated {b} (supported: 8, 16)")),
    };
    let pi = pixels.photometric_interpretation();
    if samples.len() != n * 3 {
        return Err(format!(
            "pixel data has {} samples for {n} colour pixels",
            samples.len()
        ));
    }
    let planar = pixels.planar_configuration() == PlanarConfiguration::PixelFirst;
    let at = |i: usize, c: usize| {
        if planar {
            samples[c * n + i]
        } else {
            samples[i * 3 + c]
        }
    };
    let values = match pi {
        Pi::Rgb => (0..n).map(|i| luma(at(i, 0), at(i, 1), at(i, 2))).collect(),
        // Y is the luminance.
        Pi::YbrFull | Pi::YbrFull422 | Pi::YbrPartial420 | Pi::YbrIct | Pi::YbrRct => {
            (0..n).map(|i| at(i, 0)).collect()
        }
        other => return Err(format!("photometric interpretation {other} after decoding")),
    };
    Ok((values, max))
}

/// The first frame's compressed bytes: one frame may span several fragments; in a multi-frame
/// file the first frame is the first fragment.
fn first_frame(obj: &DefaultDicomObject, fragments: &[Vec<u8>]) -> Option<Vec<u8>> {
    if int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) <= 1 {
        Some(fragments.concat())
    } else {
        fragments.first().cloned()
    }
}

/// The luminance of the first frame of a JPEG Baseline RGB image whose stream has no JFIF
/// (APP0) and no Adobe (APP14) marker, decoded without a colour transform; `None` when the
/// stream has one of them (then it says how its components are coded, and dicom-pixeldata
/// follows it).
fn jpeg_rgb_untransformed(
    obj: &DefaultDicomObject,
    rows: i64,
    cols: i64,
    limits: &Limits,
) -> Option<Result<Vec<u16>, String>> {
    use dicom_core::value::Value;
    let element = obj.element(tags::PIXEL_DATA).ok()?;
    let Value::PixelSequence(seq) = element.value() else {
        return None;
    };
    let frame = first_frame(obj, seq.fragments())?;
    // The markers before the first scan.
    let mut at = 2;
    while at + 4 <= frame.len() && frame[at] == 0xFF {
        let marker = frame[at + 1];
        let len = u16::from_be_bytes([frame[at + 2], frame[at + 3]]) as usize;
        let body = frame.get(at + 4..(at + 2 + len).min(frame.len()))?;
        // An Adobe segment says how the components are coded only when it is whole (12 bytes,
        // the transform last); a truncated one is ignored, as libjpeg ignores it.
        if (marker == 0xE0 && body.starts_with(b"JFIF"))
            || (marker == 0xEE && body.starts_with(b"Adobe") && body.len() >= 12)
        {
            return None;
        }
        if marker == 0xDA {
            break;
        }
        at += 2 + len;
    }
    Some((|| {
        let n = (rows * cols) as usize;
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(frame.as_slice()));
        decoder.set_color_transform(jpeg_decoder::ColorTransform::RGB);
        decoder.set_max_decoding_buffer_size(limits.max_pixels.saturating_mul(3) as usize);
        let rgb = decoder.decode().map_err(|e| e.to_string())?;
        let info = decoder.info().ok_or("no JPEG frame header")?;
        if (info.width as i64, info.height as i64) != (cols, rows)
            || info.pixel_format != jpeg_decoder::PixelFormat::RGB24
            || rgb.len() != n * 3
        {
            return Err(format!(
                "JPEG stream is {}x{} {:?}, Rows/Columns say {cols}x{rows} RGB",
                info.width, info.height, info.pixel_format
            ));
        }
        Ok(rgb
            .chunks_exact(3)
            .map(|c| {
                let y = 0.299 * c[0] as f64 + 0.587 * c[1] as f64 + 0.114 * c[2] as f64;
                ((y / 255.0).clamp(0.0, 1.0) * 65535.0).round() as u16
            })
            .collect())
    })())
}

/// The fragments of encapsulated pixel data in `codec`.
fn fragments<'a>(obj: &'a DefaultDicomObject, codec: &str) -> Result<&'a [Vec<u8>], String> {
    use dicom_core::value::Value;
    let element = obj.element(tags::PIXEL_DATA).map_err(|e| e.to_string())?;
    match element.value() {
        Value::PixelSequence(seq) => Ok(seq.fragments()),
        _ => Err(format!("{codec} pixel data is not encapsulated")),
    }
}

/// A 32-bit RGB (or YBR: its Y) RLE image's luminance over the full range of Bits Stored.
fn rle_colour(
    obj: &DefaultDicomObject,
    n: usize,
    stored: u16,
    photometric: &str,
) -> Result<Vec<u16>, String> {
    let planes = rle_samples(fragments(obj, "RLE")?, n, 3)?;
    Ok(luma16(|i, c| planes[c * n + i], n, stored, photometric))
}

/// The first frame of a colour JPEG-LS image (three components) as luminance over the full
/// range of Bits Stored.
fn jpegls_colour(
    obj: &DefaultDicomObject,
    (cols, rows): (u32, u32),
    stored: u16,
    photometric: &str,
) -> Result<Vec<u16>, String> {
    let frame = first_frame(obj, fragments(obj, "JPEG-LS")?).ok_or("no JPEG-LS fragment")?;
    let f = super::jpegls::decode(&frame, cols, rows)?;
    if f.components != 3 {
        return Err(format!(
            "JPEG-LS stream of {} components for 3 samples per pixel ({photometric})",
            f.components
        ));
    }
    let n = cols as usize * rows as usize;
    Ok(luma16(
        |i, c| f.samples[i * 3 + c] as u32,
        n,
        stored,
        photometric,
    ))
}

/// Colour samples (`sample(pixel, component)`) to 16-bit luminance over the full range of
/// Bits Stored: Rec. 601 for RGB, Y for YBR.
fn luma16(
    sample: impl Fn(usize, usize) -> u32,
    n: usize,
    stored: u16,
    photometric: &str,
) -> Vec<u16> {
    let top = ((1u64 << stored.clamp(1, 32)) - 1) as f64;
    (0..n)
        .map(|i| {
            let y = if photometric == "RGB" {
                0.299 * sample(i, 0) as f64
                    + 0.587 * sample(i, 1) as f64
                    + 0.114 * sample(i, 2) as f64
            } else {
                sample(i, 0) as f64
            };
            ((y / top).clamp(0.0, 1.0) * 65535.0).round() as u16
        })
        .collect()
}

struct Palette {
    first: i64,
    data: Vec<u16>,
}

/// One palette colour table: descriptor (entries, first mapped value, bits) and data. Returns
/// the table and the largest value an entry can hold.
fn palette(obj: &DefaultDicomObject, descriptor: Tag, data: Tag) -> Result<(Palette, f64), String> {
    let d = obj
        .element_opt(descriptor)
        .ok()
        .flatten()
        .and_then(|e| e.to_multi_int::<i64>().ok())
        .filter(|d| d.len() == 3)
        .ok_or("PALETTE COLOR without a usable lookup table descriptor (segmented palettes are not read)")?;
    let entries = if d[0] == 0 { 65536 } else { d[0] as usize };
    let bits = d[2].clamp(1, 16) as u32;
    let element = obj
        .element_opt(data)
        .ok()
        .flatten()
        .ok_or("PALETTE COLOR without lookup table data")?;
    let bytes = element.to_bytes().map_err(|e| e.to_string())?;
    let table: Vec<u16> = if bits <= 8 && bytes.len() == entries {
        bytes.iter().map(|&b| b as u16).collect()
    } else {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    if table.is_empty() {
        return Err("PALETTE COLOR with an empty lookup table".into());
    }
    // Some writers declare 16 bits and store 8-bit values: scale by what the table holds.
    let top = table.iter().copied().max().unwrap_or(0);
    let max = if bits == 16 && top <= 255 {
        255.0
    } else {
        ((1u32 << bits) - 1) as f64
    };
    Ok((
        Palette {
            first: d[1],
            data: table,
        },
        max,
    ))
}

/// How [`write_dicom`] writes a file.
#[derive(Clone, Debug)]
pub struct DicomWrite {
    pub photometric: &'static str,
    pub modality: &'static str,
    pub view_position: &'static str,
    /// 8 (one byte a sample) or up to 16 (two bytes).
    pub bits_stored: u16,
    /// Rescale Slope and Intercept to record.
    pub rescale: Option<(f64, f64)>,
    /// RLE Lossless instead of explicit VR little endian.
    pub rle: bool,
    /// Window Center and Width to record.
    pub window: Option<(f64, f64)>,
}

impl Default for DicomWrite {
    fn default() -> Self {
        Self {
            photometric: "MONOCHROME2",
            modality: "DX",
            view_position: "PA",
            bits_stored: 16,
            rescale: None,
            rle: false,
            window: None,
        }
    }
}

/// Write a single-frame grayscale DICOM file of `stored` sample values (row-major).
///
/// Long on purpose: the attributes written, one per line.
pub fn write_dicom(stored: &[u16], width: u32, height: u32, o: &DicomWrite) -> Vec<u8> {
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, PrimitiveValue, VR};

    let allocated: u16 = if o.bits_stored <= 8 { 8 } else { 16 };
    let mut obj = InMemDicomObject::new_empty();
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    let text = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    obj.put(text(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.1.1",
    ));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, "2.25.42"));
    obj.put(text(tags::MODALITY, VR::CS, o.modality));
    obj.put(text(tags::VIEW_POSITION, VR::CS, o.view_position));
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        o.photometric,
    ));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(us(tags::ROWS, height as u16));
    obj.put(us(tags::COLUMNS, width as u16));
    obj.put(us(tags::BITS_ALLOCATED, allocated));
    obj.put(us(tags::BITS_STORED, o.bits_stored));
    obj.put(us(tags::HIGH_BIT, o.bits_stored - 1));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    if let Some((slope, intercept)) = o.rescale {
        obj.put(text(tags::RESCALE_SLOPE, VR::DS, &slope.to_string()));
        obj.put(text(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            &intercept.to_string(),
        ));
    }
    if let Some((center, width)) = o.window {
        obj.put(text(tags::WINDOW_CENTER, VR::DS, &center.to_string()));
        obj.put(text(tags::WINDOW_WIDTH, VR::DS, &width.to_string()));
    }
    let ts = if o.rle {
        let shifts: &[u32] = if allocated == 16 { &[8, 0] } else { &[0] };
        let planes: Vec<Vec<u8>> = shifts
            .iter()
            .map(|shift| stored.iter().map(|v| (v >> shift) as u8).collect())
            .collect();
        let fragment = rle_frame(&planes);
        let sequence = PixelFragmentSequence::new(Vec::<u32>::new(), vec![fragment]);
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(sequence),
        ));
        "1.2.840.10008.1.2.5"
    } else if allocated == 8 {
        let bytes: Vec<u8> = stored.iter().map(|&v| v as u8).collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(bytes),
        ));
        "1.2.840.10008.1.2.1"
    } else {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(stored.iter().copied().collect()),
        ));
        "1.2.840.10008.1.2.1"
    };
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .expect("meta from known values");
    let mut out = Vec::new();
    file.write_all(&mut out).expect("writing to memory");
    out
}

/// One RLE Lossless frame (PS3.5 G) of these byte planes, most significant byte of each sample
/// first: the 64-byte header of segment offsets, then each plane PackBits-encoded.
pub fn rle_frame(planes: &[Vec<u8>]) -> Vec<u8> {
    let segments: Vec<Vec<u8>> = planes.iter().map(|p| packbits(p)).collect();
    let mut fragment = vec![0u8; 64];
    fragment[0..4].copy_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for (i, seg) in segments.iter().enumerate() {
        fragment[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        offset += seg.len() as u32;
    }
    segments.iter().for_each(|seg| fragment.extend(seg));
    fragment
}

/// PackBits (DICOM RLE segment) encoding, padded to an even length.
fn packbits(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 64);
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take(128)
            .take_while(|&&b| b == bytes[i])
            .count();
        if run >= 3 {
            out.push((257 - run) as u8);
            out.push(bytes[i]);
            i += run;
        } else {
            let start = i;
            while i < bytes.len() && i - start < 128 {
                if i + 2 < bytes.len() && bytes[i] == bytes[i + 1] && bytes[i] == bytes[i + 2] {
                    break;
                }
                i += 1;
            }
            out.push((i - start - 1) as u8);
            out.extend_from_slice(&bytes[start..i]);
        }
    }
    if out.len() % 2 == 1 {
        out.push(0x80);
    }
    out
}
