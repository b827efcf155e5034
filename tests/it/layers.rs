//! The floor plan holds: `src/lib.rs` lists the top-level modules in data-flow order, and a
//! module may use the ones above it, never one below (no import cycles between rooms).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The `pub mod` lines of `src/lib.rs`, in order.
fn layers(root: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::` (`crate::a::b`, and each
/// first segment of `crate::{a, b::c}`). Comments are skipped.
fn uses(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.remove("");
    out
}

#[test]
fn no_module_uses_a_later_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let order = layers(root);
    // Bytes first, the command line last: a sorted list (rustfmt's habit) would fail here.
    assert_eq!(
        (
            order.first().map(String::as_str),
            order.last().map(String::as_str)
        ),
        (Some("imaging"), Some("cli")),
        "src/lib.rs lists the modules in data-flow order: {order:?}"
    );
    let rank = |m: &str| order.iter().position(|o| o == m);
    let mut wrong = Vec::new();
    for (i, module) in order.iter().enumerate() {
        let dir = root.join("src").join(module);
        let mut files = Vec::new();
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(root.join("src").join(format!("{module}.rs")));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for used in uses(&text) {
                if let Some(j) = rank(&used)
                    && j > i
                {
                    wrong.push(format!(
                        "{} uses crate::{used} (listed after {module} in src/lib.rs)",
                        file.strip_prefix(root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the data flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_use_parser_sees_groups_and_paths() {
    let text =
        "use crate::{imaging::{self, Limits}, model};\nlet x = crate::tui::run();\n// crate::cli";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["imaging", "model", "tui"]);
}
