use std::path::Path;

use crate::common::{pattern8, png_bytes, tiny_model, unreadable_possible, write_png8};

fn scan(args: &[&str]) -> assert_cmd::assert::Assert {
    crate::common::cxr().arg("scan").args(args).assert()
}

fn csv_rows(text: &str) -> Vec<csv::StringRecord> {
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(Result::unwrap)
        .collect()
}

/// A folder with good images in class folders and every kind of bad input beside them.
fn hostile_folder(root: &Path) {
    std::fs::create_dir_all(root.join("normal")).unwrap();
    std::fs::create_dir_all(root.join("covid")).unwrap();
    write_png8(&root.join("normal/good1.png"), 64, 48);
    write_png8(&root.join("normal/good2.png"), 40, 70);
    image::DynamicImage::ImageLuma8(pattern8(50, 50))
        .save(root.join("covid/photo.jpg"))
        .unwrap();
    let png = png_bytes(&pattern8(64, 64));
    std::fs::write(root.join("empty.png"), b"").unwrap();
    std::fs::write(root.join("truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(root.join("x.png"), "just text").unwrap();
    std::fs::create_dir(root.join("y.jpg")).unwrap();
    write_png8(&root.join("tiny.png"), 1, 1);
    let sixteen = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(40, 40, |x, y| {
        image::Luma([((x * 100 + y) % 4096) as u16])
    });
    image::DynamicImage::ImageLuma16(sixteen)
        .save(root.join("twelve-bit.png"))
        .unwrap();
}

#[test]
fn scan_writes_one_row_per_file_and_exits_1_on_failures() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    hostile_folder(data.path());
    let out = scan(&[
        data.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--quiet",
    ])
    .code(1)
    .get_output()
    .stdout
    .clone();
    let text = String::from_utf8(out).unwrap();
    let header = text.lines().next().unwrap();
    assert_eq!(
        header,
        "path,status,error,folder_label,label,format,width,height,bit_depth,modality,view_position,body_part,photometric,study_date,patient_id,study_instance_uid,series_instance_uid,sop_instance_uid,accession_number,p_covid,p_normal,p_pneumonia,predicted,flagged,typicality,unusual_score,border_attention"
    );
    let rows = csv_rows(&text);
    let col = |name: &str| header.split(',').position(|h| h == name).unwrap();
    let by_path = |p: &str| {
        rows.iter()
            .find(|r| &r[0] == p)
            .unwrap_or_else(|| panic!("no row for {p}: {text}"))
    };
    assert_eq!(rows.len(), 8, "{text}");
    for good in [
        "normal/good1.png",
        "normal/good2.png",
        "covid/photo.jpg",
        "twelve-bit.png",
    ] {
        let r = by_path(good);
        assert_eq!(&r[1], "done", "{good}: {r:?}");
        let p: f32 = ["p_covid", "p_normal", "p_pneumonia"]
            .map(|c| r[col(c)].parse::<f32>().unwrap())
            .iter()
            .sum();
        assert!((p - 1.0).abs() < 1e-3);
        assert!(["covid", "normal", "pneumonia"].contains(&&r[col("predicted")]));
        assert_eq!(
            &r[col("flagged")],
            "yes",
            "covid threshold 0 flags everything"
        );
    }
    assert_eq!(&by_path("normal/good1.png")[3], "normal");
    assert_eq!(
        &by_path("normal/good1.png")[4],
        "normal",
        "true label from the folder"
    );
    assert_eq!(&by_path("covid/photo.jpg")[5], "JPEG");
    assert_eq!(&by_path("twelve-bit.png")[8], "16");
    for (bad, message) in [
        ("empty.png", "empty file"),
        ("truncated.png", "corrupt"),
        ("x.png", "not a recognised image"),
        ("tiny.png", "too small"),
    ] {
        let r = by_path(bad);
        assert_eq!(&r[1], "error", "{bad}");
        assert!(r[2].contains(message), "{bad}: {}", &r[2]);
        assert_eq!(&r[col("p_covid")], "", "no probabilities for {bad}");
    }
    assert!(
        !rows.iter().any(|r| r[0].starts_with("y.jpg")),
        "a folder named y.jpg is not a file"
    );
}

#[test]
fn clean_folder_exits_0_and_writes_json_and_jsonl() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    for i in [10, 2, 1] {
        write_png8(&data.path().join(format!("img{i}.png")), 40, 40);
    }
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("r.json");
    let assert = scan(&[
        data.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ])
    .code(0);
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("3 images"), "summary on stderr: {stderr}");
    assert!(stderr.contains("errors 0"), "{stderr}");
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let paths: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["img1.png", "img2.png", "img10.png"],
        "natural order"
    );
    let probs = &rows[0]["probabilities"];
    assert_eq!(probs.as_object().unwrap().len(), 3);

    let jsonl = out_dir.path().join("r.jsonl");
    scan(&[
        data.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        jsonl.to_str().unwrap(),
        "-q",
    ])
    .code(0);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["status"], "done");
}

#[test]
fn zero_threads_is_a_usage_error() {
    let out = scan(&["--threads", "0", "."]).code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("--threads 0"), "{err}");
}

#[test]
fn results_do_not_depend_on_batch_size_or_threads() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    hostile_folder(data.path());
    let run = |extra: &[&str]| {
        let mut args = vec![
            data.path().to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "-q",
        ];
        args.extend(extra);
        String::from_utf8(scan(&args).code(1).get_output().stdout.clone()).unwrap()
    };
    let a = run(&["--batch", "1", "--jobs", "1", "--threads", "1"]);
    let b = run(&["--batch", "8", "--jobs", "3", "--threads", "3"]);
    // Batch size may change the last float digits; compare rounded.
    let round = |t: &str| -> Vec<Vec<String>> {
        csv_rows(t)
            .iter()
            .map(|r| {
                r.iter()
                    .map(|f| {
                        f.parse::<f32>()
                            .map_or(f.to_string(), |v| format!("{v:.4}"))
                    })
                    .collect()
            })
            .collect()
    };
    assert_eq!(round(&a), round(&b));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let assert = scan(&["/definitely/not/here", "--model", model.to_str().unwrap()]).code(2);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(
        err.trim(),
        "error: /definitely/not/here: no such file or folder"
    );

    let data = tempfile::tempdir().unwrap();
    let assert = scan(&[data.path().to_str().unwrap(), "--model", "/no/model.json"]).code(2);
    assert!(
        String::from_utf8_lossy(&assert.get_output().stderr).contains("cannot read /no/model.json")
    );

    scan(&["--batch", "0", data.path().to_str().unwrap()]).code(2);
}

#[test]
fn empty_folder_says_so_and_writes_a_header() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    let assert = scan(&[
        data.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ])
    .code(0);
    let out = assert.get_output();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images found"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[cfg(unix)]
#[test]
fn unreadable_file_is_a_row_not_a_crash() {
    use std::os::unix::fs::PermissionsExt;
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    let locked = data.path().join("locked.png");
    write_png8(&locked, 32, 32);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    if !unreadable_possible(&locked) {
        eprintln!("skipping: running as root, chmod 000 does not stop reads");
        return;
    }
    let assert = scan(&[
        data.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "-q",
    ])
    .code(1);
    let text = String::from_utf8_lossy(&assert.get_output().stdout).into_owned();
    assert!(text.contains("locked.png,error,cannot read file"), "{text}");
}
