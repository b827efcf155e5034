//! `bench --only merge`: joining the parts of a sharded scan. Generates `rows` result rows split
//! into shards as `scan --shard` would (CSV parts with their records), then times `merge` as a
//! child process and reads its peak memory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::catalog::shard::Shard;
use crate::model::Manifest;
use crate::results::parts::{RECORD_VERSION, ScanOptions, ShardRecord, write_record};
use crate::results::{ExportFormat, Row, RowWriter, Status, Typicality};

pub struct MergeFigures {
    pub rows: usize,
    pub shards: u32,
    /// Size of the parts on disk.
    pub bytes: u64,
    /// Wall time of each `merge` run, seconds.
    pub seconds: Vec<f64>,
    /// Peak resident memory of the largest `merge` run, MiB.
    pub peak_mib: f64,
}

/// A plausible scored row for a generated path.
fn row(i: usize, labels: &[String]) -> Row {
    let a = ((i * 7919) % 1000) as f32 / 1000.0;
    let mut probs = vec![(1.0 - a) / (labels.len() as f32 - 1.0).max(1.0); labels.len()];
    probs[0] = a;
    Row {
        path: format!("d{:03}/img{i}.png", i % 1000),
        status: Status::Done,
        error: None,
        folder_label: Some(format!("d{:03}", i % 1000)),
        label: None,
        format: Some("PNG".into()),
        width: Some(1024),
        height: Some(1024),
        bit_depth: Some(8),
        modality: None,
        view_position: None,
        body_part: None,
        photometric: None,
        study_date: None,
        patient_id: None,
        study_instance_uid: None,
        series_instance_uid: None,
        sop_instance_uid: None,
        accession_number: None,
        predicted: Some(labels[if a > 0.5 { 0 } else { 1.min(labels.len() - 1) }].clone()),
        flagged: Some(a > 0.5),
        probabilities: probs,
        typicality: Some(Typicality::Typical),
        unusual_score: Some(0.5),
        border_attention: Some(0.25),
    }
}

/// Write the parts under `dir`; returns them and their total size.
fn make_parts(
    dir: &Path,
    manifest: &Manifest,
    model: Option<&Path>,
    rows: usize,
    shards: u32,
) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let root = dir.join("folder");
    std::fs::create_dir_all(&root)?;
    let paths: Vec<PathBuf> = (1..=shards)
        .map(|k| dir.join(format!("part-{k}.csv")))
        .collect();
    let mut writers = paths
        .iter()
        .map(|p| {
            RowWriter::new(
                std::io::BufWriter::new(std::fs::File::create(p)?),
                ExportFormat::Csv,
                &manifest.labels,
            )
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut counts = vec![0usize; shards as usize];
    // In the order a scan writes them: folder by folder, names in natural order.
    let order = (0..1000).flat_map(|d| (d..rows).step_by(1000));
    for i in order {
        let r = row(i, &manifest.labels);
        let k = Shard::of(Path::new(&r.path), shards) as usize - 1;
        writers[k].write(&r)?;
        counts[k] += 1;
    }
    for w in writers {
        w.finish()?;
    }
    let mut bytes = 0;
    for (k, path) in paths.iter().enumerate() {
        bytes += std::fs::metadata(path)?.len();
        let record = ShardRecord {
            version: RECORD_VERSION,
            shard: Shard {
                index: k as u32 + 1,
                count: shards,
            },
            root: root.canonicalize()?,
            model: crate::results::store::model_id(manifest),
            model_manifest: model.map(Path::to_path_buf),
            options: ScanOptions::default(),
            format: ExportFormat::Csv,
            images: counts[k],
            errors: 0,
            seconds: 0.0,
            written_by: env!("CARGO_PKG_VERSION").into(),
        };
        write_record(path, &record)?;
    }
    Ok((paths, bytes))
}

/// Time `runs` merges of `rows` generated rows in `shards` parts. `model` is the manifest path
/// given to `bench` (recorded in the parts, as scan does), `None` for the built-in model.
pub fn merge_figures(
    dir: &Path,
    manifest: &Manifest,
    model: Option<&Path>,
    rows: usize,
    shards: u32,
    runs: usize,
) -> anyhow::Result<MergeFigures> {
    let (parts, bytes) = make_parts(dir, manifest, model, rows, shards)?;
    let exe = std::env::current_exe()?;
    let (mut seconds, mut peak_kib) = (Vec::new(), 0i64);
    for run in 0..runs.max(1) {
        let out = dir.join(format!("merged-{run}.csv"));
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["merge", "--quiet", "--out"])
            .arg(&out)
            .args(&parts);
        let started = Instant::now();
        let child = cmd.spawn()?;
        let (status, max_rss) = wait_with_rusage(child)?;
        seconds.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(status == 0, "merge exited with {status}");
        peak_kib = peak_kib.max(max_rss);
        std::fs::remove_file(&out)?;
    }
    Ok(MergeFigures {
        rows,
        shards,
        bytes,
        seconds,
        peak_mib: peak_kib as f64 / 1024.0,
    })
}

/// Wait for `child`; its exit status and peak resident memory (KiB) from the kernel.
#[cfg(unix)]
fn wait_with_rusage(child: std::process::Child) -> anyhow::Result<(i32, i64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; `pid` is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    anyhow::ensure!(got == pid, "wait4: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss))
}

#[cfg(not(unix))]
fn wait_with_rusage(mut child: std::process::Child) -> anyhow::Result<(i32, i64)> {
    Ok((child.wait()?.code().unwrap_or(-1), 0))
}
