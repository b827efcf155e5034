use std::path::PathBuf;

use cxr_triage::catalog::{WalkOptions, walk};

use crate::common::write_png8;

fn names(root: &std::path::Path, options: &WalkOptions) -> Vec<String> {
    walk(root, options)
        .map(|e| e.rel().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn natural_order_hidden_skipped_labels_from_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["normal", "covid", ".cache"] {
        std::fs::create_dir(root.join(sub)).unwrap();
    }
    for name in ["img10.png", "img2.png", "img1.png"] {
        write_png8(&root.join("normal").join(name), 4, 4);
    }
    write_png8(&root.join("covid/a.png"), 4, 4);
    write_png8(&root.join(".cache/hidden.png"), 4, 4);
    write_png8(&root.join(".hidden.png"), 4, 4);
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    std::fs::write(root.join("x.png"), "a text file named png").unwrap();
    // A DICOM-looking file without an extension is found by its magic bytes.
    std::fs::write(
        root.join("IM0001"),
        [vec![0u8; 128], b"DICM".to_vec()].concat(),
    )
    .unwrap();
    std::fs::create_dir(root.join("y.jpg")).unwrap();

    let entries: Vec<_> = walk(root, &WalkOptions::default()).collect();
    let rel: Vec<PathBuf> = entries.iter().map(|e| e.rel().to_path_buf()).collect();
    assert_eq!(
        rel,
        [
            "covid/a.png",
            "IM0001",
            "normal/img1.png",
            "normal/img2.png",
            "normal/img10.png",
            "x.png"
        ]
        .map(PathBuf::from)
    );
    assert_eq!(entries[0].folder_label.as_deref(), Some("covid"));
    assert_eq!(entries[1].folder_label, None);
    assert_eq!(entries[4].folder_label.as_deref(), Some("normal"));

    let with_hidden = names(
        root,
        &WalkOptions {
            hidden: true,
            ..Default::default()
        },
    );
    assert!(with_hidden.contains(&".cache/hidden.png".to_string()));
    assert!(with_hidden.contains(&".hidden.png".to_string()));
}

#[test]
fn empty_folder_yields_nothing_and_single_file_yields_itself() {
    let dir = tempfile::tempdir().unwrap();
    assert!(names(dir.path(), &WalkOptions::default()).is_empty());
    let file = dir.path().join("one.png");
    write_png8(&file, 4, 4);
    let entries: Vec<_> = walk(&file, &WalkOptions::default()).collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, file);
}

#[cfg(unix)]
#[test]
fn symlink_loops_are_reported_not_followed_forever() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("a")).unwrap();
    write_png8(&root.join("a/img.png"), 4, 4);
    std::os::unix::fs::symlink(root.join("a"), root.join("a/loop")).unwrap();
    std::os::unix::fs::symlink(root.join("a/img.png"), root.join("link.png")).unwrap();

    // Not following: the directory link is not entered; the file link is listed.
    assert_eq!(
        names(root, &WalkOptions::default()),
        ["a/img.png", "link.png"]
    );

    let followed: Vec<_> = walk(
        root,
        &WalkOptions {
            follow_links: true,
            ..Default::default()
        },
    )
    .collect();
    let errors: Vec<_> = followed
        .iter()
        .filter_map(|e| e.walk_error.as_deref())
        .collect();
    assert_eq!(errors.len(), 1, "{followed:?}");
    assert!(errors[0].contains("loop"), "{errors:?}");
}

#[test]
fn a_streamed_walk_finds_the_same_files_and_sorting_them_by_path_gives_the_walk_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["b", "a10", "a2", "a2/deep", ".hidden"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    for i in 0..25 {
        std::fs::write(root.join(format!("img{i}.png")), b"").unwrap();
        std::fs::write(root.join(format!("a2/x{i}.dcm")), b"").unwrap();
    }
    for f in [
        "b/one.png",
        "a10/two.png",
        "a2/deep/three.png",
        "a2.png",
        ".hidden/no.png",
    ] {
        std::fs::write(root.join(f), b"").unwrap();
    }
    let sorted = names(root, &WalkOptions::default());
    assert_eq!(sorted.len(), 54, "{sorted:?}");
    assert_eq!(sorted[0], "a2/deep/three.png");
    assert_eq!(sorted[1], "a2/x0.dcm");
    assert_eq!(sorted[26], "a2.png");
    assert_eq!(sorted[27], "a10/two.png");
    let streamed: Vec<_> = walk(
        root,
        &WalkOptions {
            stream_after: Some(4),
            ..Default::default()
        },
    )
    .collect();
    let mut rel: Vec<PathBuf> = streamed.iter().map(|e| e.rel().to_path_buf()).collect();
    rel.sort_by(|a, b| cxr_triage::catalog::path_cmp(a, b));
    let rel: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(rel, sorted);
    // Each streamed entry has the same folder label as in the sorted walk.
    let label = |p: &str| {
        streamed
            .iter()
            .find(|e| e.rel().to_str() == Some(p))
            .unwrap()
            .folder_label
            .clone()
    };
    assert_eq!(label("a2/deep/three.png").as_deref(), Some("a2"));
    assert_eq!(label("img3.png"), None);
}

/// A DICOMDIR (PS3.10) whose IMAGE records reference these file IDs, with a PATIENT record
/// before them (not an image: not listed).
fn write_dicomdir(path: &std::path::Path, file_ids: &[&[&str]]) {
    use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use dicom_object::meta::FileMetaTableBuilder;
    let record = |kind: &str, id: Option<&[&str]>| {
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::DIRECTORY_RECORD_TYPE,
            VR::CS,
            PrimitiveValue::from(kind),
        ));
        if let Some(id) = id {
            item.put(DataElement::new(
                tags::REFERENCED_FILE_ID,
                VR::CS,
                PrimitiveValue::Strs(id.iter().map(|p| p.to_string()).collect()),
            ));
        }
        item
    };
    let mut records = vec![record("PATIENT", None)];
    records.extend(file_ids.iter().map(|id| record("IMAGE", Some(id))));
    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::DIRECTORY_RECORD_SEQUENCE,
        VR::SQ,
        Value::Sequence(DataSetSequence::from(records)),
    ));
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax("1.2.840.10008.1.2.1")
                .media_storage_sop_class_uid("1.2.840.10008.1.3.10")
                .media_storage_sop_instance_uid("2.25.7"),
        )
        .unwrap();
    file.write_to_file(path).unwrap();
}

#[test]
fn a_dicomdir_as_the_root_lists_its_images_in_record_order() {
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("PT0").join("SE0");
    std::fs::create_dir_all(&series).unwrap();
    let image = cxr_triage::imaging::write_dicom(&[0, 100, 200, 300], 2, 2, &Default::default());
    std::fs::write(series.join("IM0"), &image).unwrap();
    std::fs::write(series.join("IM1"), &image).unwrap();
    // A disc mounted in lower case.
    let lower = dir.path().join("pt1").join("se1");
    std::fs::create_dir_all(&lower).unwrap();
    std::fs::write(lower.join("im2"), &image).unwrap();
    // Beside the DICOMDIR but not in it: not listed.
    write_png8(&dir.path().join("other.png"), 4, 4);
    let dicomdir = dir.path().join("DICOMDIR");
    write_dicomdir(
        &dicomdir,
        &[
            &["PT0", "SE0", "IM1"],
            &["PT0", "SE0", "IM0"],
            &["PT1", "SE1", "IM2"],
            &["PT0", "SE0", "IM9"],
            &["..", "etc", "passwd"],
        ],
    );
    let entries: Vec<_> = walk(&dicomdir, &WalkOptions::default()).collect();
    let rows: Vec<(String, Option<String>)> = entries
        .iter()
        .map(|e| {
            (
                e.rel().to_string_lossy().into_owned(),
                e.walk_error.as_deref().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(rows[0], ("PT0/SE0/IM1".into(), None));
    assert_eq!(rows[1], ("PT0/SE0/IM0".into(), None));
    assert_eq!(rows[2], ("pt1/se1/im2".into(), None));
    assert_eq!(rows[3].0, "PT0/SE0/IM9");
    assert!(
        rows[3].1.as_deref().unwrap().contains("not there"),
        "{rows:?}"
    );
    assert!(
        rows[4].1.as_deref().unwrap().contains("outside its folder"),
        "{rows:?}"
    );
    assert_eq!(entries[0].folder_label.as_deref(), Some("PT0"));
    // Walked as a folder, the DICOMDIR is a row that says what it is.
    let decoded = cxr_triage::imaging::decode_bytes(
        &std::fs::read(&dicomdir).unwrap(),
        &cxr_triage::imaging::Limits::default(),
    );
    let message = decoded.err().unwrap().to_string();
    assert!(message.contains("a DICOMDIR of 5 images"), "{message}");
}
