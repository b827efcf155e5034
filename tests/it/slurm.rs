//! A real Slurm on this machine (deploy/slurm/local-cluster.sh: munged, slurmctld and slurmd in
//! a temporary folder, on free ports) runs deploy/slurm/scan.sbatch as a 4-task job array; the
//! merged CSV must equal one `scan` of the same folder, row for row. Skips, saying why, where
//! Slurm is not installed, the test does not run as root, or the daemons do not start; `.ci/run`
//! installs slurm-wlm and munge so that it runs there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{fresh_cache_home, tiny_model};

struct Cluster {
    dir: PathBuf,
    script: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cluster, or why there is none.
fn start(dir: &Path) -> Result<Cluster, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (slurmd runs jobs as their user)".into());
    }
    for tool in ["munged", "slurmctld", "slurmd", "sbatch", "squeue"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "{tool} not installed (apt-get install slurm-wlm munge)"
            ));
        }
    }
    let script = repo().join("deploy/slurm/local-cluster.sh");
    let out = Command::new("timeout")
        .arg("60")
        .arg(&script)
        .arg("start")
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    let cluster = Cluster {
        dir: dir.to_path_buf(),
        script,
    };
    if !out.status.success() {
        return Err(format!(
            "the daemons did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(cluster)
}

#[test]
fn a_four_task_job_array_merges_into_the_single_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster_dir = tmp.path().join("cluster");
    let cluster = match start(&cluster_dir) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipping the Slurm test: {why}");
            return;
        }
    };
    let conf = cluster.dir.join("slurm.conf");
    let data = tmp.path().join("xrays");
    crate::shard::folder(&data, 30);
    let model = tiny_model(tmp.path());
    let results = tmp.path().join("results");
    let bin = assert_cmd::cargo::cargo_bin("cxr-triage");

    let submitted = Command::new("timeout")
        .arg("300")
        .args(["sbatch", "--wait", "--array=1-4", "--cpus-per-task=1"])
        .arg(repo().join("deploy/slurm/scan.sbatch"))
        .arg(&data)
        .arg(&results)
        .arg("--model")
        .arg(&model)
        .current_dir(tmp.path())
        .env("SLURM_CONF", &conf)
        .env("CXR_TRIAGE", &bin)
        .env("XDG_CACHE_HOME", fresh_cache_home())
        .output()
        .unwrap();
    let logs = || {
        let mut text = String::new();
        for dir in [tmp.path(), results.as_path(), cluster.dir.as_path()] {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    text += &format!(
                        "--- {}\n{}\n",
                        e.path().display(),
                        std::fs::read_to_string(e.path()).unwrap_or_default()
                    );
                }
            }
        }
        text
    };
    assert!(
        submitted.status.success(),
        "sbatch: {}\n{}",
        String::from_utf8_lossy(&submitted.stderr),
        logs()
    );
    // The merge job, submitted by the first task, runs once the array has finished.
    let merged = results.join("results.csv");
    let started = Instant::now();
    loop {
        let queue = Command::new("squeue")
            .args(["-h", "-o", "%j"])
            .env("SLURM_CONF", &conf)
            .output()
            .unwrap();
        let pending = String::from_utf8_lossy(&queue.stdout).contains("cxr-merge");
        if !pending && merged.exists() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no merged results after 2 minutes\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));

    let whole = tmp.path().join("whole.csv");
    let single = Command::new(&bin)
        .arg("scan")
        .arg(&data)
        .arg("--model")
        .arg(&model)
        .args(["--no-cache", "--quiet", "--out"])
        .arg(&whole)
        .env("XDG_CACHE_HOME", fresh_cache_home())
        .status()
        .unwrap();
    assert_eq!(single.code(), Some(1), "the folder has broken files");
    let (merged_text, whole_text) = (
        std::fs::read_to_string(&merged).unwrap(),
        std::fs::read_to_string(&whole).unwrap(),
    );
    assert_eq!(merged_text.lines().count(), 34, "{}", logs());
    assert_eq!(merged_text, whole_text, "{}", logs());
    // Each task kept its own store, and the split is remembered for a resubmitted task.
    for k in 1..=4 {
        assert!(results.join(format!("store-{k}.sqlite3")).exists());
        assert!(results.join(format!("part-{k}.csv.shard.json")).exists());
    }
    assert_eq!(
        std::fs::read_to_string(results.join("shards"))
            .unwrap()
            .trim(),
        "4"
    );
    let merge_log = std::fs::read_to_string(results.join("merge.log")).unwrap();
    assert!(merge_log.contains("33 images from 4 shards"), "{merge_log}");
}
