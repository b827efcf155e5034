//! Inference kernels over contiguous buffers (one image's `(channels, h, w)` planes, row-major):
//! 1x1 convolutions as one `gemm` call with the bias, ReLU6 and residual add fused into one pass
//! over the output, dense k x k convolutions as im2col + `gemm`, and a direct depthwise kernel.
//! Padding is TF-SAME throughout (see [`super::efficientnet::same_padding`]). No autograd:
//! training runs candle's own operations on the same weights.

use gemm::Parallelism;

use super::efficientnet::same_padding;

/// What runs after a convolution, in the same pass over its output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu6,
}

/// `dst (m, n) = w (m, k) x src (k, n)`, all row-major.
fn matmul(dst: &mut [f32], w: &[f32], src: &[f32], m: usize, k: usize, n: usize, par: Parallelism) {
    assert!(dst.len() >= m * n && w.len() >= m * k && src.len() >= k * n);
    // SAFETY: the asserts above keep every index the strides reach inside the three slices;
    // `dst` does not alias the inputs (a `&mut` borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            w.as_ptr(),
            1,
            k as isize,
            src.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Add the bias per output channel, then the residual, then the activation, in one pass.
fn epilogue(dst: &mut [f32], bias: &[f32], plane: usize, act: Act, residual: Option<&[f32]>) {
    for (c, row) in dst.chunks_mut(plane).enumerate() {
        let b = bias[c];
        match residual {
            Some(r) => {
                let r = &r[c * plane..(c + 1) * plane];
                row.iter_mut().zip(r).for_each(|(v, r)| *v += b + r);
            }
            None => row.iter_mut().for_each(|v| *v += b),
        }
        if act == Act::Relu6 {
            row.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
        }
    }
}

/// A 1x1 convolution: `(cin, plane)` -> `(cout, plane)` with bias, optional residual and
/// activation.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    src: &[f32],
    w: &[f32],
    bias: &[f32],
    cin: usize,
    plane: usize,
    act: Act,
    residual: Option<&[f32]>,
    par: Parallelism,
) -> Vec<f32> {
    let cout = bias.len();
    let mut dst = vec![0f32; cout * plane];
    matmul(&mut dst, w, src, cout, cin, plane, par);
    epilogue(&mut dst, bias, plane, act, residual);
    dst
}

/// A dense `k x k` convolution with stride (TF-SAME) via im2col: `(cin, h, w)` ->
/// (`(cout, oh, ow)`, oh, ow). `w` is `(cout, cin, k, k)`.
#[allow(clippy::too_many_arguments)]
pub fn conv_dense(
    src: &[f32],
    w: &[f32],
    bias: &[f32],
    (cin, h, wd): (usize, usize, usize),
    k: usize,
    stride: usize,
    act: Act,
    par: Parallelism,
) -> (Vec<f32>, usize, usize) {
    let (t, _, oh) = same_padding(h, k, stride);
    let (l, _, ow) = same_padding(wd, k, stride);
    let rows = cin * k * k;
    let mut cols = vec![0f32; rows * oh * ow];
    for ci in 0..cin {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((ci * k + ky) * k + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let y = (oy * stride + ky) as isize - t as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    let line = &src[(ci * h + y as usize) * wd..][..wd];
                    for ox in 0..ow {
                        let x = (ox * stride + kx) as isize - l as isize;
                        if x >= 0 && x < wd as isize {
                            row[oy * ow + ox] = line[x as usize];
                        }
                    }
                }
            }
        }
    }
    let cout = bias.len();
    let mut dst = vec![0f32; cout * oh * ow];
    matmul(&mut dst, w, &cols, cout, rows, oh * ow, par);
    epilogue(&mut dst, bias, oh * ow, act, None);
    (dst, oh, ow)
}

/// Depthwise `k x k` convolution (TF-SAME) of one image, the batch norm folded in as a
/// per-channel `scale` and `shift`, then ReLU6: `(c, h, w)` -> (`(c, oh, ow)`, oh, ow).
/// Channels are split over `threads` threads.
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
    let mut out = vec![0f32; c * oh * ow];
    // Row by row: for each tap, one multiply-add over the run of output pixels whose input
    // lies inside the image (no per-pixel bounds checks; stride 1 vectorises).
    let plane = |ch: usize, dst: &mut [f32]| {
        let src = &src[ch * h * wd..(ch + 1) * h * wd];
        let kw = &w[ch * k * k..(ch + 1) * k * k];
        let (s, b) = (scale[ch], shift[ch]);
        for oy in 0..oh {
            let row = &mut dst[oy * ow..(oy + 1) * ow];
            row.fill(0.0);
            for ky in 0..k {
                let y = (oy * stride + ky) as isize - t as isize;
                if y < 0 || y >= h as isize {
                    continue;
                }
                let line = &src[y as usize * wd..(y as usize + 1) * wd];
                for kx in 0..k {
                    let wv = kw[ky * k + kx];
                    // Output columns with 0 <= ox * stride + kx - l < wd.
                    let lo = l.saturating_sub(kx).div_ceil(stride);
                    let Some(last) = (wd + l).checked_sub(kx + 1) else {
                        continue;
                    };
                    let hi = (last / stride).min(ow - 1);
                    if lo > hi {
                        continue;
                    }
                    let first = lo * stride + kx - l;
                    if stride == 1 {
                        let out = &mut row[lo..=hi];
                        let inp = &line[first..first + out.len()];
                        out.iter_mut().zip(inp).for_each(|(o, v)| *o += wv * v);
                    } else {
                        for (j, o) in row[lo..=hi].iter_mut().enumerate() {
                            *o += wv * line[first + j * stride];
                        }
                    }
                }
            }
            row.iter_mut()
                .for_each(|v| *v = (*v * s + b).clamp(0.0, 6.0));
        }
    };
    let threads = threads.clamp(1, c.max(1));
    if threads == 1 {
        for (ch, dst) in out.chunks_mut(oh * ow).enumerate() {
            plane(ch, dst);
        }
    } else {
        let per = c.div_ceil(threads);
        std::thread::scope(|scope| {
            for (i, chunk) in out.chunks_mut(per * oh * ow).enumerate() {
                let plane = &plane;
                scope.spawn(move || {
                    for (j, dst) in chunk.chunks_mut(oh * ow).enumerate() {
                        plane(i * per + j, dst);
                    }
                });
            }
        });
    }
    (out, oh, ow)
}

/// Threads for inference: the machine's cores.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
