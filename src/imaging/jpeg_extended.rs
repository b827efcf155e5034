//! JPEG Extended (ITU T.81 process 2 and 4: sequential DCT, Huffman coding, 8- or 12-bit
//! samples) for one-component images: DICOM's transfer syntax 1.2.840.10008.1.2.4.51, which
//! old CR archives use for 12-bit films. jpeg-decoder parses 12-bit frames but refuses to
//! decode them, and no other pure-Rust decoder reads them.
//!
//! Written for hostile input: every length is checked against the bytes left, the frame's size
//! against the pixel limit before anything is allocated, and a stream that ends early is an
//! error, never a panic or a loop.

/// Natural (row-major) index of the k-th coefficient in zig-zag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// A decoded image: width, height and the samples (8 or 12 bits), row-major.
pub struct Gray {
    pub width: u32,
    pub height: u32,
    pub samples: Vec<u16>,
}

/// A Huffman table as T.81 F.2.2.3 decodes it: per code length, the largest code, and where
/// that length's values start.
#[derive(Clone)]
struct Huffman {
    max_code: [i32; 17],
    offset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, String> {
        let (mut max_code, mut offset) = ([-1i32; 17], [0i32; 17]);
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = counts[len - 1] as i32;
            offset[len] = k - code;
            if n > 0 {
                code += n;
                k += n;
                max_code[len] = code - 1;
            }
            if code > 1 << len {
                return Err("a Huffman table with more codes than its lengths allow".into());
            }
            code <<= 1;
        }
        Ok(Huffman {
            max_code,
            offset,
            values,
        })
    }
}

/// The entropy-coded bits of a scan, with byte stuffing (FF 00) undone; a marker ends them.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    acc: u32,
    have: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            at: 0,
            acc: 0,
            have: 0,
        }
    }

    fn bit(&mut self) -> Result<u32, String> {
        if self.have == 0 {
            let byte = match self.data.get(self.at) {
                Some(0xFF) if self.data.get(self.at + 1) == Some(&0) => {
                    self.at += 2;
                    0xFF
                }
                Some(0xFF) | None => {
                    return Err("the JPEG stream ends inside a block (truncated)".into());
                }
                Some(&b) => {
                    self.at += 1;
                    b
                }
            };
            self.acc = byte as u32;
            self.have = 8;
        }
        self.have -= 1;
        Ok((self.acc >> self.have) & 1)
    }

    fn bits(&mut self, n: u32) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, String> {
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bit()? as i32;
            if code <= table.max_code[len] {
                let i = (code + table.offset[len]) as usize;
                return table
                    .values
                    .get(i)
                    .copied()
                    .ok_or_else(|| "a Huffman code past its table".to_string());
            }
        }
        Err("an invalid Huffman code".into())
    }

    /// T.81 F.2.2.1: `s` bits as a signed coefficient difference.
    fn receive_extend(&mut self, s: u8) -> Result<i32, String> {
        if s == 0 {
            return Ok(0);
        }
        if s > 16 {
            return Err(format!("a coefficient of {s} bits"));
        }
        let v = self.bits(s as u32)? as i32;
        Ok(if v < 1 << (s - 1) {
            v - (1 << s) + 1
        } else {
            v
        })
    }

    /// At a restart interval's end: drop the partial byte and step over the RSTn marker.
    fn restart(&mut self) -> Result<(), String> {
        self.have = 0;
        match (self.data.get(self.at), self.data.get(self.at + 1)) {
            (Some(0xFF), Some(0xD0..=0xD7)) => {
                self.at += 2;
                Ok(())
            }
            _ => Err("a restart marker is missing".into()),
        }
    }
}

fn u16_at(data: &[u8], at: usize) -> Result<usize, String> {
    data.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| "the JPEG stream is truncated".to_string())
}

/// Decode a one-component sequential-DCT Huffman JPEG (8- or 12-bit), refusing frames over
/// `max_pixels`.
pub fn decode(data: &[u8], max_pixels: u64) -> Result<Gray, String> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG stream (no SOI marker)".into());
    }
    let mut quant = [[0u16; 64]; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut frame: Option<(u32, u32, u8, usize)> = None;
    let mut restart_interval = 0usize;
    let mut at = 2;
    loop {
        // Fill bytes (FF FF ...) may precede a marker.
        while data.get(at) == Some(&0xFF) && data.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let marker = match (data.get(at), data.get(at + 1)) {
            (Some(0xFF), Some(&m)) => m,
            _ => return Err("the JPEG stream ends before its scan".into()),
        };
        at += 2;
        if marker == 0xD9 {
            return Err("the JPEG stream ends before its scan".into());
        }
        let len = u16_at(data, at)?;
        let body = data
            .get(at + 2..at + len.max(2))
            .ok_or("a JPEG segment runs past the end of the stream")?;
        match marker {
            0xC0 | 0xC1 => {
                let [precision, h0, h1, w0, w1, components, ..] = *body else {
                    return Err("a truncated frame header".into());
                };
                let (height, width) = (
                    u16::from_be_bytes([h0, h1]) as u32,
                    u16::from_be_bytes([w0, w1]) as u32,
                );
                if !matches!(precision, 8 | 12) {
                    return Err(format!("sample precision {precision}"));
                }
                if components != 1 {
                    return Err(format!(
                        "{components}-component JPEG Extended (one component is read)"
                    ));
                }
                if width == 0 || height == 0 {
                    return Err(format!("a JPEG frame of {width}x{height}"));
                }
                if width as u64 * height as u64 > max_pixels {
                    return Err(format!("a JPEG frame of {width}x{height} pixels"));
                }
                let table = *body.get(8).ok_or("a truncated frame header")? as usize;
                frame = Some((width, height, precision, table & 3));
            }
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(format!(
                    "JPEG process SOF{} (read: sequential DCT with Huffman coding)",
                    marker - 0xC0
                ));
            }
            0xC4 => {
                let mut i = 0;
                while i < body.len() {
                    let class_id = body[i];
                    let counts: [u8; 16] = body
                        .get(i + 1..i + 17)
                        .ok_or("a truncated Huffman table")?
                        .try_into()
                        .expect("16 bytes");
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    let values = body
                        .get(i + 17..i + 17 + n)
                        .ok_or("a truncated Huffman table")?
                        .to_vec();
                    let table = Some(Huffman::new(&counts, values)?);
                    let id = (class_id & 3) as usize;
                    if class_id >> 4 == 0 {
                        dc[id] = table;
                    } else {
                        ac[id] = table;
                    }
                    i += 17 + n;
                }
            }
            0xDB => {
                let mut i = 0;
                while i < body.len() {
                    let (wide, id) = (body[i] >> 4 != 0, (body[i] & 3) as usize);
                    let size = if wide { 128 } else { 64 };
                    let values = body
                        .get(i + 1..i + 1 + size)
                        .ok_or("a truncated quantisation table")?;
                    for (k, q) in quant[id].iter_mut().enumerate() {
                        *q = if wide {
                            u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
                        } else {
                            values[k] as u16
                        };
                    }
                    i += 1 + size;
                }
            }
            0xDD => restart_interval = u16_at(body, 0)?,
            0xDA => {
                let (width, height, precision, q) =
                    frame.ok_or("a scan before the frame header")?;
                let [count, _, tables, ..] = *body else {
                    return Err("a truncated scan header".into());
                };
                if count != 1 {
                    return Err(format!("a scan of {count} components"));
                }
                let dc = dc[(tables >> 4 & 3) as usize]
                    .as_ref()
                    .ok_or("a scan without its DC Huffman table")?;
                let ac = ac[(tables & 3) as usize]
                    .as_ref()
                    .ok_or("a scan without its AC Huffman table")?;
                let scan = Scan {
                    width,
                    height,
                    precision,
                    quant: &quant[q],
                    dc,
                    ac,
                    restart_interval,
                };
                return scan.decode(&data[at + len..]);
            }
            // APPn, COM, DNL and the rest: skipped.
            _ => {}
        }
        at += len;
    }
}

/// What one scan needs.
struct Scan<'a> {
    width: u32,
    height: u32,
    precision: u8,
    quant: &'a [u16; 64],
    dc: &'a Huffman,
    ac: &'a Huffman,
    restart_interval: usize,
}

impl Scan<'_> {
    fn decode(&self, data: &[u8]) -> Result<Gray, String> {
        let (bw, bh) = (
            self.width.div_ceil(8) as usize,
            self.height.div_ceil(8) as usize,
        );
        let stride = bw * 8;
        let mut plane = vec![0f32; stride * bh * 8];
        let cosines = cosines();
        let mut bits = Bits::new(data);
        let mut predictor = 0i32;
        for block in 0..bw * bh {
            if self.restart_interval > 0 && block > 0 && block % self.restart_interval == 0 {
                bits.restart()?;
                predictor = 0;
            }
            let mut coefficients = [0f32; 64];
            let t = bits.decode(self.dc)?;
            predictor += bits.receive_extend(t)?;
            coefficients[0] = predictor as f32 * self.quant[0] as f32;
            let mut k = 1;
            while k < 64 {
                let rs = bits.decode(self.ac)?;
                let (run, size) = ((rs >> 4) as usize, rs & 15);
                if size == 0 {
                    if run == 15 {
                        k += 16;
                        continue;
                    }
                    break;
                }
                k += run;
                if k > 63 {
                    return Err("a block with more than 64 coefficients".into());
                }
                coefficients[ZIGZAG[k]] = bits.receive_extend(size)? as f32 * self.quant[k] as f32;
                k += 1;
            }
            let (bx, by) = (block % bw, block / bw);
            idct(
                &coefficients,
                &cosines,
                &mut plane[by * 8 * stride + bx * 8..],
                stride,
            );
        }
        let max = ((1u32 << self.precision) - 1) as f32;
        let shift = (1u32 << (self.precision - 1)) as f32;
        let (w, h) = (self.width as usize, self.height as usize);
        let samples = (0..h)
            .flat_map(|y| plane[y * stride..y * stride + w].iter())
            .map(|&v| (v + shift).round().clamp(0.0, max) as u16)
            .collect();
        Ok(Gray {
            width: self.width,
            height: self.height,
            samples,
        })
    }
}

/// `c[x][u]` = C(u) cos((2x + 1) u pi / 16) / 2, C(0) = 1/sqrt 2.
fn cosines() -> [[f32; 8]; 8] {
    let mut c = [[0f32; 8]; 8];
    for (x, row) in c.iter_mut().enumerate() {
        for (u, v) in row.iter_mut().enumerate() {
            let scale = if u == 0 {
                std::f32::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            *v = scale * ((2 * x + 1) as f32 * u as f32 * std::f32::consts::PI / 16.0).cos() / 2.0;
        }
    }
    c
}

/// The inverse DCT of one block (row-major coefficients) into `out`, rows `stride` apart:
/// separable, columns then rows.
fn idct(coefficients: &[f32; 64], c: &[[f32; 8]; 8], out: &mut [f32], stride: usize) {
    let mut tmp = [0f32; 64];
    for u in 0..8 {
        for y in 0..8 {
            tmp[y * 8 + u] = (0..8).map(|v| c[y][v] * coefficients[v * 8 + u]).sum();
        }
    }
    for y in 0..8 {
        for x in 0..8 {
            out[y * stride + x] = (0..8).map(|u| c[x][u] * tmp[y * 8 + u]).sum();
        }
    }
}
