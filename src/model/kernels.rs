//! Inference kernels over contiguous buffers (one image's `(channels, h, w)` planes, row-major):
//! 1x1 convolutions as one `gemm` call with the bias, activation and residual add fused into
//! one pass over the output, dense k x k convolutions (stride, TF-SAME or symmetric padding) as
//! im2col + `gemm`, a direct depthwise kernel, max and average pooling, and batch norm + ReLU
//! as one pass (DenseNet's pre-activation). Every inference path of every network runs on
//! these ([`batch`] spreads a batch over the cores); training runs candle's own operations on
//! the same weights, and candle's convolution stays the reference the tests compare with.

use candle_core::{Result, Tensor};
use candle_nn::BatchNorm;
use gemm::Parallelism;
use rayon::prelude::*;

use super::efficientnet::same_padding;

/// What runs after a convolution, in the same pass over its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    fn apply(self, row: &mut [f32]) {
        match self {
            Act::None => {}
            Act::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::Relu6 => row.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }
}

/// How a convolution or pool pads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// TensorFlow's SAME: output `ceil(size / stride)`, the padding split with the odd one after.
    Same,
    /// `p` on every side (PyTorch's `padding = p`): output `(size + 2p - k) / stride + 1`.
    Sym(usize),
}

impl Pad {
    /// (padding before, output size) along one axis of `size` for `k` taps at `stride`.
    fn axis(self, size: usize, k: usize, stride: usize) -> (usize, usize) {
        match self {
            Pad::Same => {
                let (before, _, out) = same_padding(size, k, stride);
                (before, out)
            }
            Pad::Sym(p) => match (size + 2 * p).checked_sub(k) {
                Some(span) => (p, span / stride + 1),
                None => (p, 0),
            },
        }
    }
}

/// A batch norm in eval mode as a per-channel affine map: (scale, shift).
pub(super) type Affine = (Vec<f32>, Vec<f32>);

/// `bn` as an [`Affine`] map.
pub(super) fn bn_affine(bn: &BatchNorm) -> Result<Affine> {
    let (scale, shift) = super::bn_scale_shift(bn)?;
    Ok((scale.to_vec1()?, shift.to_vec1()?))
}

/// Inference form of a convolution (+ the batch norm after it): weight scaled per output
/// channel (row-major `(cout, cin * k * k)`), bias added.
#[derive(Debug)]
pub(super) struct Folded {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Folded {
    /// `bn(conv(x, w))` in eval mode equals `conv(x, w * s) + (beta - mean * s)` with
    /// `s = gamma / sqrt(var + eps)`.
    pub fn new(w: &Tensor, bn: &BatchNorm) -> Result<Self> {
        let (scale, bias) = bn_affine(bn)?;
        let per = w.elem_count() / scale.len();
        let mut weight = w.flatten_all()?.to_vec1::<f32>()?;
        for (row, s) in weight.chunks_mut(per).zip(&scale) {
            row.iter_mut().for_each(|v| *v *= s);
        }
        Ok(Self { weight, bias })
    }

    /// A convolution without a batch norm after it (bias zero).
    pub fn plain(w: &Tensor) -> Result<Self> {
        Ok(Self {
            bias: vec![0.0; w.dim(0)?],
            weight: w.flatten_all()?.to_vec1::<f32>()?,
        })
    }
}

/// Multiply-adds the kernels have done in this process (for `bench`'s GFLOP/s figures).
static MULTIPLY_ADDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn count(n: usize) {
    MULTIPLY_ADDS.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Multiply-adds done by the kernels while `f` ran, in every thread of the process (so the
/// figure is only meaningful when nothing else runs inference meanwhile, as in `bench`).
/// Each convolution counts its nominal `cout * cin * k * k` per output pixel (depthwise:
/// `k * k`), whatever its kernel does to get there.
pub fn multiply_adds<R>(f: impl FnOnce() -> R) -> (R, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let before = MULTIPLY_ADDS.load(Relaxed);
    let r = f();
    (r, MULTIPLY_ADDS.load(Relaxed) - before)
}

/// One `n x n x n` matrix product on every core, each call (`bench` times it: the ceiling the
/// networks' own GFLOP/s compare with).
pub fn square_product(n: usize) -> impl FnMut() {
    let a = vec![0.5f32; n * n];
    let b = vec![0.25f32; n * n];
    let mut c = vec![0f32; n * n];
    let par = Parallelism::Rayon(threads());
    move || matmul(&mut c, &a, &b, n, n, n, par)
}

/// `dst (m, n) = w (m, k) x src (k, n)`, all row-major.
fn matmul(dst: &mut [f32], w: &[f32], src: &[f32], m: usize, k: usize, n: usize, par: Parallelism) {
    let lhs = Strided {
        data: w,
        row: k,
        col: 1,
    };
    let rhs = Strided {
        data: src,
        row: n,
        col: 1,
    };
    matmul_strided(dst, n, lhs, rhs, (m, k, n), false, par);
}

/// A matrix inside a slice: element `(i, j)` at `i * row + j * col`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl Strided<'_> {
    /// Does every element of an `r x c` matrix lie inside the slice?
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.row + (c - 1) * self.col < self.data.len()
    }
}

/// `dst (m, n) [+]= lhs (m, k) x rhs (k, n)`, `dst` row-major with row stride `dst_row`;
/// `accumulate` adds to what `dst` holds instead of overwriting it.
fn matmul_strided(
    dst: &mut [f32],
    dst_row: usize,
    lhs: Strided,
    rhs: Strided,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    par: Parallelism,
) {
    let out = Strided {
        data: dst,
        row: dst_row,
        col: 1,
    };
    assert!(out.fits(m, n) && lhs.fits(m, k) && rhs.fits(k, n));
    // Split over the pool by blocks of output columns, each a single-threaded product: on
    // two cores gemm's own finer split of these shapes gained nothing over one thread.
    let tasks = match par {
        Parallelism::Rayon(t) if m * n * k >= SPLIT_MIN => {
            let t = if t == 0 {
                rayon::current_num_threads()
            } else {
                t
            };
            t.min(n / 16).max(1)
        }
        _ => 1,
    };
    let cols = n.div_ceil(tasks);
    let dst = Shared(dst.as_mut_ptr());
    let block = |j0: usize| {
        let nj = cols.min(n - j0);
        // SAFETY: the assert above keeps every index the strides reach inside the three
        // slices (a block reads and writes columns j0..j0 + nj of them); blocks write
        // disjoint columns of `dst`, which no input aliases (it was a `&mut` borrow).
        unsafe {
            gemm::gemm(
                m,
                nj,
                k,
                dst.at(j0),
                1,
                dst_row as isize,
                accumulate,
                lhs.data.as_ptr(),
                lhs.col as isize,
                lhs.row as isize,
                rhs.data.as_ptr().add(j0 * rhs.col),
                rhs.col as isize,
                rhs.row as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    if tasks == 1 {
        block(0);
    } else {
        (0..tasks)
            .into_par_iter()
            .map(|i| i * cols)
            .filter(|&j0| j0 < n)
            .for_each(block);
    }
}

/// Products smaller than this (multiply-adds) run on the calling thread.
const SPLIT_MIN: usize = 1 << 23;

/// The output of a product split by columns, written by several threads at once.
struct Shared(*mut f32);

// SAFETY: each thread writes only its own columns (see `matmul_strided`).
unsafe impl Sync for Shared {}

impl Shared {
    /// SAFETY: `offset` must lie inside the buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// Add the bias per output channel, then the residual, then the activation, in one pass.
fn epilogue(
    dst: &mut [f32],
    bias: &[f32],
    plane: usize,
    act: Act,
    residual: Option<&[f32]>,
    par: Parallelism,
) {
    per_channel(dst, plane, par, |c, row| {
        let b = bias[c];
        match residual {
            Some(r) => {
                let r = &r[c * plane..(c + 1) * plane];
                row.iter_mut().zip(r).for_each(|(v, r)| *v += b + r);
            }
            None => row.iter_mut().for_each(|v| *v += b),
        }
        act.apply(row);
    });
}

/// `f(channel, plane)` for each `plane`-sized chunk of `dst`, split over the pool when `par`
/// allows and the work is big enough.
fn per_channel(
    dst: &mut [f32],
    plane: usize,
    par: Parallelism,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    if plane == 0 {
        return;
    }
    if parallel(par, dst.len()) {
        dst.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(c, row)| f(c, row));
    } else {
        for (c, row) in dst.chunks_mut(plane).enumerate() {
            f(c, row);
        }
    }
}

/// A 1x1 convolution: `(cin, plane)` -> `(cout, plane)` with the bias, optional residual and
/// activation (`cin` is the weight's row length).
pub fn pointwise(
    src: &[f32],
    w: &Folded,
    plane: usize,
    act: Act,
    residual: Option<&[f32]>,
    par: Parallelism,
) -> Vec<f32> {
    let cout = w.bias.len();
    let cin = w.weight.len() / cout.max(1);
    let mut dst = vec![0f32; cout * plane];
    count(cout * cin * plane);
    matmul(&mut dst, &w.weight, src, cout, cin, plane, par);
    epilogue(&mut dst, &w.bias, plane, act, residual, par);
    dst
}

/// The output columns `lo..=hi` of one tap `kx` whose input column `ox * stride + kx - l`
/// lies inside `0..wd`, and the input column of `lo`; `None` when no column does.
fn tap_run(
    wd: usize,
    l: usize,
    kx: usize,
    stride: usize,
    ow: usize,
) -> Option<(usize, usize, usize)> {
    let lo = l.saturating_sub(kx).div_ceil(stride);
    let last = (wd + l).checked_sub(kx + 1)?;
    let hi = (last / stride).min(ow.checked_sub(1)?);
    (lo <= hi).then(|| (lo, hi, lo * stride + kx - l))
}

/// Work smaller than this (in elements) runs on the calling thread: splitting it costs more
/// than it saves.
const PARALLEL_MIN: usize = 1 << 18;

/// Should a pass of `len` elements be split over the pool?
fn parallel(par: Parallelism, len: usize) -> bool {
    matches!(par, Parallelism::Rayon(n) if n != 1) && len >= PARALLEL_MIN
}

thread_local! {
    /// The im2col buffer, reused between convolutions on this thread (it only grows).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` on a buffer of `len` elements whose contents are stale (`f` overwrites them all):
/// this thread's reused scratch, or a fresh one if it is in use (a convolution reached
/// again through the pool's work stealing).
fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len]);
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// im2col of one image: row `(ci, ky, kx)` holds the input under that tap for every output
/// pixel, zero where the tap falls in the padding.
struct Im2col<'a> {
    src: &'a [f32],
    h: usize,
    wd: usize,
    k: usize,
    stride: usize,
    t: usize,
    l: usize,
    oh: usize,
    ow: usize,
}

impl Im2col<'_> {
    /// Channel `ci`'s `k * k` rows, every element written (the buffer may be stale).
    fn channel(&self, ci: usize, rows: &mut [f32]) {
        let Self {
            src,
            h,
            wd,
            k,
            stride,
            t,
            l,
            oh,
            ow,
        } = *self;
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut rows[(ky * k + kx) * oh * ow..][..oh * ow];
                let Some((lo, hi, first)) = tap_run(wd, l, kx, stride, ow) else {
                    row.fill(0.0);
                    continue;
                };
                for (oy, out) in row.chunks_mut(ow).enumerate() {
                    let y = (oy * stride + ky) as isize - t as isize;
                    if y < 0 || y >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let line = &src[(ci * h + y as usize) * wd..][..wd];
                    out[..lo].fill(0.0);
                    out[hi + 1..].fill(0.0);
                    let run = &mut out[lo..=hi];
                    if stride == 1 {
                        run.copy_from_slice(&line[first..first + run.len()]);
                    } else {
                        for (j, o) in run.iter_mut().enumerate() {
                            *o = line[first + j * stride];
                        }
                    }
                }
            }
        }
    }
}

/// A stride-1 `k x k` convolution without im2col: the input copied once into a zero-padded
/// buffer `ow + k - 1` wide, then one matrix product per tap, each reading that buffer shifted
/// by the tap's offset and adding into an output as wide as the padded rows (the `k - 1`
/// extra columns of each row are discarded when the result is copied into `dst`). k * k
/// products with `cin` deep sums read far less memory than one product over an im2col
/// buffer k * k times the input's size.
#[allow(clippy::too_many_arguments)]
fn shifted_products(
    dst: &mut [f32],
    src: &[f32],
    w: &Folded,
    (cin, h, wd): (usize, usize, usize),
    k: usize,
    (t, l): (usize, usize),
    (oh, ow): (usize, usize),
    par: Parallelism,
) {
    let cout = w.bias.len();
    let wp = ow + k - 1;
    // One spare row so that the last tap's reads past the last output row stay inside.
    let plane = (oh + k) * wp;
    let wide = oh * wp;
    with_scratch(cin * plane + cout * wide, |buf| {
        let (padded, out) = buf.split_at_mut(cin * plane);
        per_channel(padded, plane, par, |ci, p| {
            p.fill(0.0);
            // Input rows that land inside the padded frame (t before, output-sized after).
            for y in 0..h.min(oh + k - 1 - t.min(oh + k - 1)) {
                let row = (y + t) * wp + l;
                let cols = wd.min(wp.saturating_sub(l));
                p[row..row + cols].copy_from_slice(&src[(ci * h + y) * wd..][..cols]);
            }
        });
        for ky in 0..k {
            for kx in 0..k {
                let lhs = Strided {
                    data: &w.weight[ky * k + kx..],
                    row: cin * k * k,
                    col: k * k,
                };
                let rhs = Strided {
                    data: &padded[ky * wp + kx..],
                    row: plane,
                    col: 1,
                };
                let first = ky == 0 && kx == 0;
                matmul_strided(out, wide, lhs, rhs, (cout, cin, wide), !first, par);
            }
        }
        let out = &*out;
        per_channel(dst, oh * ow, par, |c, d| {
            for (dr, or) in d.chunks_mut(ow).zip(out[c * wide..].chunks(wp)) {
                dr.copy_from_slice(&or[..ow]);
            }
        });
    });
}

/// A dense `k x k` convolution with stride and padding: `(cin, h, w)` -> (`(cout, oh, ow)`,
/// oh, ow), `w` being `(cout, cin, k, k)`, with the bias, the residual (`(cout, oh, ow)`) and
/// the activation fused. A 1x1 stride-1 convolution is one matrix product on the input as it
/// is; anything else goes through im2col, copied a row run at a time (no per-pixel bounds
/// checks), then one matrix product.
#[allow(clippy::too_many_arguments)]
pub fn conv_dense(
    src: &[f32],
    w: &Folded,
    (cin, h, wd): (usize, usize, usize),
    k: usize,
    stride: usize,
    pad: Pad,
    act: Act,
    residual: Option<&[f32]>,
    par: Parallelism,
) -> (Vec<f32>, usize, usize) {
    let (t, oh) = pad.axis(h, k, stride);
    let (l, ow) = pad.axis(wd, k, stride);
    let cout = w.bias.len();
    let mut dst = vec![0f32; cout * oh * ow];
    if oh == 0 || ow == 0 {
        return (dst, oh, ow);
    }
    count(cout * cin * k * k * oh * ow);
    if k == 1 && stride == 1 && t == 0 && l == 0 {
        matmul(&mut dst, &w.weight, src, cout, cin, oh * ow, par);
    } else if stride == 1 && k > 1 {
        shifted_products(&mut dst, src, w, (cin, h, wd), k, (t, l), (oh, ow), par);
    } else {
        let rows = cin * k * k;
        let geometry = Im2col {
            src,
            h,
            wd,
            k,
            stride,
            t,
            l,
            oh,
            ow,
        };
        with_scratch(rows * oh * ow, |cols| {
            // One chunk per input channel: its k * k rows.
            let chunk = k * k * oh * ow;
            if parallel(par, cols.len()) {
                cols.par_chunks_mut(chunk)
                    .enumerate()
                    .for_each(|(ci, c)| geometry.channel(ci, c));
            } else {
                for (ci, c) in cols.chunks_mut(chunk).enumerate() {
                    geometry.channel(ci, c);
                }
            }
            matmul(&mut dst, &w.weight, cols, cout, rows, oh * ow, par);
        });
    }
    epilogue(&mut dst, &w.bias, oh * ow, act, residual, par);
    (dst, oh, ow)
}

/// Depthwise `k x k` convolution (TF-SAME) of one image, the batch norm folded in as a
/// per-channel `scale` and `shift`, then ReLU6: `(c, h, w)` -> (`(c, oh, ow)`, oh, ow).
/// Channels are split over `threads` threads.
///
/// Each channel is first split into `stride x stride` zero-padded phases (phase `(a, b)`
/// holds the padded input's rows `a, a + s, ...` and columns `b, b + s, ...`), so that every
/// tap reads one phase at stride 1; each tap is then a single multiply-add over the whole
/// output laid out as wide as a phase row, with no bounds checks, and the `k - 1` spare
/// columns of each row are dropped when the batch norm and ReLU6 are applied.
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    src: &[f32],
    w: &[f32],
    scale: &[f32],
    shift: &[f32],
    (c, h, wd): (usize, usize, usize),
    k: usize,
    stride: usize,
    threads: usize,
) -> (Vec<f32>, usize, usize) {
    let (t, _, oh) = same_padding(h, k, stride);
    let (l, _, ow) = same_padding(wd, k, stride);
    let s = stride.max(1);
    // How far a tap reaches inside its phase, the phase's width and height (one spare row
    // for the flat loops' overrun past the last output row).
    let reach = (k - 1) / s;
    let (wq, hq) = (ow + reach, oh + reach + 1);
    let phase = hq * wq;
    let mut out = vec![0f32; c * oh * ow];
    if oh == 0 || ow == 0 {
        return (out, oh, ow);
    }
    count(c * k * k * oh * ow);
    let channels = |first: usize, dst: &mut [f32]| {
        let mut phases = vec![0f32; s * s * phase];
        let mut wide = vec![0f32; oh * wq];
        for (i, dst) in dst.chunks_mut(oh * ow).enumerate() {
            let ch = first + i;
            let plane = &src[ch * h * wd..(ch + 1) * h * wd];
            phases.fill(0.0);
            for (y, line) in plane.chunks(wd).enumerate() {
                let (a, row) = ((y + t) % s, (y + t) / s);
                for (b, dst_row) in (0..s).map(|b| (b, ((a * s + b) * hq + row) * wq)) {
                    // Input columns x with (x + l) % s == b land at (x + l) / s.
                    let x0 = (b + s - l % s) % s;
                    for (j, x) in (x0..wd).step_by(s).enumerate() {
                        let q = (x0 + l) / s + j;
                        if q < wq {
                            phases[dst_row + q] = line[x];
                        }
                    }
                }
            }
            wide.fill(0.0);
            let kw = &w[ch * k * k..(ch + 1) * k * k];
            for ky in 0..k {
                for kx in 0..k {
                    let p = &phases[((ky % s) * s + kx % s) * phase..][..phase];
                    let off = (ky / s) * wq + kx / s;
                    let wv = kw[ky * k + kx];
                    let inp = &p[off..off + wide.len()];
                    wide.iter_mut().zip(inp).for_each(|(o, v)| *o += wv * v);
                }
            }
            let (sc, sh) = (scale[ch], shift[ch]);
            for (d, o) in dst.chunks_mut(ow).zip(wide.chunks(wq)) {
                d.iter_mut()
                    .zip(o)
                    .for_each(|(d, v)| *d = (v * sc + sh).clamp(0.0, 6.0));
            }
        }
    };
    let threads = threads.clamp(1, c.max(1));
    let per = c.div_ceil(threads);
    if threads == 1 {
        channels(0, &mut out);
    } else {
        std::thread::scope(|scope| {
            for (i, chunk) in out.chunks_mut(per * oh * ow).enumerate() {
                let channels = &channels;
                scope.spawn(move || channels(i * per, chunk));
            }
        });
    }
    (out, oh, ow)
}

/// Per-channel `x * scale + shift`, then the activation, from `src` into `dst` (both
/// `(c, plane)`): a batch norm in eval mode where it cannot be folded into a convolution
/// (DenseNet's pre-activation, before a concatenation's consumers).
pub fn affine(src: &[f32], dst: &mut [f32], (scale, shift): &Affine, act: Act, par: Parallelism) {
    let plane = src.len() / scale.len().max(1);
    per_channel(dst, plane, par, |c, out| {
        let (s, b) = (scale[c], shift[c]);
        let inp = &src[c * plane..(c + 1) * plane];
        out.iter_mut().zip(inp).for_each(|(o, v)| *o = v * s + b);
        act.apply(out);
    });
}

/// `k x k` max pool with stride and symmetric padding `p` (padded cells never win, as
/// PyTorch's `-inf` padding): `(c, h, w)` -> (`(c, oh, ow)`, oh, ow).
pub fn max_pool(
    src: &[f32],
    (c, h, wd): (usize, usize, usize),
    k: usize,
    stride: usize,
    p: usize,
    par: Parallelism,
) -> (Vec<f32>, usize, usize) {
    let (t, oh) = Pad::Sym(p).axis(h, k, stride);
    let (l, ow) = Pad::Sym(p).axis(wd, k, stride);
    let mut out = vec![f32::NEG_INFINITY; c * oh * ow];
    per_channel(&mut out, oh * ow, par, |ch, dst| {
        let plane = &src[ch * h * wd..(ch + 1) * h * wd];
        for oy in 0..oh {
            let row = &mut dst[oy * ow..(oy + 1) * ow];
            for ky in 0..k {
                let y = (oy * stride + ky) as isize - t as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let line = &plane[y as usize * wd..(y as usize + 1) * wd];
                for kx in 0..k {
                    let Some((lo, hi, first)) = tap_run(wd, l, kx, stride, ow) else {
                        continue;
                    };
                    for (j, o) in row[lo..=hi].iter_mut().enumerate() {
                        *o = o.max(line[first + j * stride]);
                    }
                }
            }
        }
    });
    (out, oh, ow)
}

/// 2x2 average pool, stride 2, no padding (an odd last row or column is dropped, as PyTorch's
/// `AvgPool2d(2)`): `(c, h, w)` -> (`(c, h / 2, w / 2)`, h / 2, w / 2).
pub fn avg_pool2(src: &[f32], (c, h, wd): (usize, usize, usize)) -> (Vec<f32>, usize, usize) {
    let (oh, ow) = (h / 2, wd / 2);
    let mut out = vec![0f32; c * oh * ow];
    if oh == 0 || ow == 0 {
        return (out, oh, ow);
    }
    for (plane, dst) in src.chunks(h * wd).zip(out.chunks_mut(oh * ow)) {
        for oy in 0..oh {
            let (a, b) = (
                &plane[2 * oy * wd..][..wd],
                &plane[(2 * oy + 1) * wd..][..wd],
            );
            for (ox, o) in dst[oy * ow..(oy + 1) * ow].iter_mut().enumerate() {
                *o = 0.25 * (a[2 * ox] + a[2 * ox + 1] + b[2 * ox] + b[2 * ox + 1]);
            }
        }
    }
    (out, oh, ow)
}

/// One image's map from a network's inference form: `(channels, h, w)` and its planes.
pub type Map = (Vec<f32>, (usize, usize, usize));

/// Run `one` over every image of `x` (`(n, c, h, w)`): images in parallel (one thread each,
/// single-threaded kernels) when there are at least as many as cores, else one at a time
/// with every core (`Parallelism::Rayon` for the matrix products, the thread count for the
/// kernels that split channels). Every image must give a map of the same shape.
pub fn batch<F>(x: &Tensor, one: F) -> Result<Tensor>
where
    F: Fn(&[f32], (usize, usize, usize), Parallelism, usize) -> Map + Sync,
{
    Ok(batch_with(x, |img, dims, par, threads| {
        (one(img, dims, par, threads), ())
    })?
    .0)
}

/// [`batch`] where each image also gives something besides its map (e.g. statistics of
/// the maps on the way): the maps as one tensor and the rest in image order.
pub fn batch_with<F, E>(x: &Tensor, one: F) -> Result<(Tensor, Vec<E>)>
where
    F: Fn(&[f32], (usize, usize, usize), Parallelism, usize) -> (Map, E) + Sync,
    E: Send,
{
    let (n, cin, h, w) = x.dims4()?;
    let data = x.flatten_all()?.to_vec1::<f32>()?;
    let per = cin * h * w;
    let threads = threads();
    let outs: Vec<(Map, E)> = if n >= threads && threads > 1 {
        let images = n.div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = data
                .chunks(images * per)
                .map(|src| {
                    let one = &one;
                    scope.spawn(move || {
                        src.chunks(per)
                            .map(|img| one(img, (cin, h, w), Parallelism::None, 1))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|t| t.join().expect("an inference thread panicked"))
                .collect()
        })
    } else {
        data.chunks(per)
            .map(|img| one(img, (cin, h, w), Parallelism::Rayon(threads), threads))
            .collect()
    };
    let dims = outs.first().map_or((0, 0, 0), |m| m.0.1);
    if outs.iter().any(|m| m.0.1 != dims) {
        candle_core::bail!("images of one batch gave maps of different shapes");
    }
    let mut flat = Vec::with_capacity(n * dims.0 * dims.1 * dims.2);
    let mut extra = Vec::with_capacity(n);
    for ((map, _), e) in outs {
        flat.extend(map);
        extra.push(e);
    }
    Ok((
        Tensor::from_vec(flat, (n, dims.0, dims.1, dims.2), x.device())?,
        extra,
    ))
}

/// Threads for inference.
pub fn threads() -> usize {
    // The global pool: every core, or `--threads` / RAYON_NUM_THREADS.
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005) | 1;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    fn tensor(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// One case: (batch, cin, cout, h, w, k, stride, padding).
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);

    /// Every dense convolution shape of cxrnet-v1 (128 px) and DenseNet-121 (224 px: the stem,
    /// the first and last 1x1 of each block, the 3x3 at every resolution, the transitions
    /// after their pool), then odd shapes: 1x1 images, width 1, channels no multiple of 16,
    /// padding larger than the image, batch 1 and 7.
    const CASES: &[Case] = &[
        (1, 1, 24, 128, 128, 5, 2, 2),
        (1, 24, 32, 64, 64, 3, 2, 1),
        (1, 24, 32, 64, 64, 1, 2, 0),
        (1, 32, 32, 32, 32, 3, 1, 1),
        (1, 32, 64, 32, 32, 3, 2, 1),
        (1, 64, 64, 16, 16, 3, 1, 1),
        (1, 64, 128, 16, 16, 3, 2, 1),
        (1, 128, 192, 8, 8, 3, 2, 1),
        (1, 192, 192, 4, 4, 3, 1, 1),
        (1, 3, 64, 224, 224, 7, 2, 3),
        (1, 64, 128, 56, 56, 1, 1, 0),
        (1, 224, 128, 56, 56, 1, 1, 0),
        (1, 128, 32, 56, 56, 3, 1, 1),
        (1, 256, 128, 28, 28, 1, 1, 0),
        (1, 128, 32, 28, 28, 3, 1, 1),
        (1, 480, 128, 28, 28, 1, 1, 0),
        (1, 512, 256, 14, 14, 1, 1, 0),
        (1, 992, 128, 14, 14, 1, 1, 0),
        (1, 128, 32, 14, 14, 3, 1, 1),
        (1, 1024, 512, 7, 7, 1, 1, 0),
        (1, 992, 128, 7, 7, 1, 1, 0),
        (1, 128, 32, 7, 7, 3, 1, 1),
        (7, 17, 5, 9, 7, 3, 2, 1),
        (1, 3, 9, 1, 1, 3, 1, 1),
        (2, 5, 3, 1, 1, 7, 2, 3),
        (7, 19, 11, 6, 1, 5, 1, 2),
        (1, 1, 1, 1, 13, 3, 2, 1),
        (3, 33, 7, 5, 4, 1, 2, 0),
    ];

    /// The dense kernel against candle's convolution with the same padding, bias, residual and
    /// activation, within 1e-4 of the largest output.
    #[test]
    fn dense_convolutions_match_candle_on_every_network_shape() {
        for (i, &(n, cin, cout, h, w, k, s, p)) in CASES.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = rand(n * cin * h * w, seed);
            let wt = rand(cout * cin * k * k, seed + 1);
            let bias = rand(cout, seed + 2);
            let reference = tensor(&x, &[n, cin, h, w])
                .conv2d(&tensor(&wt, &[cout, cin, k, k]), p, s, 1, 1)
                .unwrap()
                .broadcast_add(&tensor(&bias, &[1, cout, 1, 1]))
                .unwrap();
            let (_, _, oh, ow) = reference.dims4().unwrap();
            let residual = rand(n * cout * oh * ow, seed + 3);
            let folded = Folded { weight: wt, bias };
            for (act, with_residual) in [(Act::None, false), (Act::Relu, true), (Act::Relu6, false)]
            {
                let mut want = reference.clone();
                if with_residual {
                    want = (want + tensor(&residual, &[n, cout, oh, ow])).unwrap();
                }
                let want = match act {
                    Act::None => want,
                    Act::Relu => want.relu().unwrap(),
                    Act::Relu6 => want.clamp(0f32, 6f32).unwrap(),
                };
                // One thread, and split over three (the column blocks of big products).
                for par in [Parallelism::None, Parallelism::Rayon(3)] {
                    let mut got = Vec::new();
                    for (b, img) in x.chunks(cin * h * w).enumerate() {
                        let r = &residual[b * cout * oh * ow..(b + 1) * cout * oh * ow];
                        let (out, gh, gw) = conv_dense(
                            img,
                            &folded,
                            (cin, h, w),
                            k,
                            s,
                            Pad::Sym(p),
                            act,
                            with_residual.then_some(r),
                            par,
                        );
                        assert_eq!((gh, gw), (oh, ow), "case {i}");
                        got.extend(out);
                    }
                    let err = max_rel(&got, &flat(&want));
                    assert!(err < 1e-4, "case {i} {:?} {act:?} {par:?}: {err}", CASES[i]);
                }
            }
        }
    }

    /// A product split into column blocks (the last one shorter) equals the one-thread one.
    #[test]
    fn products_split_by_columns_equal_one_thread() {
        let (m, k, n) = (64, 2700, 50);
        assert!(m * k * n >= SPLIT_MIN);
        let (w, x) = (rand(m * k, 1), rand(k * n, 2));
        let mut one = vec![0f32; m * n];
        let mut split = vec![1f32; m * n];
        matmul(&mut one, &w, &x, m, k, n, Parallelism::None);
        matmul(&mut split, &w, &x, m, k, n, Parallelism::Rayon(3));
        assert!(max_rel(&split, &one) < 1e-6);
    }

    /// Max pool with -inf padding against a direct definition; average pool against candle's.
    #[test]
    fn pools_match_their_definitions() {
        for &(c, h, w, k, s, p) in &[
            (64, 112, 112, 3, 2, 1),
            (3, 7, 5, 3, 2, 1),
            (2, 1, 1, 3, 2, 1),
            (5, 6, 1, 3, 1, 1),
            (1, 9, 9, 2, 2, 0),
        ] {
            let x = rand(c * h * w, (h * 31 + w) as u64);
            let (got, oh, ow) = max_pool(&x, (c, h, w), k, s, p, Parallelism::Rayon(2));
            assert_eq!((oh, ow), ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1));
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut m = f32::NEG_INFINITY;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) = (
                                    (oy * s + ky) as isize - p as isize,
                                    (ox * s + kx) as isize - p as isize,
                                );
                                if (0..h as isize).contains(&y) && (0..w as isize).contains(&xx) {
                                    m = m.max(x[(ch * h + y as usize) * w + xx as usize]);
                                }
                            }
                        }
                        assert_eq!(
                            got[(ch * oh + oy) * ow + ox],
                            m,
                            "{c} {h} {w} at {ch} {oy} {ox}"
                        );
                    }
                }
            }
            let (got, oh, ow) = avg_pool2(&x, (c, h, w));
            assert_eq!((oh, ow), (h / 2, w / 2));
            if oh > 0 && ow > 0 {
                let want = tensor(&x, &[1, c, h, w]).avg_pool2d(2).unwrap();
                assert!(max_rel(&got, &flat(&want)) < 1e-6, "avg {c} {h} {w}");
            } else {
                assert!(got.is_empty());
            }
        }
    }

    #[test]
    fn affine_applies_scale_shift_and_activation_per_channel() {
        let x = [1.0, -2.0, 3.0, 4.0, -5.0, 6.0];
        let mut out = [0f32; 6];
        affine(
            &x,
            &mut out,
            &(vec![2.0, -1.0], vec![0.5, 1.0]),
            Act::Relu,
            Parallelism::None,
        );
        assert_eq!(out, [2.5, 0.0, 6.5, 0.0, 6.0, 0.0]);
        affine(
            &x,
            &mut out,
            &(vec![2.0, -1.0], vec![0.5, 1.0]),
            Act::Relu6,
            Parallelism::None,
        );
        assert_eq!(out, [2.5, 0.0, 6.0, 0.0, 6.0, 0.0]);
    }

    /// A batch gives every image's map whether the images run in parallel or one at a time.
    #[test]
    fn batches_keep_image_order_and_refuse_ragged_maps() {
        let x = tensor(&rand(7 * 2 * 3 * 3, 5), &[7, 2, 3, 3]);
        let twice = |img: &[f32], dims: (usize, usize, usize), _: Parallelism, _: usize| {
            (img.iter().map(|v| 2.0 * v).collect(), dims)
        };
        for n in [1, 7] {
            let xs = x.narrow(0, 0, n).unwrap();
            let got = batch(&xs, twice).unwrap();
            assert_eq!(flat(&got), flat(&(&xs * 2.0).unwrap()));
        }
        let ragged = |img: &[f32], _: (usize, usize, usize), _: Parallelism, _: usize| {
            let len = if img[0] > 0.0 { 2 } else { 1 };
            (vec![0.0; len], (1, 1, len))
        };
        let signs = tensor(&[1.0, -1.0, 1.0, -1.0], &[4, 1, 1, 1]);
        assert!(batch(&signs, ragged).is_err());
    }
}
