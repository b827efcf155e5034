//! DICOM files built here with dicom-object from images the test makes, decoded through the
//! one entry point (`imaging::decode_bytes`).

use cxr_triage::imaging::{Format, ImageError, Limits, decode_bytes};
use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const RLE: &str = "1.2.840.10008.1.2.5";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";
const JPEG_LS_LOSSLESS: &str = "1.2.840.10008.1.2.4.80";
const JPEG_LS_NEAR: &str = "1.2.840.10008.1.2.4.81";

/// Where the data set of a file that `file` wrote starts: (0002,0000) UL 4 sits at 132, and
/// the meta group's length follows its 12-byte element.
fn data_set_start(f: &[u8]) -> usize {
    assert_eq!(&f[132..138], [0x02, 0x00, 0x00, 0x00, b'U', b'L']);
    144 + u32::from_le_bytes([f[140], f[141], f[142], f[143]]) as usize
}

/// What goes into one test file.
#[derive(Clone)]
struct Spec {
    rows: u16,
    cols: u16,
    allocated: u16,
    stored: u16,
    photometric: &'static str,
    modality: &'static str,
    view: &'static str,
    window: Option<(f64, f64)>,
    rescale: Option<(f64, f64)>,
    padding: Option<u16>,
}

impl Spec {
    /// 12 bits stored in 16, as CR and DX films are.
    fn twelve_bit(rows: u16, cols: u16) -> Self {
        Self {
            allocated: 16,
            stored: 12,
            ..Self::eight_bit(rows, cols)
        }
    }

    fn eight_bit(rows: u16, cols: u16) -> Self {
        Self {
            rows,
            cols,
            allocated: 8,
            stored: 8,
            photometric: "MONOCHROME2",
            modality: "DX",
            view: "PA",
            window: None,
            rescale: None,
            padding: None,
        }
    }
}

fn us(tag: Tag, v: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(v))
}

fn text(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn dataset(spec: &Spec) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    obj.put(text(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.1.1",
    ));
    obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, "2.25.123456789"));
    obj.put(text(tags::PATIENT_ID, VR::LO, "PAT-0001"));
    obj.put(text(tags::ACCESSION_NUMBER, VR::SH, "ACC-7777"));
    obj.put(text(tags::STUDY_INSTANCE_UID, VR::UI, "2.25.1001"));
    obj.put(text(tags::SERIES_INSTANCE_UID, VR::UI, "2.25.1002"));
    obj.put(text(tags::STUDY_DATE, VR::DA, "20260101"));
    obj.put(text(tags::MODALITY, VR::CS, spec.modality));
    obj.put(text(tags::VIEW_POSITION, VR::CS, spec.view));
    obj.put(text(tags::BODY_PART_EXAMINED, VR::CS, "CHEST"));
    obj.put(us(tags::SAMPLES_PER_PIXEL, 1));
    obj.put(text(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        spec.photometric,
    ));
    obj.put(us(tags::ROWS, spec.rows));
    obj.put(us(tags::COLUMNS, spec.cols));
    obj.put(us(tags::BITS_ALLOCATED, spec.allocated));
    obj.put(us(tags::BITS_STORED, spec.stored));
    obj.put(us(tags::HIGH_BIT, spec.stored - 1));
    obj.put(us(tags::PIXEL_REPRESENTATION, 0));
    if let Some((c, w)) = spec.window {
        obj.put(text(tags::WINDOW_CENTER, VR::DS, &c.to_string()));
        obj.put(text(tags::WINDOW_WIDTH, VR::DS, &w.to_string()));
    }
    if let Some((slope, intercept)) = spec.rescale {
        obj.put(text(tags::RESCALE_SLOPE, VR::DS, &slope.to_string()));
        obj.put(text(
            tags::RESCALE_INTERCEPT,
            VR::DS,
            &intercept.to_string(),
        ));
    }
    if let Some(p) = spec.padding {
        obj.put(us(tags::PIXEL_PADDING_VALUE, p));
    }
    obj
}

fn native_pixels(spec: &Spec, values: &[u16]) -> DataElement<InMemDicomObject> {
    if spec.allocated == 8 {
        let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes))
    } else {
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(values.iter().copied().collect()),
        )
    }
}

fn encapsulated(fragment: Vec<u8>) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        Value::PixelSequence(PixelFragmentSequence::new(vec![0u32; 0], vec![fragment])),
    )
}

fn file(mut obj: InMemDicomObject, pixel_data: DataElement<InMemDicomObject>, ts: &str) -> Vec<u8> {
    obj.put(pixel_data);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .unwrap();
    let mut out = Vec::new();
    file.write_all(&mut out).unwrap();
    out
}

fn ramp(spec: &Spec, max: u16) -> Vec<u16> {
    let n = spec.rows as usize * spec.cols as usize;
    (0..n)
        .map(|i| ((i * max as usize) / (n - 1)) as u16)
        .collect()
}

/// Decode an explicit VR little endian file of `spec` with uncompressed `values`.
fn decode_native(spec: &Spec, values: &[u16]) -> cxr_triage::imaging::Decoded {
    decode(&file(
        dataset(spec),
        native_pixels(spec, values),
        EXPLICIT_LE,
    ))
    .unwrap()
}

fn decode(bytes: &[u8]) -> Result<cxr_triage::imaging::Decoded, ImageError> {
    decode_bytes(bytes, &Limits::default())
}

#[test]
fn eight_bit_monochrome2_full_range_decodes_exactly() {
    let spec = Spec::eight_bit(20, 30);
    let values = ramp(&spec, 255);
    let d = decode_native(&spec, &values);
    assert_eq!(d.format, Format::Dicom);
    assert_eq!(
        (d.image.width, d.image.height, d.image.bit_depth),
        (30, 20, 16)
    );
    // No window: min-max over 0..=255 maps v to v * 257 exactly.
    let expected: Vec<u16> = values.iter().map(|&v| v * 257).collect();
    assert_eq!(d.image.pixels, expected);
    assert!(
        d.describe().contains("DICOM 8-bit DX PA"),
        "{}",
        d.describe()
    );
    let info = d.dicom.unwrap();
    assert_eq!(info.modality.as_deref(), Some("DX"));
    assert_eq!(info.view_position.as_deref(), Some("PA"));
    assert_eq!(info.body_part.as_deref(), Some("CHEST"));
    assert_eq!(info.patient_id.as_deref(), Some("PAT-0001"));
    assert_eq!(info.out_of_scope(), None);
}

/// 16 x 16, 12 bits stored, rescaled (2 v - 1000) and windowed (centre 1000, width 2001).
fn twelve_bit_windowed() -> Spec {
    Spec {
        allocated: 16,
        stored: 12,
        rescale: Some((2.0, -1000.0)),
        window: Some((1000.0, 2001.0)),
        ..Spec::eight_bit(16, 16)
    }
}

#[test]
fn twelve_bit_with_rescale_and_window_follows_the_standard() {
    let spec = twelve_bit_windowed();
    let values = ramp(&spec, 4095);
    let d = decode_native(&spec, &values);
    // Modality LUT: 2 v - 1000; window centre 1000 width 2001: linear from -0.5 to 1999.5.
    for (&v, &out) in values.iter().zip(&d.image.pixels) {
        let hu = 2.0 * v as f64 - 1000.0;
        let expected = ((hu + 0.5) / 2000.0).clamp(0.0, 1.0) * 65535.0;
        assert!(
            (out as f64 - expected).abs() <= 1.0,
            "stored {v}: got {out}, expected {expected:.1}"
        );
    }
    assert_eq!(d.dicom.unwrap().bits_stored, 12);
}

#[test]
fn monochrome1_is_inverted_so_bone_stays_bright() {
    let spec = Spec {
        photometric: "MONOCHROME1",
        ..Spec::eight_bit(8, 8)
    };
    let values = ramp(&spec, 255);
    let d = decode_native(&spec, &values);
    let expected: Vec<u16> = values.iter().map(|&v| 65535 - v * 257).collect();
    assert_eq!(d.image.pixels, expected);
}

#[test]
fn padding_value_is_left_out_of_the_min_max_window() {
    let spec = Spec {
        allocated: 16,
        stored: 16,
        padding: Some(60000),
        ..Spec::eight_bit(4, 4)
    };
    let mut values: Vec<u16> = (0..16).map(|i| 100 + i * 10).collect();
    values[0] = 60000;
    let d = decode_native(&spec, &values);
    assert_eq!(d.image.pixels[0], 0, "padding shown black");
    assert_eq!(d.image.pixels[1], 0, "lowest real value");
    assert_eq!(
        d.image.pixels[15], 65535,
        "highest real value, not squashed by the padding"
    );
}

#[test]
fn big_endian_implicit_and_bare_data_sets_decode_the_same() {
    let spec = Spec {
        allocated: 16,
        stored: 16,
        ..Spec::eight_bit(6, 5)
    };
    let values = ramp(&spec, 40000);
    let reference = decode_native(&spec, &values).image;
    for ts in [EXPLICIT_BE, IMPLICIT_LE] {
        let d = decode(&file(dataset(&spec), native_pixels(&spec, &values), ts)).unwrap();
        assert_eq!(d.image, reference, "{ts}");
    }
    // No preamble, no meta group: a bare implicit VR little endian data set.
    let mut obj = dataset(&spec);
    obj.put(native_pixels(&spec, &values));
    let mut bare = Vec::new();
    obj.write_dataset_with_ts(
        &mut bare,
        &dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased(),
    )
    .unwrap();
    assert_eq!(decode(&bare).unwrap().image, reference);
}

/// RLE Lossless for 8-bit samples: one segment of PackBits literal runs.
fn rle_fragment(bytes: &[u8]) -> Vec<u8> {
    rle_segments(&[bytes.to_vec()])
}

/// An RLE frame of these byte planes (the writer's encoder: repeat and literal runs).
fn rle_segments(planes: &[Vec<u8>]) -> Vec<u8> {
    cxr_triage::imaging::rle_frame(planes)
}

#[test]
fn rle_lossless_decodes_exactly() {
    let spec = Spec::eight_bit(12, 20);
    let values = ramp(&spec, 255);
    let bytes: Vec<u8> = values.iter().map(|&v| v as u8).collect();
    let d = decode(&file(
        dataset(&spec),
        encapsulated(rle_fragment(&bytes)),
        RLE,
    ))
    .unwrap();
    assert_eq!(
        d.image.pixels,
        values.iter().map(|&v| v * 257).collect::<Vec<_>>()
    );
}

/// The largest difference between two 16-bit pictures of the same size.
fn worst_difference(a: &[u16], b: &[u16]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&a, &b)| (a as i32 - b as i32).abs())
        .max()
        .unwrap_or(0)
}

/// A 12-bit film with texture (JPEG-LS's regular mode) and flat runs (its run mode).
fn textured_12_bit(spec: &Spec) -> Vec<u16> {
    (0..spec.rows as usize * spec.cols as usize)
        .map(|i| {
            let (x, y) = (i % spec.cols as usize, i / spec.cols as usize);
            if y < 4 {
                2048
            } else {
                ((x * 97 + y * 31 + ((i * 2_654_435_761usize) >> 7) % 211) % 4096) as u16
            }
        })
        .collect()
}

/// A JPEG-LS stream of these samples, padded to an even length as a DICOM fragment is.
fn jpeg_ls(values: &[u16], spec: &Spec, near: u8) -> Vec<u8> {
    let mut options = jpegls::EncodeOptions::default();
    options.near = near;
    options.precision = Some(spec.stored as u8);
    let mut stream = Vec::new();
    jpegls::encode_with_options(
        values,
        spec.cols as u32,
        spec.rows as u32,
        &options,
        &mut stream,
    )
    .unwrap();
    if stream.len() % 2 == 1 {
        stream.push(0);
    }
    stream
}

#[test]
fn jpeg_ls_lossless_12_bit_decodes_like_native() {
    let spec = Spec::twelve_bit(24, 40);
    let values = textured_12_bit(&spec);
    let native = decode_native(&spec, &values);
    let stream = jpeg_ls(&values, &spec, 0);
    let d = decode(&file(
        dataset(&spec),
        encapsulated(stream),
        JPEG_LS_LOSSLESS,
    ))
    .unwrap();
    assert_eq!(d.image, native.image);
    assert_eq!(d.dicom.unwrap().bits_stored, 12);
}

#[test]
fn jpeg_ls_near_lossless_stays_within_its_error_bound() {
    let mut spec = Spec::twelve_bit(24, 40);
    // A fixed window, so that moved extremes do not rescale the whole film.
    spec.window = Some((2048.0, 4096.0));
    let values = textured_12_bit(&spec);
    let native = decode_native(&spec, &values);
    let near = 3;
    let stream = jpeg_ls(&values, &spec, near);
    let d = decode(&file(dataset(&spec), encapsulated(stream), JPEG_LS_NEAR)).unwrap();
    // Stored values move by at most NEAR; the window scales a level to 65535/4096.
    let worst = worst_difference(&d.image.pixels, &native.image.pixels);
    assert!(worst > 0, "near-lossless with NEAR {near} came back exact");
    assert!(worst <= (near as i32 + 1) * 17, "worst difference {worst}");
}

/// An item that declares more bytes than its sequence holds (pydicom's DICOMDIR-nooffset lost
/// elements and kept its last item's length) is read to the sequence's end, as pydicom does;
/// the film after it decodes as it would without the sequence.
#[test]
fn an_item_longer_than_its_sequence_is_read_to_the_sequence_end() {
    let spec = Spec::eight_bit(6, 5);
    let values = ramp(&spec, 255);
    let plain = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    // (0008,1140) SQ of one item holding (0008,1150) UI "1.2", the item declaring 20 bytes
    // more than it has.
    let element = [
        0x08, 0x00, 0x50, 0x11, b'U', b'I', 4, 0, b'1', b'.', b'2', 0,
    ];
    let mut seq = vec![0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0];
    seq.extend((8 + element.len() as u32).to_le_bytes());
    seq.extend([0xFE, 0xFF, 0x00, 0xE0]);
    seq.extend((element.len() as u32 + 20).to_le_bytes());
    seq.extend(element);
    let at = data_set_start(&plain);
    let mut quirky = plain[..at].to_vec();
    quirky.extend(&seq);
    quirky.extend(&plain[at..]);
    let d = decode(&quirky).unwrap();
    assert_eq!(d.image, decode(&plain).unwrap().image);
}

#[test]
fn float_and_double_float_pixel_data_decode_like_the_same_values_stored_as_integers() {
    let spec = Spec::twelve_bit(24, 40);
    let values = textured_12_bit(&spec);
    let native = decode_native(&spec, &values);
    // A linear map of the integers: the min-max window gives the same picture.
    let real = |v: u16| v as f64 * 0.25 - 300.0;
    for (allocated, element) in [
        (
            32,
            DataElement::new(
                tags::FLOAT_PIXEL_DATA,
                VR::OF,
                PrimitiveValue::F32(values.iter().map(|&v| real(v) as f32).collect()),
            ),
        ),
        (
            64,
            DataElement::new(
                tags::DOUBLE_FLOAT_PIXEL_DATA,
                VR::OD,
                PrimitiveValue::F64(values.iter().map(|&v| real(v)).collect()),
            ),
        ),
    ] {
        let mut obj = dataset(&spec);
        obj.put(us(tags::BITS_ALLOCATED, allocated));
        for tag in [
            tags::BITS_STORED,
            tags::HIGH_BIT,
            tags::PIXEL_REPRESENTATION,
        ] {
            obj.remove_element(tag);
        }
        let d = decode(&file(obj, element, EXPLICIT_LE))
            .unwrap_or_else(|e| panic!("{allocated}-bit float: {e}"));
        let worst = worst_difference(&d.image.pixels, &native.image.pixels);
        assert!(
            worst <= 1,
            "{allocated}-bit float: worst difference {worst}"
        );
    }
}

/// A 12-bit JPEG Extended stream (SOF1) of flat 8 x 8 blocks, one value each, row by row: DC
/// only (every block's AC is end-of-block), quantiser 1, DC category s coded as s in 4 bits;
/// with `restart`, a restart marker after every that many blocks.
fn jpeg_extended_flat(width: u16, height: u16, blocks: &[u16], restart: Option<u16>) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    out.extend([0xFF, 0xDB, 0, 67, 0]);
    out.extend([1u8; 64]);
    out.extend([0xFF, 0xC1, 0, 11, 12]);
    out.extend(height.to_be_bytes());
    out.extend(width.to_be_bytes());
    out.extend([1, 1, 0x11, 0]);
    let mut dht = vec![0u8];
    dht.extend((0..16).map(|len| if len == 3 { 16 } else { 0 }));
    dht.extend(0..=15u8);
    dht.push(0x10);
    dht.extend((0..16).map(|len| u8::from(len == 0)));
    dht.push(0);
    out.extend([0xFF, 0xC4]);
    out.extend((dht.len() as u16 + 2).to_be_bytes());
    out.extend(dht);
    if let Some(interval) = restart {
        out.extend([0xFF, 0xDD, 0, 4]);
        out.extend(interval.to_be_bytes());
    }
    out.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
    let mut bits: Vec<bool> = Vec::new();
    let push = |v: u32, n: u32, bits: &mut Vec<bool>| {
        (0..n).rev().for_each(|i| bits.push((v >> i) & 1 == 1))
    };
    // The coded bits so far, padded with ones and stuffed, into `out`.
    let flush = |bits: &mut Vec<bool>, out: &mut Vec<u8>| {
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        for byte in bits.chunks(8) {
            let b = byte
                .iter()
                .fold(0u8, |acc, &bit| (acc << 1) | u8::from(bit));
            out.push(b);
            if b == 0xFF {
                out.push(0);
            }
        }
        bits.clear();
    };
    let mut predictor = 0i32;
    for (i, &value) in blocks.iter().enumerate() {
        if let Some(interval) = restart
            && i > 0
            && i % interval as usize == 0
        {
            flush(&mut bits, &mut out);
            out.extend([0xFF, 0xD0 + ((i / interval as usize - 1) % 8) as u8]);
            predictor = 0;
        }
        // The forward DCT of a flat block: DC = 8 x (value - 2048).
        let dc = 8 * (value as i32 - 2048);
        let diff = dc - predictor;
        predictor = dc;
        let size = 32 - diff.unsigned_abs().leading_zeros();
        push(size, 4, &mut bits);
        let coded = if diff >= 0 {
            diff
        } else {
            diff + (1 << size) - 1
        };
        push(coded as u32, size, &mut bits);
        push(0, 1, &mut bits);
    }
    flush(&mut bits, &mut out);
    out.extend([0xFF, 0xD9]);
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

#[test]
fn jpeg_extended_12_bit_decodes_its_blocks_exactly() {
    // 20 x 12: three by two blocks, the last column and row cropped.
    let blocks = [0u16, 4095, 2048, 100, 3000, 1234];
    let spec = Spec::twelve_bit(12, 20);
    let values: Vec<u16> = (0..12 * 20)
        .map(|i| blocks[(i / 20 / 8) * 3 + (i % 20) / 8])
        .collect();
    let native = decode_native(&spec, &values);
    for restart in [None, Some(1), Some(2)] {
        let stream = jpeg_extended_flat(20, 12, &blocks, restart);
        let d = decode(&file(dataset(&spec), encapsulated(stream), JPEG_EXTENDED)).unwrap();
        assert_eq!(d.image, native.image, "restart interval {restart:?}");
    }
    let stream = jpeg_extended_flat(20, 12, &blocks, Some(2));
    // Every truncation of the stream is an error or a picture, never a panic.
    for end in 0..stream.len() {
        let mut cut = stream[..end].to_vec();
        if cut.len() % 2 == 1 {
            cut.push(0);
        }
        let _ = decode(&file(dataset(&spec), encapsulated(cut), JPEG_EXTENDED));
    }
    let half = stream[..(stream.len() / 2) & !1].to_vec();
    let error = decode(&file(dataset(&spec), encapsulated(half), JPEG_EXTENDED))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("JPEG"), "{error}");
}

#[test]
fn jpeg_baseline_decodes_within_35_db() {
    let spec = Spec::eight_bit(64, 64);
    let source = image::GrayImage::from_fn(64, 64, |x, y| {
        image::Luma([if x == 0 && y == 0 {
            0
        } else if x == 63 && y == 63 {
            255
        } else {
            (x * 2 + y * 2) as u8
        }])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&source)
        .unwrap();
    let mut fragment = jpeg.into_inner();
    if fragment.len() % 2 == 1 {
        fragment.push(0);
    }
    let d = decode(&file(dataset(&spec), encapsulated(fragment), JPEG_BASELINE)).unwrap();
    // Compare after undoing the min-max window (the decoded extremes may move by a few levels).
    let out: Vec<f64> = d.image.pixels.iter().map(|&v| v as f64 / 257.0).collect();
    let mse: f64 = out
        .iter()
        .zip(source.as_raw())
        .map(|(a, &b)| (a - b as f64).powi(2))
        .sum::<f64>()
        / out.len() as f64;
    let psnr = 10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10();
    assert!(psnr > 35.0, "PSNR {psnr:.1} dB");
}

#[test]
fn lateral_views_and_other_modalities_are_out_of_scope() {
    for (view, modality, expected) in [
        ("LATERAL", "DX", "lateral"),
        ("LL", "CR", "lateral"),
        ("PA", "CT", "modality CT"),
        ("AP", "CR", ""),
    ] {
        let spec = Spec {
            view,
            modality,
            ..Spec::eight_bit(8, 8)
        };
        let d = decode(&file(
            dataset(&spec),
            native_pixels(&spec, &ramp(&spec, 255)),
            EXPLICIT_LE,
        ))
        .unwrap();
        let reason = d.dicom.unwrap().out_of_scope().unwrap_or_default();
        assert!(
            reason.contains(expected) && (expected.is_empty() == reason.is_empty()),
            "{view} {modality}: {reason}"
        );
    }
}

#[test]
fn broken_files_give_clear_errors() {
    let spec = Spec::eight_bit(16, 16);
    let values = ramp(&spec, 255);
    let good = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);

    let truncated = &good[..good.len() - 100];
    let mut no_rows = dataset(&spec);
    no_rows.remove_element(tags::ROWS);
    let no_rows = file(no_rows, native_pixels(&spec, &values), EXPLICIT_LE);
    let short = file(
        dataset(&spec),
        native_pixels(&spec, &values[..100]),
        EXPLICIT_LE,
    );
    let jpeg_ls = file(
        dataset(&spec),
        encapsulated(vec![0xFF, 0xD8, 0xFF, 0xF7, 0, 0]),
        "1.2.840.10008.1.2.4.80",
    );
    // dicom-object will not write an unknown syntax: write explicit VR LE, then rename it in
    // the meta group (same length, so every group length stays right).
    let mut unknown = good.clone();
    let at = unknown
        .windows(20)
        .position(|w| w == b"1.2.840.10008.1.2.1\0")
        .unwrap();
    unknown[at..at + 20].copy_from_slice(b"1.2.3.4.5.6.7.8.9.10");
    let huge_spec = Spec {
        rows: 50_000,
        cols: 50_000,
        ..spec.clone()
    };
    let huge = file(
        dataset(&huge_spec),
        native_pixels(&spec, &values),
        EXPLICIT_LE,
    );

    for (name, bytes, expected) in [
        ("truncated pixel data", truncated.to_vec(), ""),
        ("missing Rows", no_rows, "Rows"),
        ("pixel data length mismatch", short, ""),
        (
            "JPEG-LS (no pure-Rust codec)",
            jpeg_ls,
            "1.2.840.10008.1.2.4.80",
        ),
        ("unknown transfer syntax", unknown, "1.2.3.4.5.6.7.8.9.10"),
        ("50,000 x 50,000", huge, "limit"),
    ] {
        let err = decode(&bytes).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
        assert!(!err.contains('\n'), "{name}: one line: {err}");
    }
}

#[test]
fn scan_marks_laterals_out_of_scope_and_hides_patient_ids() {
    let models = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    let frontal = Spec::eight_bit(40, 40);
    let lateral = Spec {
        view: "LATERAL",
        ..frontal.clone()
    };
    let values = ramp(&frontal, 255);
    // No extension: found by its DICM marker.
    std::fs::write(
        data.path().join("IM0001"),
        file(
            dataset(&frontal),
            native_pixels(&frontal, &values),
            EXPLICIT_LE,
        ),
    )
    .unwrap();
    std::fs::write(
        data.path().join("IM0002.dcm"),
        file(
            dataset(&lateral),
            native_pixels(&lateral, &values),
            EXPLICIT_LE,
        ),
    )
    .unwrap();
    std::fs::write(data.path().join("empty.dcm"), b"").unwrap();
    let scan = |extra: &[&str]| {
        let mut cmd = crate::common::cxr();
        cmd.args([
            "scan",
            data.path().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-q",
            "--format",
            "jsonl",
        ]);
        cmd.args(extra);
        let out = cmd.assert().code(1).get_output().stdout.clone();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let rows = scan(&[]);
    assert_eq!(rows.len(), 3);
    let (front, side, empty) = (&rows[1], &rows[2], &rows[0]);
    assert_eq!(empty["path"], "empty.dcm");
    assert_eq!(empty["status"], "error");
    assert_eq!(front["path"], "IM0001");
    assert_eq!(front["status"], "done");
    assert_eq!(front["modality"], "DX");
    assert_eq!(front["view_position"], "PA");
    assert_eq!(front["format"], "DICOM");
    assert_eq!(
        front["patient_id"],
        serde_json::Value::Null,
        "PHI hidden by default"
    );
    assert_eq!(side["status"], "out of scope");
    assert!(side["error"].as_str().unwrap().contains("lateral"));
    assert_eq!(side["probabilities"].as_object().unwrap().len(), 0);

    assert_eq!(front["accession_number"], serde_json::Value::Null);
    assert_eq!(front["study_instance_uid"], "2.25.1001");
    assert_eq!(front["series_instance_uid"], "2.25.1002");
    assert_eq!(front["sop_instance_uid"], "2.25.123456789");

    let rows = scan(&["--show-phi", "--force"]);
    assert_eq!(rows[1]["patient_id"], "PAT-0001");
    assert_eq!(rows[1]["accession_number"], "ACC-7777");
    assert_eq!(rows[2]["status"], "done", "--force scores the lateral view");
}

/// The results store holds file paths and must not hold PHI: a default scan of a DICOM with a
/// patient ID and an accession number leaves neither in any of the store's files, and a later
/// `--show-phi` scan served from the store still shows both (read again from the header).
#[test]
fn phi_is_not_kept_in_the_store_and_comes_back_from_the_file() {
    let models = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = cache.path().join("store.sqlite3");
    let spec = Spec::eight_bit(40, 40);
    std::fs::write(
        data.path().join("IM0001.dcm"),
        file(
            dataset(&spec),
            native_pixels(&spec, &ramp(&spec, 255)),
            EXPLICIT_LE,
        ),
    )
    .unwrap();
    let scan = |extra: &[&str]| {
        let out = crate::common::cxr()
            .args(["scan", data.path().to_str().unwrap(), "--model"])
            .arg(&model)
            .arg("--cache")
            .arg(&store)
            .args(["--format", "csv"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (first, _) = scan(&[]);
    assert!(
        !first.contains("PAT-0001") && !first.contains("ACC-7777"),
        "{first}"
    );
    let mut at_rest = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = store.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(bytes) = std::fs::read(std::path::PathBuf::from(p)) {
            at_rest.extend(bytes);
        }
    }
    assert!(at_rest.len() > 1000, "the store was written");
    let has = |needle: &[u8]| at_rest.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"2.25.1001"), "the study UID is kept");
    assert!(!has(b"PAT-0001"), "a patient ID in the store");
    assert!(!has(b"ACC-7777"), "an accession number in the store");

    let (shown, err) = scan(&["--show-phi"]);
    assert!(err.contains("1 from the results store"), "{err}");
    assert!(
        shown.contains("PAT-0001") && shown.contains("ACC-7777"),
        "{shown}"
    );
}

fn u16s(values: &[u16]) -> PrimitiveValue {
    PrimitiveValue::U16(values.iter().copied().collect())
}

#[test]
fn voi_lut_sequence_is_applied_when_there_is_no_window() {
    let spec = Spec {
        allocated: 16,
        stored: 16,
        ..Spec::eight_bit(2, 3)
    };
    let mut obj = dataset(&spec);
    let mut item = InMemDicomObject::new_empty();
    // 4 entries, first mapped value 100, 8-bit entries.
    item.put(DataElement::new(
        tags::LUT_DESCRIPTOR,
        VR::US,
        u16s(&[4, 100, 8]),
    ));
    item.put(DataElement::new(
        tags::LUT_DATA,
        VR::OW,
        u16s(&[0, 85, 170, 255]),
    ));
    obj.put(DataElement::new(
        tags::VOILUT_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![item]),
    ));
    let values = [50, 100, 101, 102, 103, 900];
    let d = decode(&file(obj, native_pixels(&spec, &values), EXPLICIT_LE)).unwrap();
    assert_eq!(d.image.pixels, [0, 0, 21845, 43690, 65535, 65535]);
}

#[test]
fn signed_pixels_keep_their_order() {
    let spec = Spec {
        allocated: 16,
        stored: 12,
        ..Spec::eight_bit(1, 4)
    };
    let mut obj = dataset(&spec);
    obj.put(us(tags::PIXEL_REPRESENTATION, 1));
    // -2048, -1, 0, 2047 as 12-bit two's complement in 16-bit words.
    let stored = [0x0800u16, 0x0FFF, 0x0000, 0x07FF];
    let d = decode(&file(obj, native_pixels(&spec, &stored), EXPLICIT_LE)).unwrap();
    let p = &d.image.pixels;
    assert_eq!(p[0], 0, "-2048 is the minimum");
    assert_eq!(p[3], 65535, "2047 is the maximum");
    assert!(p[1] < p[2] && (p[1] as i32 - 32759).abs() <= 1, "{p:?}");
}

#[test]
fn multi_frame_shows_the_first_frame_and_counts_frames() {
    let spec = Spec::eight_bit(4, 4);
    let mut obj = dataset(&spec);
    obj.put(text(tags::NUMBER_OF_FRAMES, VR::IS, "2"));
    let first = ramp(&spec, 255);
    let second: Vec<u16> = first.iter().map(|v| 255 - v).collect();
    let both = [first.clone(), second].concat();
    let d = decode(&file(obj, native_pixels(&spec, &both), EXPLICIT_LE)).unwrap();
    assert_eq!(
        d.image.pixels,
        first.iter().map(|v| v * 257).collect::<Vec<_>>()
    );
    assert!(d.describe().ends_with("(frame 1 of 2)"), "{}", d.describe());
}

#[test]
fn sixteen_bit_rle_matches_uncompressed() {
    // The benchmark's own DICOM writer (PackBits runs and literals, two byte planes).
    let img = cxr_triage::bench::synthetic_xray(96, 5);
    let plain = decode(&cxr_triage::bench::dicom_bytes(&img, false))
        .unwrap()
        .image;
    let rle = decode(&cxr_triage::bench::dicom_bytes(&img, true))
        .unwrap()
        .image;
    assert_eq!(plain, rle);
    assert_eq!(plain.bit_depth, 16);
}

/// The pixels of `tests/fixtures/ramp-12bit-*.j2k` (same formula as `make_j2k.py`).
fn j2k_expected() -> Vec<u16> {
    let (w, h) = (48u32, 40u32);
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let mut v = (x * 4095) / (w - 1) / 2 + (y * 1000) / (h - 1);
            if (12..24).contains(&x) && (10..20).contains(&y) {
                v += 1500;
            }
            v.min(4095) as u16
        })
        .collect()
}

fn j2k_fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

fn j2k_spec() -> Spec {
    Spec {
        allocated: 16,
        stored: 16,
        ..Spec::eight_bit(40, 48)
    }
}

#[test]
fn jpeg_2000_lossless_decodes_exactly() {
    let spec = j2k_spec();
    let plain = decode_native(&spec, &j2k_expected());
    let d = decode(&file(
        dataset(&spec),
        encapsulated(j2k_fixture("ramp-12bit-lossless.j2k")),
        "1.2.840.10008.1.2.4.90",
    ))
    .unwrap();
    assert_eq!((d.image.width, d.image.height), (48, 40));
    assert_eq!(d.image.pixels, plain.image.pixels);
    let ts = d.dicom.unwrap().transfer_syntax;
    assert!(
        ts.contains("1.2.840.10008.1.2.4.90") || ts.contains("2000"),
        "{ts}"
    );
}

#[test]
fn jpeg_2000_lossy_decodes_within_35_db() {
    let spec = j2k_spec();
    let plain = decode_native(&spec, &j2k_expected());
    let d = decode(&file(
        dataset(&spec),
        encapsulated(j2k_fixture("ramp-12bit-lossy.j2k")),
        "1.2.840.10008.1.2.4.91",
    ))
    .unwrap();
    let mse: f64 = d
        .image
        .pixels
        .iter()
        .zip(&plain.image.pixels)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum::<f64>()
        / plain.image.pixels.len() as f64;
    let psnr = 10.0 * (65535.0f64 * 65535.0 / mse.max(1e-9)).log10();
    assert!(psnr > 35.0, "PSNR {psnr:.1} dB");
    assert_ne!(
        d.image.pixels, plain.image.pixels,
        "the lossy file is lossy"
    );
}

#[test]
fn a_corrupt_jpeg_2000_stream_is_a_clear_error() {
    let spec = j2k_spec();
    let mut bytes = j2k_fixture("ramp-12bit-lossless.j2k");
    bytes.truncate(bytes.len() / 3);
    bytes.resize(bytes.len() + bytes.len() % 2, 0);
    let err = decode(&file(
        dataset(&spec),
        encapsulated(bytes),
        "1.2.840.10008.1.2.4.90",
    ))
    .map(|d| d.image.pixels.len())
    .unwrap_err()
    .to_string();
    assert!(err.contains("JPEG 2000"), "{err}");
}

#[test]
fn a_jpeg_2000_stream_must_match_rows_and_columns() {
    // The decoder sizes its buffers from the codestream: a stream that disagrees with the
    // header (here 48x40 against 480x400) is refused before decoding.
    let spec = Spec {
        rows: 400,
        cols: 480,
        ..j2k_spec()
    };
    let err = decode(&file(
        dataset(&spec),
        encapsulated(j2k_fixture("ramp-12bit-lossless.j2k")),
        "1.2.840.10008.1.2.4.90",
    ))
    .map(|d| d.image.width)
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("stream is 48x40 but Rows/Columns say 480x400"),
        "{err}"
    );
}

/// Colour images (secondary captures, scanned films) become their luminance, 0.299 R + 0.587 G
/// + 0.114 B, over the full 8-bit range; YBR_FULL's Y is that luminance already.
#[test]
fn colour_images_become_luminance() {
    let spec = Spec {
        photometric: "RGB",
        ..Spec::eight_bit(16, 16)
    };
    let n = 16 * 16;
    let rgb: Vec<u8> = (0..n)
        .flat_map(|i| [(i % 256) as u8, 255 - (i % 256) as u8, 40])
        .collect();
    let mut obj = dataset(&spec);
    obj.put(us(tags::SAMPLES_PER_PIXEL, 3));
    obj.put(us(tags::PLANAR_CONFIGURATION, 0));
    let bytes = file(
        obj,
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(rgb.clone())),
        EXPLICIT_LE,
    );
    let d = decode(&bytes).unwrap();
    for i in [0, 17, 200, 255] {
        let (r, g, b) = (
            rgb[i * 3] as f64,
            rgb[i * 3 + 1] as f64,
            rgb[i * 3 + 2] as f64,
        );
        let y = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0 * 65535.0;
        assert!((d.image.pixels[i] as f64 - y).abs() < 2.0, "pixel {i}");
    }
    // Planar (RRR.. GGG.. BBB..) gives the same picture.
    let planar: Vec<u8> = (0..3)
        .flat_map(|c| (0..n).map(move |i| (i, c)))
        .map(|(i, c)| rgb[i * 3 + c])
        .collect();
    let mut obj = dataset(&spec);
    obj.put(us(tags::SAMPLES_PER_PIXEL, 3));
    obj.put(us(tags::PLANAR_CONFIGURATION, 1));
    let bytes = file(
        obj,
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(planar)),
        EXPLICIT_LE,
    );
    assert_eq!(decode(&bytes).unwrap().image.pixels, d.image.pixels);
}

/// The ways a DICOM file may start: a TIFF header in the preamble (dual-personality files) is
/// still DICOM; the meta group with neither preamble nor marker; a bare explicit-VR data set.
#[test]
fn preambles_markers_and_bare_data_sets() {
    let spec = Spec::eight_bit(16, 16);
    let values = ramp(&spec, 255);
    let good = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    let expected = decode(&good).unwrap().image.pixels;
    let mut tiff = good.clone();
    tiff[..8].copy_from_slice(b"II*\0\x08\0\0\0");
    assert_eq!(
        cxr_triage::imaging::sniff(&tiff),
        Some(Format::Dicom),
        "DICM at 128 wins"
    );
    assert_eq!(decode(&tiff).unwrap().image.pixels, expected);
    let no_preamble = &good[132..];
    assert_eq!(decode(no_preamble).unwrap().image.pixels, expected);
    // A bare explicit VR little endian data set: the part after the meta group.
    let meta_len = u32::from_le_bytes(good[140..144].try_into().unwrap()) as usize;
    let bare = &good[144 + meta_len..];
    assert_eq!(decode(bare).unwrap().image.pixels, expected);
}

/// A structured report or any other object without pixel data says so, with its SOP class.
#[test]
fn objects_without_an_image_say_what_they_are() {
    let spec = Spec::eight_bit(16, 16);
    let mut obj = dataset(&spec);
    obj.put(text(
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.88.11",
    ));
    obj.remove_element(tags::ROWS);
    let sr = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_LE)
                .media_storage_sop_class_uid("1.2.840.10008.5.1.4.1.1.88.11"),
        )
        .unwrap();
    let mut bytes = Vec::new();
    sr.write_all(&mut bytes).unwrap();
    let err = decode(&bytes).unwrap_err().to_string();
    assert_eq!(err, "no image in this DICOM (Basic Text SR Storage)");
}

/// Bits Allocated 32 (RT dose, integer data) and 1 (segmentations): unpacked natively, in both
/// byte orders for 32 bits, then windowed like any monochrome image.
#[test]
fn one_and_thirty_two_bit_pixels_decode() {
    let mut spec = Spec::eight_bit(16, 16);
    spec.allocated = 32;
    spec.stored = 32;
    let n = 16 * 16;
    let values: Vec<u32> = (0..n as u32).map(|i| i * 100_000).collect();
    for (ts, big) in [(EXPLICIT_LE, false), (EXPLICIT_BE, true)] {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            })
            .collect();
        let pixels = DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bytes));
        let d = decode(&file(dataset(&spec), pixels, ts)).unwrap();
        assert_eq!(d.image.pixels[0], 0, "{ts}");
        assert_eq!(d.image.pixels[n - 1], 65535, "{ts}");
        let mid = (128.0 * 100_000.0 / (255.0 * 100_000.0) * 65535.0f64).round() as u16;
        assert!(
            d.image.pixels[128].abs_diff(mid) <= 1,
            "{ts}: {}",
            d.image.pixels[128]
        );
    }
    let mut spec = Spec::eight_bit(16, 16);
    spec.allocated = 1;
    spec.stored = 1;
    // Pixel i is set when i is odd: bits 1, 3, 5, 7 of every byte (least significant first).
    let pixels = DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(vec![0xAAu8; n / 8]),
    );
    let d = decode(&file(dataset(&spec), pixels, EXPLICIT_LE)).unwrap();
    assert!(
        d.image
            .pixels
            .iter()
            .enumerate()
            .all(|(i, &v)| v == if i % 2 == 1 { 65535 } else { 0 })
    );
}

/// 32-bit RLE (RT dose, 32-bit secondary captures): dicom-pixeldata's RLE decoder stops at 16
/// bits, ours reads the four byte planes of each sample; monochrome equals the native decode,
/// RGB becomes its luminance over Bits Stored.
#[test]
fn thirty_two_bit_rle_decodes_like_native() {
    let mut spec = Spec::eight_bit(16, 16);
    spec.allocated = 32;
    spec.stored = 32;
    let n = 16 * 16;
    let values: Vec<u32> = (0..n as u32).map(|i| i * 7_000_000 + (i % 3)).collect();
    let planes = |values: &[u32]| -> Vec<Vec<u8>> {
        (0..4)
            .map(|b| values.iter().map(|v| v.to_be_bytes()[b]).collect())
            .collect()
    };
    let native = DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::from(
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    let native = decode(&file(dataset(&spec), native, EXPLICIT_LE)).unwrap();
    let rle = decode(&file(
        dataset(&spec),
        encapsulated(rle_segments(&planes(&values))),
        RLE,
    ))
    .unwrap();
    assert_eq!(rle.image, native.image);
    assert_eq!(rle.image.pixels[n - 1], 65535);

    // RGB with R = G = B: the luminance is the value itself, over 2^32 - 1.
    let mut obj = dataset(&spec);
    obj.put(us(tags::SAMPLES_PER_PIXEL, 3));
    obj.put(us(tags::PLANAR_CONFIGURATION, 0));
    obj.put(text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
    let all = [planes(&values), planes(&values), planes(&values)].concat();
    let d = decode(&file(obj, encapsulated(rle_segments(&all)), RLE)).unwrap();
    for i in [0, 100, n - 1] {
        let want = (values[i] as f64 / u32::MAX as f64 * 65535.0).round() as u16;
        assert!(
            d.image.pixels[i].abs_diff(want) <= 1,
            "{i}: {}",
            d.image.pixels[i]
        );
    }
    // A frame whose header counts the segments of 16-bit data is refused, not misread.
    let d = decode(&file(
        dataset(&spec),
        encapsulated(rle_segments(&planes(&values)[..2])),
        RLE,
    ));
    assert!(d.unwrap_err().to_string().contains("needs 4"));
}

/// RGB in JPEG Baseline: a stream with a JFIF marker is YCbCr-coded (converted back to RGB);
/// one with neither JFIF nor Adobe marker holds R, G and B as they are (pydicom's
/// SC_jpeg_no_color_transform.dcm). The same stream, once with its JFIF marker and once without
/// (or with a truncated Adobe marker), must give the two pictures.
#[test]
fn rgb_jpeg_without_jfif_or_adobe_marker_is_not_colour_transformed() {
    let (w, h) = (64u32, 16u32);
    // A gray ramp: its YCbCr components are (x, 128, 128).
    let source = image::RgbImage::from_fn(w, h, |x, _| {
        let v = (x * 255 / (w - 1)) as u8;
        image::Rgb([v, v, v])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 100)
        .encode_image(&source)
        .unwrap();
    let jfif = jpeg.into_inner();
    assert_eq!(&jfif[2..4], [0xFF, 0xE0], "the encoder writes JFIF first");
    let app0 = 2 + u16::from_be_bytes([jfif[4], jfif[5]]) as usize;
    let bare = [&jfif[..2], &jfif[2 + app0..]].concat();
    let mut spec = Spec::eight_bit(h as u16, w as u16);
    spec.photometric = "RGB";
    let decode_rgb = |stream: &[u8]| {
        let mut fragment = stream.to_vec();
        if fragment.len() % 2 == 1 {
            fragment.push(0);
        }
        let mut obj = dataset(&spec);
        obj.put(us(tags::SAMPLES_PER_PIXEL, 3));
        obj.put(us(tags::PLANAR_CONFIGURATION, 0));
        decode(&file(obj, encapsulated(fragment), JPEG_BASELINE)).unwrap()
    };
    let level = |d: &cxr_triage::imaging::Decoded, x: usize| d.image.pixels[x] as f64 / 257.0;
    let with = decode_rgb(&jfif);
    assert!(level(&with, 0) < 3.0 && level(&with, 63) > 252.0);
    // Untransformed: (x, 128, 128) read as R, G, B, so luminance 0.299 x + 0.701 * 128. A
    // truncated Adobe segment (10 bytes, no transform byte: pydicom's SC_rgb_jpeg.dcm) says
    // nothing either.
    let truncated_adobe = [
        &bare[..2],
        &[0xFF, 0xEE, 0x00, 0x0C],
        b"Adobe\0\0\0\0\0",
        &bare[2..],
    ]
    .concat();
    for stream in [&bare, &truncated_adobe] {
        let without = decode_rgb(stream);
        for x in [0usize, 32, 63] {
            let want = 0.299 * (x as f64 * 255.0 / 63.0).floor() + 0.701 * 128.0;
            assert!(
                (level(&without, x) - want).abs() < 3.0,
                "x {x}: {} want {want}",
                level(&without, x)
            );
        }
    }
}

/// A data set written in implicit VR under a meta group that declares explicit VR (pydicom's
/// SC_rgb_jpeg.dcm; pydicom reads it with a warning): read as implicit, not refused for the
/// "unknown VR" its tag bytes make.
#[test]
fn an_implicit_data_set_under_an_explicit_meta_group_is_read() {
    let spec = Spec::eight_bit(8, 12);
    let values = ramp(&spec, 255);
    let explicit = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    let implicit = file(dataset(&spec), native_pixels(&spec, &values), IMPLICIT_LE);
    let mixed = [
        &explicit[..data_set_start(&explicit)],
        &implicit[data_set_start(&implicit)..],
    ]
    .concat();
    let want = decode(&implicit).unwrap();
    let got = decode(&mixed).unwrap();
    assert_eq!(got.image, want.image);
    assert_eq!(got.image.pixels[values.len() - 1], 65535);
}

/// The viewer's film keeps what the VOI window clips: the rescaled values spread over 16 bits,
/// the file's own window named in the same samples, units to show it in; the model's image is
/// the windowed one, unchanged.
#[test]
fn the_film_keeps_the_values_the_window_clips_and_names_the_files_window() {
    use cxr_triage::imaging::decode_film;
    let spec = twelve_bit_windowed();
    let values = ramp(&spec, 4095);
    let bytes = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    let (decoded, film) = decode_film(&bytes, &Limits::default()).unwrap();
    assert_eq!(decoded.image, decode(&bytes).unwrap().image);
    // Values -1000..7190: every stored value keeps its own sample, none clipped.
    let (offset, scale) = film.units.unwrap();
    for (&v, &s) in values.iter().zip(&film.image.pixels) {
        let value = offset + scale * s as f64;
        assert!(
            (value - (2.0 * v as f64 - 1000.0)).abs() < 0.2,
            "{v}: {value}"
        );
    }
    let distinct: std::collections::BTreeSet<u16> = film.image.pixels.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        values.len(),
        "a 16x16 ramp: 256 distinct samples"
    );
    // The file's window, in the film's samples, shows as its own centre and width.
    let w = film.window.unwrap();
    assert_eq!(film.describe(w), "W 2000 L 1000");
    // Through that window the film looks like the decoded image (within rounding).
    let shown = cxr_triage::imaging::render(&film.image, w, false);
    for (&a, &b) in shown.pixels.iter().zip(&decoded.image.pixels) {
        assert!((a as i32 - (b >> 8) as i32).abs() <= 1, "{a} vs {}", b >> 8);
    }
}

#[test]
fn a_monochrome1_film_is_turned_so_bone_is_bright_and_its_units_follow() {
    use cxr_triage::imaging::decode_film;
    let spec = Spec {
        photometric: "MONOCHROME1",
        ..Spec::eight_bit(8, 8)
    };
    let values = ramp(&spec, 255);
    let bytes = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    let (_, film) = decode_film(&bytes, &Limits::default()).unwrap();
    assert_eq!(
        film.image.pixels[0], 65535,
        "stored 0 is white in MONOCHROME1"
    );
    assert_eq!(*film.image.pixels.last().unwrap(), 0);
    let (offset, scale) = film.units.unwrap();
    assert_eq!(offset + scale * 65535.0, 0.0);
    assert_eq!(offset, 255.0);
    assert_eq!(film.window, None, "no window in the file");
}

/// A deflated data set (1.2.840.10008.1.2.1.99) that inflates 1,000-fold (64 MiB of one private
/// OB element from 64 kB): refused before the parser inflates it again; a deflated data set of
/// ordinary size still reads; one whose meta group length disagrees with its elements is
/// refused (fuzz found a 47 kB file like that which peaked at 1.8 GB in `scan`).
#[test]
fn a_deflate_bomb_is_refused_and_an_ordinary_deflated_file_reads() {
    use std::io::Write;
    let spec = Spec::eight_bit(8, 12);
    let values = ramp(&spec, 255);
    let explicit = file(dataset(&spec), native_pixels(&spec, &values), EXPLICIT_LE);
    let start = data_set_start(&explicit);
    let deflated_file = |data_set: &[u8]| {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data_set).unwrap();
        let body = z.finish().unwrap();
        // The same meta group, naming the deflated syntax (both UIDs are padded to 20/22 bytes).
        let mut meta = explicit[..start].to_vec();
        let at = meta
            .windows(20)
            .position(|w| w == b"1.2.840.10008.1.2.1\0")
            .unwrap();
        meta.splice(
            at - 2..at + 20,
            [&22u16.to_le_bytes()[..], b"1.2.840.10008.1.2.1.99"].concat(),
        );
        let group = (meta.len() - 144) as u32;
        meta[140..144].copy_from_slice(&group.to_le_bytes());
        [meta, body].concat()
    };
    let ordinary = deflated_file(&explicit[start..]);
    assert_eq!(
        decode(&ordinary).unwrap().image,
        decode(&explicit).unwrap().image
    );
    let mut bomb = explicit[start..].to_vec();
    bomb.extend([0x11, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
    bomb.extend((64u32 << 20).to_le_bytes());
    bomb.resize(bomb.len() + (64 << 20), 0);
    let message = decode(&deflated_file(&bomb)).err().unwrap().to_string();
    assert!(message.contains("deflate bomb"), "{message}");
    // A meta group whose length disagrees with its elements: the check and the parser would
    // start the data set (and the inflation) at different bytes. Refused.
    let mut skewed = ordinary.clone();
    let length = u32::from_le_bytes(skewed[140..144].try_into().unwrap());
    skewed[140..144].copy_from_slice(&(length + 16).to_le_bytes());
    let message = decode(&skewed).err().unwrap().to_string();
    assert!(message.contains("meta group's length"), "{message}");
}

/// A binary element whose length is not a whole number of its values (a 6-byte FD, Physical
/// Delta X, in implicit VR: the dictionary says FD): dicom-rs reads whole values only and loses
/// its place (a fuzzed RT Plan made it reserve 806 MB from the next element's value). Refused;
/// the same element with 8 bytes reads.
#[test]
fn a_binary_element_of_a_partial_value_is_refused() {
    let spec = Spec::eight_bit(8, 12);
    let values = ramp(&spec, 255);
    let plain = file(dataset(&spec), native_pixels(&spec, &values), IMPLICIT_LE);
    // Before the first (0028,xxxx) element, so that the tags stay in order.
    let at = plain
        .windows(4)
        .position(|w| w == [0x28, 0x00, 0x02, 0x00])
        .unwrap();
    let with = |len: u32| {
        let mut bytes = plain[..at].to_vec();
        bytes.extend([0x18, 0x00, 0x2C, 0x60]);
        bytes.extend(len.to_le_bytes());
        bytes.extend(vec![0u8; len as usize]);
        bytes.extend(&plain[at..]);
        bytes
    };
    assert_eq!(
        decode(&with(8)).unwrap().image,
        decode(&plain).unwrap().image
    );
    let message = decode(&with(6)).err().unwrap().to_string();
    assert!(
        message.contains("not a whole number of 8-byte values"),
        "{message}"
    );
}
