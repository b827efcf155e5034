//! A structural pass over a DICOM file before dicom-rs parses it. The parser trusts each
//! element's declared length and reserves that much memory; a 452-byte file that declares a
//! 1.6 GB element made it allocate (and zero) gigabytes (found by `fuzz/`, decode target). Here
//! every declared length must fit in the bytes that are left, and nesting is bounded, so the
//! parser only ever sees lengths the file can back.

const MAX_DEPTH: u32 = 32;

/// The value representations of the standard (PS3.5 6.2).
const KNOWN_VRS: [&[u8; 2]; 34] = [
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
];

/// The size of one value of a binary VR: a value length that is not a multiple of it makes
/// dicom-rs read whole values only and lose its place (a fuzzed 6-byte FD element: it then read
/// an 806 MB length from the next element's value).
fn value_size(vr: &[u8; 2]) -> Option<usize> {
    match vr {
        b"SS" | b"US" | b"OW" => Some(2),
        b"AT" | b"FL" | b"SL" | b"UL" | b"OF" | b"OL" => Some(4),
        b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => Some(8),
        _ => None,
    }
}

/// The VR the standard dictionary gives a tag (what dicom-rs reads an implicit VR element as).
fn dictionary_vr(group: u16, element: u16) -> Option<[u8; 2]> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    let entry =
        dicom_dictionary_std::StandardDataDictionary.by_tag(dicom_core::Tag(group, element))?;
    match entry.vr() {
        VirtualVr::Exact(vr) => vr.to_string().as_bytes().try_into().ok(),
        _ => None,
    }
}

/// How a data set is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enc {
    pub explicit: bool,
    pub big: bool,
}

pub const IMPLICIT_LE: Enc = Enc {
    explicit: false,
    big: false,
};

pub const EXPLICIT_LE: Enc = Enc {
    explicit: true,
    big: false,
};

/// One element header: tag, VR (explicit encodings), value length, header size in bytes.
struct Header {
    group: u16,
    element: u16,
    vr: Option<[u8; 2]>,
    len: u32,
    size: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    enc: Enc,
    /// Item lengths to rewrite before parsing: (offset of the length, its new bytes).
    fixes: std::cell::RefCell<Vec<(usize, [u8; 4])>>,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], enc: Enc) -> Self {
        Reader {
            b,
            enc,
            fixes: Default::default(),
        }
    }

    fn u16(&self, at: usize) -> Result<u16, String> {
        let s = self.b.get(at..at + 2).ok_or_else(truncated)?;
        Ok(if self.enc.big {
            u16::from_be_bytes([s[0], s[1]])
        } else {
            u16::from_le_bytes([s[0], s[1]])
        })
    }

    fn u32(&self, at: usize) -> Result<u32, String> {
        let s = self.b.get(at..at + 4).ok_or_else(truncated)?;
        let a = [s[0], s[1], s[2], s[3]];
        Ok(if self.enc.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    /// Read one element header at `at`.
    fn header(&self, at: usize) -> Result<Header, String> {
        let (group, element) = (self.u16(at)?, self.u16(at + 2)?);
        if group == 0xFFFE || !self.enc.explicit {
            return Ok(Header {
                group,
                element,
                vr: None,
                len: self.u32(at + 4)?,
                size: 8,
            });
        }
        let vr = self.b.get(at + 4..at + 6).ok_or_else(truncated)?;
        let vr = [vr[0], vr[1]];
        // An unknown VR is read by the parser as UN with a 4-byte length taken from what
        // follows: a fuzzer-made "$S" turned the next tag into a 2 GB length.
        if !KNOWN_VRS.contains(&&vr) {
            return Err(format!(
                "element ({group:04X},{element:04X}) has an unknown VR {:?}",
                String::from_utf8_lossy(&vr)
            ));
        }
        if matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        ) {
            Ok(Header {
                group,
                element,
                vr: Some(vr),
                len: self.u32(at + 8)?,
                size: 12,
            })
        } else {
            Ok(Header {
                group,
                element,
                vr: Some(vr),
                len: self.u16(at + 6)? as u32,
                size: 8,
            })
        }
    }

    /// Check the elements in `at..end`; with `until_item_end`, stop after an item delimiter.
    /// Returns where the walk stopped.
    fn elements(
        &self,
        mut at: usize,
        end: usize,
        depth: u32,
        until_item_end: bool,
    ) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        while at < end {
            let Header {
                group,
                element,
                vr,
                len,
                size,
            } = self.header(at)?;
            at += size;
            if group == 0xFFFE && element == 0xE00D {
                if until_item_end {
                    return Ok(at);
                }
                continue;
            }
            let name = format!("element ({group:04X},{element:04X})");
            if len == u32::MAX {
                at = self.sequence(at, end, depth + 1, &name)?;
                continue;
            }
            let len = len as usize;
            if len > end - at.min(end) {
                return Err(format!(
                    "{name} declares {len} bytes but only {} are left (truncated or corrupt)",
                    end.saturating_sub(at)
                ));
            }
            // PS3.5 7.1.1: value lengths are even. An odd one shifts every later element, and
            // the parser and this check would no longer agree on where elements start (a
            // fuzzer-made 3-byte group length hid a 4 GB length from this check).
            if len % 2 == 1 {
                return Err(format!("{name} has an odd length ({len})"));
            }
            // In implicit VR the parser reads an element as the dictionary's VR.
            let known = vr.or_else(|| dictionary_vr(group, element));
            if let Some(size) = known.as_ref().and_then(value_size)
                && !len.is_multiple_of(size)
            {
                let code = String::from_utf8_lossy(&known.unwrap_or_default()).into_owned();
                return Err(format!(
                    "{name} ({code}) has {len} bytes, not a whole number of {size}-byte values"
                ));
            }
            // Items inside a defined-length sequence (SQ, also by the dictionary in implicit VR,
            // or anything there that starts with an item tag) are checked too: their lengths
            // are trusted the same way.
            let looks_like_items = known == Some(*b"SQ")
                || (vr.is_none()
                    && len >= 8
                    && self.u16(at)? == 0xFFFE
                    && self.u16(at + 2)? == 0xE000);
            if looks_like_items {
                self.sequence(at, at + len, depth + 1, &name)?;
            }
            at += len;
        }
        Ok(at)
    }

    /// Check the items of a sequence starting at `at` (undefined length: up to the sequence
    /// delimiter; defined: up to `end`). Returns the position after it.
    fn sequence(&self, mut at: usize, end: usize, depth: u32, name: &str) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH} levels"));
        }
        while at < end {
            let (group, element, len) = (self.u16(at)?, self.u16(at + 2)?, self.u32(at + 4)?);
            at += 8;
            match (group, element) {
                (0xFFFE, 0xE0DD) => return Ok(at),
                (0xFFFE, 0xE000) if len == u32::MAX => {
                    at = self.elements(at, end, depth + 1, true)?;
                }
                (0xFFFE, 0xE000) => {
                    let mut len = len as usize;
                    let fragments = name.contains("(7FE0,0010)");
                    if len > end.saturating_sub(at) {
                        // A pixel data fragment is read into memory at its declared length.
                        if fragments {
                            return Err(format!(
                                "an item of {name} declares {len} bytes but only {} are left \
                                 (truncated or corrupt)",
                                end.saturating_sub(at)
                            ));
                        }
                        // An item's length reserves nothing: one that overshoots its sequence
                        // (pydicom's DICOMDIR-nooffset lost two elements and kept the last
                        // item's length) is read to the sequence's end, as pydicom does; the
                        // parser, which would stop at the end of the data, is given that length.
                        len = end.saturating_sub(at);
                        let bytes = if self.enc.big {
                            (len as u32).to_be_bytes()
                        } else {
                            (len as u32).to_le_bytes()
                        };
                        self.fixes.borrow_mut().push((at - 4, bytes));
                    }
                    // Encapsulated pixel data fragments are bytes, not elements.
                    if !fragments {
                        self.elements(at, at + len, depth + 1, false)?;
                    }
                    at += len;
                }
                _ => {
                    return Err(format!(
                        "{name}: expected an item, found ({group:04X},{element:04X})"
                    ));
                }
            }
        }
        Ok(at)
    }
}

fn truncated() -> String {
    "the file ends inside an element header (truncated)".into()
}

/// A data set that is implicit VR little endian although its meta group declares an explicit
/// VR transfer syntax (pydicom reads such files, with a warning): where the data set starts and
/// the transfer syntax declared (its pixel data's encoding).
#[derive(Debug, PartialEq, Eq)]
pub struct ImplicitInstead {
    pub at: usize,
    pub syntax: String,
}

/// How many times its size a deflated data set may inflate to (plus 1 MiB): film compresses a
/// few times, a blank secondary capture a few hundred; deflate's own limit is about 1,032.
pub const MAX_DEFLATE_RATIO: u64 = 200;

/// Check a file whose `DICM` marker is at `bytes[0..4]` (meta group follows), or, with
/// `bare`, a data set in that encoding from byte 0. A deflated data set is inflated (at most
/// `max_inflated` bytes) and checked as explicit VR little endian. A data set declared explicit
/// VR little endian whose first element has no VR letters is checked as implicit VR and
/// reported as [`ImplicitInstead`].
pub fn check(bytes: &[u8], bare: Option<Enc>, max_inflated: u64) -> Result<Checked, String> {
    let walk = |r: Reader, at: usize, implicit: Option<ImplicitInstead>| {
        r.elements(at, r.b.len(), 0, false)?;
        Ok(Checked {
            implicit,
            fixes: r.fixes.into_inner(),
        })
    };
    if let Some(enc) = bare {
        return walk(Reader::new(bytes, enc), 0, None);
    }
    // The meta group: explicit VR little endian, group 0002, and it names the transfer syntax.
    let meta = Reader::new(bytes, EXPLICIT_LE);
    let mut at = 4;
    let mut syntax = String::new();
    // Where File Meta Information Group Length (0002,0000) says the group ends.
    let mut declared_end = None;
    while at + 4 <= bytes.len() && meta.u16(at)? == 0x0002 {
        let Header {
            element, len, size, ..
        } = meta.header(at)?;
        let (start, len) = (at + size, len as usize);
        if len > bytes.len().saturating_sub(start) {
            return Err(format!(
                "meta element (0002,{element:04X}) declares {len} bytes but only {} are left",
                bytes.len().saturating_sub(start)
            ));
        }
        if element == 0x0010 {
            syntax = String::from_utf8_lossy(&bytes[start..start + len])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        if element == 0x0000 && len == 4 && at == 4 {
            let v = &bytes[start..start + 4];
            declared_end = Some(start + 4 + u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize);
        }
        at = start + len;
    }
    // The parser ends the group where its length says: the data set must start there for
    // both (a fuzzed file whose last meta element left group 0002 made the check inflate
    // from one place and the parser from another, 1.8 GB for a 47 kB file).
    if let Some(end) = declared_end
        && end != at
    {
        return Err(format!(
            "the file meta group's length says it ends {end} bytes after DICM, its group 0002 \
             elements end at {at}"
        ));
    }
    let enc = match syntax.as_str() {
        "1.2.840.10008.1.2" => Enc {
            explicit: false,
            big: false,
        },
        "1.2.840.10008.1.2.2" => Enc {
            explicit: true,
            big: true,
        },
        // Deflated: the parser inflates the data set and then trusts its lengths like any
        // other (a 4.6 kB file made it allocate 3.5 GB: found by `fuzz/`), so check the
        // inflated bytes. It inflates them again and keeps every value, so a bomb that
        // inflated to the byte limit cost 1.8 GB for a 47 kB file: the inflated size is also
        // bounded by a ratio no real data set needs.
        "1.2.840.10008.1.2.1.99" => {
            use std::io::Read;
            let deflated = bytes.len().saturating_sub(at) as u64;
            let by_ratio = deflated.saturating_mul(MAX_DEFLATE_RATIO) + (1 << 20);
            let cap = max_inflated.min(by_ratio);
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(&bytes[at..])
                .take(cap + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("deflated data set: {e}"))?;
            if inflated.len() as u64 > cap {
                return Err(if cap == max_inflated {
                    format!("deflated data set inflates past {max_inflated} bytes")
                } else {
                    format!(
                        "deflated data set of {deflated} bytes inflates past {cap} bytes (more \
                         than {MAX_DEFLATE_RATIO} times its size): refused as a likely deflate bomb"
                    )
                });
            }
            let checked = walk(Reader::new(&inflated, EXPLICIT_LE), 0, None)?;
            if !checked.fixes.is_empty() {
                return Err("deflated data set with an item longer than its sequence".into());
            }
            return Ok(checked);
        }
        _ => EXPLICIT_LE,
    };
    let vr_letters = bytes
        .get(at + 4..at + 6)
        .is_none_or(|vr| vr.iter().all(u8::is_ascii_uppercase));
    if enc == EXPLICIT_LE && !vr_letters {
        let implicit = Some(ImplicitInstead { at, syntax });
        return walk(Reader::new(bytes, IMPLICIT_LE), at, implicit);
    }
    walk(Reader::new(bytes, enc), at, None)
}

/// What [`check`] found acceptable, and what the parser needs to be told.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The data set is implicit VR although the meta group says otherwise.
    pub implicit: Option<ImplicitInstead>,
    /// Item lengths that overshoot their sequence, to rewrite (offset, new bytes).
    fixes: Vec<(usize, [u8; 4])>,
}

impl Checked {
    /// The bytes with the overshooting item lengths cut to their sequence (a copy only when
    /// there is one).
    pub fn apply<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.fixes.is_empty() {
            return bytes.into();
        }
        let mut fixed = bytes.to_vec();
        for &(at, len) in &self.fixes {
            fixed[at..at + 4].copy_from_slice(&len);
        }
        fixed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn implicit(group: u16, element: u16, value: &[u8]) -> Vec<u8> {
        let mut v = group.to_le_bytes().to_vec();
        v.extend(element.to_le_bytes());
        v.extend((value.len() as u32).to_le_bytes());
        v.extend(value);
        v
    }

    #[test]
    fn lengths_that_fit_pass_and_lengths_that_do_not_are_named() {
        let mut ok = implicit(0x0008, 0x0060, b"DX");
        ok.extend(implicit(0x0028, 0x0010, &16u16.to_le_bytes()));
        assert_eq!(
            check(&ok, Some(IMPLICIT_LE), u64::MAX),
            Ok(Checked::default())
        );
        let mut bad = ok.clone();
        bad.extend([0x28, 0x00, 0x02, 0x01]);
        bad.extend(0x6365_7073u32.to_le_bytes());
        bad.extend([0u8; 20]);
        let err = check(&bad, Some(IMPLICIT_LE), u64::MAX).unwrap_err();
        assert!(
            err.contains("(0028,0102) declares 1667592307 bytes but only 20"),
            "{err}"
        );
    }

    #[test]
    fn odd_lengths_are_refused() {
        let mut b = implicit(0x0008, 0x0060, b"DX");
        b.extend(implicit(0x0000, 0x0000, b"abc"));
        b.extend([0u8; 16]);
        let err = check(&b, Some(IMPLICIT_LE), u64::MAX).unwrap_err();
        assert!(err.contains("(0000,0000) has an odd length (3)"), "{err}");
    }

    #[test]
    fn an_unknown_vr_is_refused() {
        // DICM, then (0002,0010) UI "1.2.840.10008.1.2.1", then (0028,0103) with VR "$S".
        let mut b = b"DICM".to_vec();
        b.extend([0x02, 0x00, 0x10, 0x00, b'U', b'I', 20, 0]);
        b.extend(b"1.2.840.10008.1.2.1\0");
        let unknown = [
            0x28, 0x00, 0x03, 0x01, b'$', b'S', 2, 0, 0, 0, 0xE0, 0x7F, 0x10, 0x00,
        ];
        // After a well-formed first element: refused as an unknown VR.
        let mut mid = b.clone();
        mid.extend([0x08, 0x00, 0x60, 0x00, b'C', b'S', 2, 0, b'D', b'X']);
        mid.extend(unknown);
        let err = check(&mid, None, u64::MAX).unwrap_err();
        assert!(err.contains("(0028,0103) has an unknown VR"), "{err}");
        // As the first element (no VR letters: checked as implicit VR), its length is refused.
        b.extend(unknown);
        let err = check(&b, None, u64::MAX).unwrap_err();
        assert!(err.contains("(0028,0103) declares"), "{err}");
    }

    #[test]
    fn an_item_past_its_sequence_is_read_to_the_end_and_a_fragment_past_it_is_refused() {
        // (0004,1220) SQ of 20 bytes whose one item declares 30 (DICOMDIR-nooffset's last
        // record lost two elements and kept its length).
        let record = implicit(0x0004, 0x1430, b"IMAGE ");
        let mut b = vec![0x04, 0x00, 0x20, 0x12];
        b.extend((8 + record.len() as u32).to_le_bytes());
        b.extend([0xFE, 0xFF, 0x00, 0xE0]);
        b.extend((record.len() as u32 + 10).to_le_bytes());
        b.extend(&record);
        let checked = check(&b, Some(IMPLICIT_LE), u64::MAX).unwrap();
        let fixed = checked.apply(&b);
        assert_eq!(fixed[12..16], (record.len() as u32).to_le_bytes());
        assert_eq!(fixed[16..], b[16..]);
        assert_eq!(
            check(&fixed, Some(IMPLICIT_LE), u64::MAX),
            Ok(Checked::default())
        );
        // Encapsulated pixel data whose fragment declares more than is left.
        let mut px = vec![0xE0, 0x7F, 0x10, 0x00, 0xFF, 0xFF, 0xFF, 0xFF];
        px.extend([0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        px.extend([0xFE, 0xFF, 0x00, 0xE0, 0x00, 0x00, 0x10, 0x00]);
        px.extend([0u8; 64]);
        let err = check(&px, Some(IMPLICIT_LE), u64::MAX).unwrap_err();
        assert!(err.contains("declares 1048576 bytes but only 64"), "{err}");
    }

    #[test]
    fn undefined_length_sequences_are_walked_and_depth_is_bounded() {
        // (0008,1140) SQ, undefined length, one undefined-length item holding one element.
        let mut seq = vec![0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF];
        seq.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        seq.extend(implicit(0x0008, 0x1150, b"1.2\0"));
        seq.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        seq.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        assert_eq!(
            check(&seq, Some(IMPLICIT_LE), u64::MAX),
            Ok(Checked::default())
        );
        // 40 nested undefined-length sequences.
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend([0x08, 0x00, 0x40, 0x11, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let err = check(&deep, Some(IMPLICIT_LE), u64::MAX).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
    }
}
