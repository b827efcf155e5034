//! JPEG-LS (ITU-T T.87, ISO/IEC 14495-1) decoding: lossless and near-lossless, 1 to 4
//! components in one scan each (no interleave) or together (line or sample interleave), 2 to
//! 16 bits, with the LSE marker's preset parameters.
//!
//! Our own because the one pure-Rust decoder (pure_jpegls) reads one component only and
//! dicom-pixeldata reads JPEG-LS only through CharLS (C++). The coding follows T.87 and
//! CharLS's reading of it: shared context variables for every component of a scan, one run
//! index per component in line interleave, one for all of them in sample interleave.
//! Refused, by name: restart intervals, mapping tables, point transforms, subsampled
//! components, HP's colour transform. Every length is bounded and the frame's size must be the
//! one the caller expects before anything is allocated.

/// A decoded frame: `samples[(y * width + x) * components + c]`.
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub components: usize,
    pub samples: Vec<u16>,
}

const J: [u32; 32] = [
    0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13,
    14, 15,
];

/// Decodes a JPEG-LS stream (SOI to EOI) whose frame must be `width` x `height` (what the
/// DICOM header says): checked before anything is allocated.
pub fn decode(data: &[u8], width: u32, height: u32) -> Result<Frame, String> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err("JPEG-LS stream does not start with SOI".into());
    }
    let mut pos = 2;
    let mut frame: Option<Header> = None;
    let mut preset = Preset::default();
    let mut out: Vec<u16> = Vec::new();
    let mut done: Vec<bool> = Vec::new();
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while data.get(pos) == Some(&0xFF) && data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let marker = match data.get(pos..pos + 2) {
            Some(&[0xFF, m]) => m,
            Some(_) => return Err(format!("JPEG-LS: no marker at byte {pos}")),
            None => break,
        };
        pos += 2;
        if marker == 0xD9 {
            break;
        }
        let len = match data.get(pos..pos + 2) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]) as usize,
            _ => return Err("JPEG-LS: stream ends inside a marker segment".into()),
        };
        let segment = data
            .get(pos + 2..pos + len.max(2))
            .ok_or("JPEG-LS: a marker segment runs past the end of the stream")?;
        pos += len.max(2);
        match marker {
            0xF7 => {
                if frame.is_some() {
                    return Err("JPEG-LS: a second frame header".into());
                }
                let header = Header::parse(segment, (width, height))?;
                let n = header.width as usize * header.height as usize * header.ids.len();
                out = vec![0; n];
                done = vec![false; header.ids.len()];
                frame = Some(header);
            }
            0xF8 => preset = Preset::parse(segment, preset)?,
            0xDA => {
                let header = frame
                    .as_ref()
                    .ok_or("JPEG-LS: a scan before the frame header")?;
                let scan = Scan::parse(segment, header, &mut done)?;
                let params = Params::new(header.precision, &preset, scan.near)?;
                pos += decode_scan(&data[pos..], header, &scan, &params, &mut out)?;
            }
            0xDD if segment.get(..2).is_some_and(|r| r != [0, 0]) => {
                return Err("JPEG-LS with restart intervals is not read".into());
            }
            0xE8 if segment.starts_with(b"mrfx") && segment.get(4).is_some_and(|&t| t != 0) => {
                return Err("JPEG-LS with HP's colour transform is not read".into());
            }
            0xC0..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => {
                return Err(format!("a JPEG stream (SOF{}), not JPEG-LS", marker - 0xC0));
            }
            _ => {}
        }
    }
    let header = frame.ok_or("JPEG-LS stream has no frame header")?;
    if let Some(c) = done.iter().position(|d| !d) {
        return Err(format!("JPEG-LS: component {} has no scan", header.ids[c]));
    }
    Ok(Frame {
        width: header.width,
        height: header.height,
        components: header.ids.len(),
        samples: out,
    })
}

/// The frame header (SOF55).
struct Header {
    precision: u32,
    width: u32,
    height: u32,
    ids: Vec<u8>,
}

impl Header {
    fn parse(s: &[u8], expected: (u32, u32)) -> Result<Self, String> {
        let short = || "JPEG-LS: short frame header".to_string();
        let &[p, y0, y1, x0, x1, nf, ..] = s else {
            return Err(short());
        };
        let (height, width) = (u16::from_be_bytes([y0, y1]), u16::from_be_bytes([x0, x1]));
        if !(2..=16).contains(&p) {
            return Err(format!("JPEG-LS precision {p} (read: 2 to 16 bits)"));
        }
        if width == 0 || height == 0 {
            return Err(format!(
                "JPEG-LS frame of {width}x{height} (a later line count or LSE sizes are not read)"
            ));
        }
        if !(1..=4).contains(&nf) {
            return Err(format!("JPEG-LS with {nf} components (read: 1 to 4)"));
        }
        if (width as u32, height as u32) != expected {
            return Err(format!(
                "JPEG-LS frame of {width}x{height}, the header says {}x{}",
                expected.0, expected.1
            ));
        }
        let spec = s.get(6..6 + 3 * nf as usize).ok_or_else(short)?;
        let mut ids = Vec::new();
        for c in spec.chunks_exact(3) {
            if c[1] != 0x11 {
                return Err("JPEG-LS with subsampled components is not read".into());
            }
            if ids.contains(&c[0]) {
                return Err(format!("JPEG-LS: component {} declared twice", c[0]));
            }
            ids.push(c[0]);
        }
        Ok(Header {
            precision: p as u32,
            width: width as u32,
            height: height as u32,
            ids,
        })
    }
}

/// The LSE marker's preset coding parameters; 0 means the default.
#[derive(Default, Clone, Copy)]
struct Preset {
    maxval: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
}

impl Preset {
    fn parse(s: &[u8], old: Preset) -> Result<Self, String> {
        match s.first() {
            Some(1) => {}
            Some(2 | 3) => return Err("JPEG-LS with mapping tables is not read".into()),
            Some(id) => return Err(format!("JPEG-LS LSE segment of type {id} is not read")),
            None => return Ok(old),
        }
        let v = |i: usize| -> Result<i32, String> {
            s.get(1 + 2 * i..3 + 2 * i)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as i32)
                .ok_or_else(|| "JPEG-LS: short LSE segment".to_string())
        };
        Ok(Preset {
            maxval: v(0)?,
            t1: v(1)?,
            t2: v(2)?,
            t3: v(3)?,
            reset: v(4)?,
        })
    }
}

/// A scan header (SOS): the frame's components it codes, NEAR and the interleave mode.
struct Scan {
    components: Vec<usize>,
    near: i32,
    interleave: u8,
}

impl Scan {
    fn parse(s: &[u8], frame: &Header, done: &mut [bool]) -> Result<Self, String> {
        let short = || "JPEG-LS: short scan header".to_string();
        let ns = *s.first().ok_or_else(short)? as usize;
        if !(1..=frame.ids.len()).contains(&ns) {
            return Err(format!("JPEG-LS scan of {ns} components"));
        }
        let spec = s.get(1..1 + 2 * ns).ok_or_else(short)?;
        let mut components = Vec::new();
        for c in spec.chunks_exact(2) {
            let i =
                frame.ids.iter().position(|&id| id == c[0]).ok_or_else(|| {
                    format!("JPEG-LS scan of component {}, not in the frame", c[0])
                })?;
            if done[i] {
                return Err(format!("JPEG-LS: component {} scanned twice", c[0]));
            }
            if c[1] != 0 {
                return Err("JPEG-LS with mapping tables is not read".into());
            }
            done[i] = true;
            components.push(i);
        }
        let tail = s.get(1 + 2 * ns..4 + 2 * ns).ok_or_else(short)?;
        let (near, interleave, point) = (tail[0], tail[1], tail[2]);
        if point & 0x0F != 0 {
            return Err("JPEG-LS with a point transform is not read".into());
        }
        if interleave > 2 || (ns > 1 && interleave == 0) {
            return Err(format!(
                "JPEG-LS scan of {ns} components with interleave mode {interleave}"
            ));
        }
        Ok(Scan {
            components,
            near: near as i32,
            interleave: if ns == 1 { 0 } else { interleave },
        })
    }
}

/// A scan's coding parameters (T.87 C.2.4.1).
struct Params {
    maxval: i32,
    near: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
    range: i32,
    qbpp: u32,
    limit: i32,
}

/// The number of bits to write values below `n + 1`: ceil(log2(n + 1)).
fn bits_for(n: i32) -> u32 {
    32 - (n.max(0) as u32).leading_zeros()
}

impl Params {
    fn new(precision: u32, p: &Preset, near: i32) -> Result<Self, String> {
        let maxval = if p.maxval == 0 {
            (1 << precision) - 1
        } else {
            p.maxval
        };
        if near > (maxval / 2).min(255) {
            return Err(format!("JPEG-LS NEAR {near} with MAXVAL {maxval}"));
        }
        let clamp = |i: i32, j: i32| if i > maxval || i < j { j } else { i };
        // The basic thresholds 3, 7 and 21, scaled to MAXVAL and widened by NEAR.
        let (d1, d2, d3) = if maxval >= 128 {
            let f = (maxval.min(4095) + 128) / 256;
            let t1 = clamp(f + 2 + 3 * near, near + 1);
            let t2 = clamp(f * (7 - 3) + 3 + 5 * near, t1);
            (t1, t2, clamp(f * (21 - 4) + 4 + 7 * near, t2))
        } else {
            let f = 256 / (maxval + 1);
            let t1 = clamp((3 / f + 3 * near).max(2), near + 1);
            let t2 = clamp((7 / f + 5 * near).max(3), t1);
            (t1, t2, clamp((21 / f + 7 * near).max(4), t2))
        };
        let pick = |v: i32, d: i32| if v == 0 { d } else { v };
        let (t1, t2, t3) = (pick(p.t1, d1), pick(p.t2, d2), pick(p.t3, d3));
        let reset = pick(p.reset, 64);
        if !(near < t1 && t1 <= t2 && t2 <= t3 && t3 <= maxval && (3..=65535).contains(&reset)) {
            return Err(format!(
                "JPEG-LS thresholds {t1}, {t2}, {t3} and RESET {reset} with MAXVAL {maxval}"
            ));
        }
        let range = (maxval + 2 * near) / (2 * near + 1) + 1;
        let bpp = bits_for(maxval).max(2);
        Ok(Params {
            maxval,
            near,
            t1,
            t2,
            t3,
            reset,
            range,
            qbpp: bits_for(range - 1),
            limit: 2 * (bpp as i32 + bpp.max(8) as i32),
        })
    }

    fn quantize(&self, d: i32) -> i32 {
        if d <= -self.t3 {
            -4
        } else if d <= -self.t2 {
            -3
        } else if d <= -self.t1 {
            -2
        } else if d < -self.near {
            -1
        } else if d <= self.near {
            0
        } else if d < self.t1 {
            1
        } else if d < self.t2 {
            2
        } else if d < self.t3 {
            3
        } else {
            4
        }
    }

    /// The context of a sample from its neighbours: -364..=364, 0 for run mode.
    fn context(&self, ra: i32, rb: i32, rc: i32, rd: i32) -> i32 {
        (self.quantize(rd - rb) * 9 + self.quantize(rb - rc)) * 9 + self.quantize(rc - ra)
    }

    /// A prediction plus a dequantised error, brought back into range (T.87 A.4.4).
    fn reconstruct(&self, predicted: i32, error: i32) -> i32 {
        let step = 2 * self.near + 1;
        let mut v = predicted + error * step;
        if v < -self.near {
            v += self.range * step;
        } else if v > self.maxval + self.near {
            v -= self.range * step;
        }
        v.clamp(0, self.maxval)
    }
}

/// Reads bits most significant first; a byte after 0xFF holds 7 (its top bit is stuffed); a
/// marker or the end of the data reads as zeros, counted.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    valid: u32,
    after_ff: bool,
    padded: u64,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            pos: 0,
            acc: 0,
            valid: 0,
            after_ff: false,
            padded: 0,
        }
    }

    fn fill(&mut self) {
        while self.valid <= 56 {
            let at_marker = match self.data.get(self.pos) {
                None => true,
                Some(&0xFF) => self.data.get(self.pos + 1).is_none_or(|&n| n & 0x80 != 0),
                Some(_) => false,
            };
            if at_marker {
                self.padded += (64 - self.valid) as u64;
                self.valid = 64;
                return;
            }
            let b = self.data[self.pos];
            let width = if self.after_ff { 7 } else { 8 };
            let value = (b & (0xFF >> (8 - width))) as u64;
            self.acc |= value << (64 - self.valid - width);
            self.valid += width;
            self.after_ff = b == 0xFF;
            self.pos += 1;
        }
    }

    fn skip(&mut self, n: u32) {
        self.acc = if n >= 64 { 0 } else { self.acc << n };
        self.valid -= n;
    }

    /// `n` bits (at most 31) as a number.
    fn read(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        if self.valid < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as i32;
        self.skip(n);
        v
    }

    fn bit(&mut self) -> bool {
        self.read(1) == 1
    }

    /// The number of zeros before the next one (which is read too), at most `max`.
    fn zeros(&mut self, max: i32) -> Result<i32, String> {
        let mut count = 0;
        loop {
            if self.valid == 0 {
                self.fill();
            }
            let lz = self.acc.leading_zeros().min(self.valid);
            count += lz as i32;
            if count > max {
                return Err("JPEG-LS: a code longer than its limit (corrupt data)".into());
            }
            if lz < self.valid {
                self.skip(lz + 1);
                return Ok(count);
            }
            self.skip(lz);
        }
    }

    /// Padding bits read as data: how far decoding ran past the data.
    fn overrun(&self) -> u64 {
        self.padded.saturating_sub(self.valid as u64)
    }

    /// Where the scan's data ends: the next marker at or after the bytes read.
    fn end(&self) -> usize {
        let mut p = self.pos;
        while p < self.data.len()
            && !(self.data[p] == 0xFF && self.data.get(p + 1).is_none_or(|&n| n & 0x80 != 0))
        {
            p += 1;
        }
        p
    }
}

/// A regular-mode context (T.87 A.2). A and B in 64 bits: with RESET up to 65,535 and errors
/// up to RANGE, their sums pass what 32 bits hold.
#[derive(Clone, Copy)]
struct Context {
    a: i64,
    b: i64,
    c: i32,
    n: i64,
}

/// A run-interruption context (T.87 A.7.2).
#[derive(Clone, Copy)]
struct RunContext {
    kind: i32,
    a: i64,
    n: i64,
    nn: i64,
}

/// Golomb parameter k: the least with `n << k >= a` (T.87 A.5.1).
fn golomb_k(n: i64, a: i64) -> u32 {
    let mut k = 0;
    while (n << k) < a && k < 24 {
        k += 1;
    }
    k
}

/// One scan's decoder state: contexts shared by its components.
struct Coder<'a, 'b> {
    p: &'a Params,
    bits: Bits<'b>,
    contexts: [Context; 365],
    run: [RunContext; 2],
}

impl Coder<'_, '_> {
    /// A limited-length Golomb code (T.87 A.5.3).
    fn value(&mut self, k: u32, limit: i32) -> Result<i32, String> {
        let high = self.bits.zeros(limit)?;
        if high >= limit - (self.p.qbpp as i32 + 1) {
            return Ok(self.bits.read(self.p.qbpp) + 1);
        }
        if k == 0 {
            return Ok(high);
        }
        Ok((high << k) + self.bits.read(k))
    }

    /// A sample in regular mode, from its context `q` (non-zero) and its MED prediction.
    fn regular(&mut self, q: i32, predicted: i32) -> Result<i32, String> {
        let sign = if q < 0 { -1 } else { 1 };
        let ctx = self.contexts[(q * sign) as usize];
        let k = golomb_k(ctx.n, ctx.a);
        let px = (predicted + sign * ctx.c).clamp(0, self.p.maxval);
        let m = self.value(k, self.p.limit)?;
        let mut error = if m & 1 == 1 { -((m + 1) >> 1) } else { m >> 1 };
        if k == 0 && self.p.near == 0 && 2 * ctx.b + ctx.n - 1 < 0 {
            error = -error - 1;
        }
        if error.abs() > self.p.range {
            return Err("JPEG-LS: an error value out of range (corrupt data)".into());
        }
        let ctx = &mut self.contexts[(q * sign) as usize];
        ctx.a += error.abs() as i64;
        ctx.b += (error * (2 * self.p.near + 1)) as i64;
        if ctx.n == self.p.reset as i64 {
            ctx.a >>= 1;
            ctx.b >>= 1;
            ctx.n >>= 1;
        }
        ctx.n += 1;
        if ctx.b + ctx.n <= 0 {
            ctx.b += ctx.n;
            if ctx.b <= -ctx.n {
                ctx.b = -ctx.n + 1;
            }
            ctx.c = (ctx.c - 1).max(-128);
        } else if ctx.b > 0 {
            ctx.b -= ctx.n;
            if ctx.b > 0 {
                ctx.b = 0;
            }
            ctx.c = (ctx.c + 1).min(127);
        }
        Ok(self.p.reconstruct(px, error * sign))
    }

    /// The length of a run of at most `left` samples (T.87 A.7.1.2).
    fn run_length(&mut self, left: usize, run_index: &mut usize) -> Result<usize, String> {
        let mut count = 0;
        while self.bits.bit() {
            let step = (1usize << J[*run_index]).min(left - count);
            count += step;
            if step == 1 << J[*run_index] {
                *run_index = (*run_index + 1).min(31);
            }
            if count == left {
                return Ok(count);
            }
        }
        count += self.bits.read(J[*run_index]) as usize;
        if count > left {
            return Err("JPEG-LS: a run past the end of its line (corrupt data)".into());
        }
        Ok(count)
    }

    /// The error of a run-interruption sample (T.87 A.7.2).
    fn interruption(&mut self, kind: usize, run_index: usize) -> Result<i32, String> {
        let ctx = self.run[kind];
        let k = golomb_k(ctx.n, ctx.a + (ctx.n >> 1) * ctx.kind as i64);
        let m = self.value(k, self.p.limit - J[run_index] as i32 - 1)?;
        if m > 2 * self.p.range {
            return Err("JPEG-LS: an error value out of range (corrupt data)".into());
        }
        let t = m + ctx.kind;
        let map = t & 1 == 1;
        let magnitude = (t + t % 2) / 2;
        let error = if (k != 0 || 2 * ctx.nn >= ctx.n) == map {
            -magnitude
        } else {
            magnitude
        };
        let ctx = &mut self.run[kind];
        if error < 0 {
            ctx.nn += 1;
        }
        ctx.a += ((m + 1 - ctx.kind) >> 1) as i64;
        if ctx.n == self.p.reset as i64 {
            ctx.a >>= 1;
            ctx.n >>= 1;
            ctx.nn >>= 1;
        }
        ctx.n += 1;
        Ok(error)
    }

    /// One line of one component; `prev` and `cur` hold the line above and this one at 1..=w,
    /// with the edges at 0 and w + 1 set.
    fn line(&mut self, prev: &[i32], cur: &mut [i32], run_index: &mut usize) -> Result<(), String> {
        let w = cur.len() - 2;
        let mut x = 0;
        while x < w {
            let (ra, rb, rc, rd) = (cur[x], prev[x + 1], prev[x], prev[x + 2]);
            let q = self.p.context(ra, rb, rc, rd);
            if q != 0 {
                cur[x + 1] = self.regular(q, predict(ra, rb, rc))?;
                x += 1;
                continue;
            }
            let run = self.run_length(w - x, run_index)?;
            cur[x + 1..x + 1 + run].fill(ra);
            x += run;
            if x == w {
                break;
            }
            let rb = prev[x + 1];
            cur[x + 1] = if (ra - rb).abs() <= self.p.near {
                let e = self.interruption(1, *run_index)?;
                self.p.reconstruct(ra, e)
            } else {
                let e = self.interruption(0, *run_index)?;
                self.p.reconstruct(rb, e * sign(rb - ra))
            };
            *run_index = run_index.saturating_sub(1);
            x += 1;
        }
        Ok(())
    }

    /// One line of every component together (sample interleave).
    fn line_interleaved(
        &mut self,
        prev: &[Vec<i32>],
        cur: &mut [Vec<i32>],
        run_index: &mut usize,
    ) -> Result<(), String> {
        let w = cur[0].len() - 2;
        let nc = cur.len();
        let mut q = [0i32; 4];
        let mut x = 0;
        while x < w {
            for c in 0..nc {
                let (p, r) = (&prev[c], &cur[c]);
                q[c] = self.p.context(r[x], p[x + 1], p[x], p[x + 2]);
            }
            if q[..nc].iter().any(|&q| q != 0) {
                for c in 0..nc {
                    let (ra, rb, rc) = (cur[c][x], prev[c][x + 1], prev[c][x]);
                    cur[c][x + 1] = self.regular(q[c], predict(ra, rb, rc))?;
                }
                x += 1;
                continue;
            }
            let run = self.run_length(w - x, run_index)?;
            for r in cur.iter_mut() {
                let ra = r[x];
                r[x + 1..x + 1 + run].fill(ra);
            }
            x += run;
            if x == w {
                break;
            }
            for c in 0..nc {
                let e = self.interruption(0, *run_index)?;
                let (ra, rb) = (cur[c][x], prev[c][x + 1]);
                cur[c][x + 1] = self.p.reconstruct(rb, e * sign(rb - ra));
            }
            *run_index = run_index.saturating_sub(1);
            x += 1;
        }
        Ok(())
    }
}

/// The median edge detector (T.87 A.3.1).
fn predict(ra: i32, rb: i32, rc: i32) -> i32 {
    if rc >= ra.max(rb) {
        ra.min(rb)
    } else if rc <= ra.min(rb) {
        ra.max(rb)
    } else {
        ra + rb - rc
    }
}

/// -1 for a negative number, 1 otherwise.
fn sign(v: i32) -> i32 {
    if v < 0 { -1 } else { 1 }
}

/// Decodes one scan's entropy-coded data into `out`; returns the bytes it spans.
fn decode_scan(
    data: &[u8],
    frame: &Header,
    scan: &Scan,
    p: &Params,
    out: &mut [u16],
) -> Result<usize, String> {
    let (w, h, nf) = (frame.width as usize, frame.height as usize, frame.ids.len());
    let a = 2.max((p.range as i64 + 32) / 64);
    let mut coder = Coder {
        p,
        bits: Bits::new(data),
        contexts: [Context {
            a,
            b: 0,
            c: 0,
            n: 1,
        }; 365],
        run: [0, 1].map(|kind| RunContext {
            kind,
            a,
            n: 1,
            nn: 0,
        }),
    };
    let nc = scan.components.len();
    let mut prev = vec![vec![0i32; w + 2]; nc];
    let mut cur = vec![vec![0i32; w + 2]; nc];
    let mut run_index = [0usize; 4];
    for y in 0..h {
        for c in 0..nc {
            prev[c][w + 1] = prev[c][w];
            cur[c][0] = prev[c][1];
        }
        if scan.interleave == 2 {
            coder.line_interleaved(&prev, &mut cur, &mut run_index[0])?;
        } else {
            for c in 0..nc {
                coder.line(&prev[c], &mut cur[c], &mut run_index[c])?;
            }
        }
        if coder.bits.overrun() > 8 {
            return Err(format!(
                "JPEG-LS data ends at line {y} of {h} (truncated or corrupt)"
            ));
        }
        for (c, &component) in scan.components.iter().enumerate() {
            let row = &mut out[y * w * nf..(y + 1) * w * nf];
            for (x, &v) in cur[c][1..=w].iter().enumerate() {
                row[x * nf + component] = v as u16;
            }
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    Ok(coder.bits.end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(values: &[u16], w: u32, h: u32, bits: u8, near: u8) -> Vec<u8> {
        let mut options = jpegls::EncodeOptions::default();
        options.near = near;
        options.precision = Some(bits);
        let mut stream = Vec::new();
        jpegls::encode_with_options(values, w, h, &options, &mut stream).unwrap();
        stream
    }

    /// Texture (regular mode), flat stretches (run mode) and edges.
    fn picture(w: usize, h: usize, bits: u32, seed: usize) -> Vec<u16> {
        let top = (1usize << bits) - 1;
        (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (y / 3 + seed).is_multiple_of(4) || x < 2 {
                    (top / 3) as u16
                } else {
                    ((x * 37 + y * 11 + (((i + seed) * 2_654_435_761usize) >> 9) % 97) % (top + 1))
                        as u16
                }
            })
            .collect()
    }

    #[test]
    fn one_component_matches_the_encoder_at_every_depth_lossless_and_near() {
        for (bits, near) in [(8, 0), (12, 0), (16, 0), (2, 0), (8, 2), (12, 3), (16, 7)] {
            for (w, h) in [(37, 23), (1, 9), (9, 1), (64, 40)] {
                let values = picture(w, h, bits, bits as usize);
                let stream = encode(&values, w as u32, h as u32, bits as u8, near);
                let f = decode(&stream, w as u32, h as u32).unwrap();
                assert_eq!((f.width, f.height, f.components), (w as u32, h as u32, 1));
                for (i, (&a, &b)) in f.samples.iter().zip(&values).enumerate() {
                    assert!(
                        (a as i32 - b as i32).abs() <= near as i32,
                        "{bits} bits, NEAR {near}, {w}x{h}: sample {i} is {a}, was {b}"
                    );
                }
                if let Ok((theirs, _, _)) = jpegls::decode(&stream, w as u32, h as u32) {
                    assert_eq!(f.samples, theirs, "{bits} bits, NEAR {near}, {w}x{h}");
                }
            }
        }
    }

    /// Splits a one-component stream at its scan header: (frame part, scan header + data).
    fn split(stream: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let sos = stream.windows(2).position(|m| m == [0xFF, 0xDA]).unwrap();
        let eoi = stream.len() - 2;
        (stream[..sos].to_vec(), stream[sos..eoi].to_vec())
    }

    #[test]
    fn three_components_in_three_scans_are_interleaved_by_pixel() {
        let (w, h) = (21usize, 17usize);
        let planes: Vec<Vec<u16>> = (0..3).map(|s| picture(w, h, 8, s * 5)).collect();
        let mut stream = Vec::new();
        for (i, plane) in planes.iter().enumerate() {
            let (head, mut scan) = split(&encode(plane, w as u32, h as u32, 8, 0));
            if i == 0 {
                // The frame header (FF F7, length, P, Y, X, Nf = 1, C1 ...): make it three.
                let sof = head.windows(2).position(|m| m == [0xFF, 0xF7]).unwrap();
                stream.extend_from_slice(&head[..sof]);
                stream.extend_from_slice(&[0xFF, 0xF7, 0, 17]);
                stream.extend_from_slice(&head[sof + 4..sof + 9]);
                stream.extend_from_slice(&[3, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0]);
                stream.extend_from_slice(&head[sof + 13..]);
            }
            // The scan's component: 1, 2, 3.
            scan[5] = i as u8 + 1;
            stream.extend_from_slice(&scan);
        }
        stream.extend_from_slice(&[0xFF, 0xD9]);
        let f = decode(&stream, w as u32, h as u32).unwrap();
        assert_eq!(f.components, 3);
        for (c, plane) in planes.iter().enumerate() {
            let got: Vec<u16> = f.samples.iter().skip(c).step_by(3).copied().collect();
            assert_eq!(&got, plane, "component {c}");
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_or_a_picture_never_a_panic() {
        let values = picture(30, 20, 12, 1);
        let stream = encode(&values, 30, 20, 12, 0);
        for end in 0..stream.len() {
            let _ = decode(&stream[..end], 30, 20);
        }
        assert!(decode(&stream[..stream.len() / 2], 30, 20).is_err());
        for i in 0..stream.len() {
            let mut bad = stream.clone();
            bad[i] ^= 0x5A;
            let _ = decode(&bad, 30, 20);
        }
    }

    #[test]
    fn a_frame_of_other_dimensions_than_the_header_is_refused_before_decoding() {
        let stream = encode(&picture(40, 30, 8, 0), 40, 30, 8, 0);
        assert!(decode(&stream, 40, 30).is_ok());
        for (w, h) in [(30, 40), (40, 29), (4000, 3000)] {
            let e = decode(&stream, w, h).err().unwrap();
            assert!(e.contains("JPEG-LS frame of 40x30, the header says"), "{e}");
        }
    }
}
