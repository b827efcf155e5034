//! Digitally reconstructed radiographs: simulated chest X-rays rendered from a CT volume, for
//! the project's own `samples/` (see `examples/make_samples.rs`). Parallel-beam ray sums of
//! linear attenuation, Beer-Lambert exponentiation, and a film-like characteristic curve.

/// A CT volume in Hounsfield units, `hu[(k * ny + j) * nx + i]`.
#[derive(Clone, Debug)]
pub struct Volume {
    /// Voxels along x (patient left-right), y (front-back), z (feet-head).
    pub dims: [usize; 3],
    /// Voxel size in millimetres along x, y, z.
    pub spacing: [f32; 3],
    pub hu: Vec<f32>,
}

/// Which way the rays run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Rays front to back (along y): a PA/AP chest film.
    Frontal,
    /// Rays side to side (along x): a lateral film.
    Lateral,
}

/// Linear attenuation per millimetre at a diagnostic energy (water ~0.02 /mm); bone (high HU)
/// is weighted up a little, as the photoelectric effect does at chest-film energies.
pub fn attenuation(hu: f32) -> f32 {
    let mu = 0.02 * (1.0 + hu / 1000.0);
    let bone = if hu > 300.0 {
        1.0 + (hu - 300.0) / 1500.0
    } else {
        1.0
    };
    (mu * bone).max(0.0)
}

/// Line integrals of attenuation, one per detector pixel: `(width, height, values)`, rows from
/// head (top) to feet, resampled to square pixels of the in-plane voxel size. `angle` rotates
/// the volume about the feet-head axis (radians), for slightly oblique views.
pub fn project(vol: &Volume, view: View, angle: f32) -> (usize, usize, Vec<f32>) {
    let [nx, ny, nz] = vol.dims;
    let (cols, depth, step) = match view {
        View::Frontal => (nx, ny, vol.spacing[1]),
        View::Lateral => (ny, nx, vol.spacing[0]),
    };
    let pixel = vol.spacing[0];
    let rows = ((nz as f32 * vol.spacing[2]) / pixel).round().max(1.0) as usize;
    let (s, c) = angle.sin_cos();
    let (cx, cy) = ((nx as f32 - 1.0) / 2.0, (ny as f32 - 1.0) / 2.0);
    let sample = |x: f32, y: f32, k: usize| -> f32 {
        let (i, j) = (x.round(), y.round());
        if i < 0.0 || j < 0.0 || i >= nx as f32 || j >= ny as f32 {
            return 0.0;
        }
        attenuation(vol.hu[(k * ny + j as usize) * nx + i as usize])
    };
    // Ray sums per CT slice, then linear interpolation between slices.
    let mut per_slice = vec![0f32; nz * cols];
    for k in 0..nz {
        for u in 0..cols {
            let mut sum = 0.0;
            for t in 0..depth {
                let (a, b) = (
                    u as f32 - (cols as f32 - 1.0) / 2.0,
                    t as f32 - (depth as f32 - 1.0) / 2.0,
                );
                let (x, y) = match view {
                    View::Frontal => (cx + a * c - b * s, cy + a * s + b * c),
                    View::Lateral => (cx + b * c - a * s, cy + b * s + a * c),
                };
                sum += sample(x, y, k);
            }
            per_slice[k * cols + u] = sum * step;
        }
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        // Row 0 is the head end: the highest slice.
        let z = (nz as f32 - 1.0) * (1.0 - r as f32 / (rows.max(2) - 1) as f32);
        let (k0, f) = (z.floor() as usize, z - z.floor());
        let k1 = (k0 + 1).min(nz - 1);
        for u in 0..cols {
            out[r * cols + u] = per_slice[k0 * cols + u] * (1.0 - f) + per_slice[k1 * cols + u] * f;
        }
    }
    (cols, rows, out)
}

/// Film rendering: Beer-Lambert transmission `exp(-P)` scaled by `exposure`, then a sigmoid
/// characteristic (H&D) curve of log exposure; bright where the film got little light (bone).
/// Returns values in [0, 1].
pub fn film(line_integrals: &[f32], exposure: f32, contrast: f32) -> Vec<f32> {
    let log_e: Vec<f32> = line_integrals
        .iter()
        .map(|p| (exposure * (-p).exp()).max(1e-12).log10())
        .collect();
    let mut sorted = log_e.clone();
    sorted.sort_by(f32::total_cmp);
    // Centre the curve on the body, not on the air around it.
    let mid = sorted[sorted.len() / 2];
    log_e
        .iter()
        .map(|&l| 1.0 - 1.0 / (1.0 + (-(l - mid) * contrast).exp()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NiftiError {
    #[error("not a NIfTI-1 file: {0}")]
    Format(String),
}

/// Read a NIfTI-1 volume (already un-gzipped): int16, uint16, uint8 or float32 samples,
/// scaled by `scl_slope` / `scl_inter` into Hounsfield units.
pub fn read_nifti(bytes: &[u8]) -> Result<Volume, NiftiError> {
    let bad = |m: &str| NiftiError::Format(m.to_string());
    if bytes.len() < 352 || i32::from_le_bytes(bytes[0..4].try_into().unwrap()) != 348 {
        return Err(bad(
            "header size is not 348 (big-endian files are not supported)",
        ));
    }
    let i16_at = |o: usize| i16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let f32_at = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let dims = [i16_at(42), i16_at(44), i16_at(46)];
    if i16_at(40) < 3 || dims.iter().any(|&d| d <= 0) {
        return Err(bad("not a 3-D volume"));
    }
    let dims = dims.map(|d| d as usize);
    let spacing = [f32_at(80).abs(), f32_at(84).abs(), f32_at(88).abs()];
    let (slope, inter) = match f32_at(112) {
        s if s == 0.0 || !s.is_finite() => (1.0, 0.0),
        s => (s, f32_at(116)),
    };
    let offset = (f32_at(108) as usize).max(352);
    let n = dims.iter().product::<usize>();
    let data = &bytes[offset.min(bytes.len())..];
    let (size, read): (usize, fn(&[u8]) -> f32) = match i16_at(70) {
        2 => (1, |b| b[0] as f32),
        4 => (2, |b| i16::from_le_bytes([b[0], b[1]]) as f32),
        512 => (2, |b| u16::from_le_bytes([b[0], b[1]]) as f32),
        16 => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        t => return Err(bad(&format!("datatype {t} not supported"))),
    };
    if data.len() < n * size {
        return Err(bad("truncated voxel data"));
    }
    let hu = data
        .chunks_exact(size)
        .take(n)
        .map(|b| read(b) * slope + inter)
        .collect();
    Ok(Volume { dims, spacing, hu })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A water cylinder (radius 20 voxels, axis feet-head) with a one-voxel bone rod
    /// off-centre in column 38: the rod's shadow must fall in column 30, and a longer path through water must
    /// give a larger line integral (monotone in path length).
    #[test]
    fn cylinder_and_rod_projection_physics() {
        let (nx, ny, nz) = (64, 64, 4);
        let mut hu = vec![-1000f32; nx * ny * nz];
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let (x, y) = (i as f32 - 31.5, j as f32 - 31.5);
                    let v = &mut hu[(k * ny + j) * nx + i];
                    if x * x + y * y < 400.0 {
                        *v = 0.0;
                    }
                    if i == 38 && y.abs() < 2.0 {
                        *v = 1500.0;
                    }
                }
            }
        }
        let vol = Volume {
            dims: [nx, ny, nz],
            spacing: [1.0, 1.0, 1.0],
            hu,
        };
        let (w, h, p) = project(&vol, View::Frontal, 0.0);
        assert_eq!((w, h), (64, 4));
        let row = &p[w..2 * w];
        let peak = (0..w).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(peak, 38, "the rod's shadow is where the rod is");
        // Water only: the chord through a circle grows towards the centre.
        for u in 11..31 {
            assert!(
                row[u] <= row[u + 1],
                "column {u}: {} then {}",
                row[u],
                row[u + 1]
            );
        }
        assert!(
            row[31] > row[15] * 1.5,
            "centre chord is much longer than an edge chord"
        );
        assert_eq!(row[0], 0.0, "air attenuates nothing");
        // Film: more attenuation, brighter.
        let shown = film(row, 1.0, 8.0);
        assert!(shown[38] > shown[31] && shown[31] > shown[0]);
    }

    #[test]
    fn nifti_header_errors() {
        assert!(read_nifti(&[0u8; 10]).is_err());
        let mut header = vec![0u8; 352];
        header[0..4].copy_from_slice(&348i32.to_le_bytes());
        header[40..42].copy_from_slice(&3i16.to_le_bytes());
        for (o, d) in [(42, 2i16), (44, 2), (46, 2)] {
            header[o..o + 2].copy_from_slice(&d.to_le_bytes());
        }
        header[70..72].copy_from_slice(&4i16.to_le_bytes());
        assert!(
            read_nifti(&header)
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        header.extend(std::iter::repeat_n(0u8, 16));
        let v = read_nifti(&header).unwrap();
        assert_eq!(v.dims, [2, 2, 2]);
    }
}
