//! The terminal UI without a terminal: `App` driven by events, the screen drawn into
//! ratatui's `TestBackend` and compared with insta snapshots (`tests/it/snapshots/`), and one
//! end-to-end run of the real binary inside tmux.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cxr_triage::catalog::Entry;
use cxr_triage::imaging::{Format, Thumbnail};
use cxr_triage::model::Manifest;
use cxr_triage::results::{ImageInfo, Outcome, Scored};
use cxr_triage::tui::app::{App, Command, Event, Filter, Mode, Preview, SortKey, Status};
use cxr_triage::tui::image::ColorMode;
use cxr_triage::tui::image::graphics::{Graphics, ImageProtocol, Shot};
use cxr_triage::tui::ui;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

fn manifest() -> Manifest {
    Manifest::from_json(cxr_triage::model::DEFAULT_MANIFEST).unwrap()
}

fn entry(rel: &str) -> Entry {
    let root = PathBuf::from("/data/incoming");
    Entry::new(&root, root.join(rel))
}

fn key(c: char) -> Event {
    Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

fn code(code: KeyCode) -> Event {
    Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn info() -> ImageInfo {
    ImageInfo {
        format: Format::Png,
        width: 1024,
        height: 1024,
        bit_depth: 8,
        dicom: None,
    }
}

fn scored(app: &App, item: usize, probs: [f32; 3]) -> Event {
    Event::Scored {
        item,
        scored: Box::new(Scored::new(
            0,
            (*app.items[item].entry).clone(),
            Outcome::Scored {
                info: info(),
                probs: probs.to_vec(),
                unusual: None,
                border: None,
            },
        )),
    }
}

fn failed(app: &App, item: usize, error: &str) -> Event {
    Event::Scored {
        item,
        scored: Box::new(Scored::new(
            0,
            (*app.items[item].entry).clone(),
            Outcome::Failed {
                info: None,
                error: error.into(),
            },
        )),
    }
}

/// An app with `names` found and the walk finished.
fn app_with(names: &[&str]) -> App {
    let mut app = App::new(PathBuf::from("/data/incoming"), &manifest());
    app.update(Event::Found(names.iter().map(|n| entry(n)).collect()));
    app.update(Event::WalkDone);
    app.refresh_view();
    app
}

const NAMES: [&str; 6] = [
    "covid/a.png",
    "covid/b.png",
    "normal/c.png",
    "normal/d.png",
    "pneumonia/e.png",
    "pneumonia/f-broken.png",
];

/// Every item scored: a covid, b normal (disagrees), c normal, d normal, e pneumonia, broken fails.
fn scored_app() -> App {
    let mut app = app_with(&NAMES);
    let cmds = app.update(key('R'));
    assert!(matches!(&cmds[..], [Command::Score(jobs)] if jobs.len() == 6));
    let probs = [
        [0.91, 0.05, 0.04],
        [0.20, 0.70, 0.10],
        [0.02, 0.95, 0.03],
        [0.05, 0.60, 0.35],
        [0.10, 0.15, 0.75],
    ];
    for (i, p) in probs.into_iter().enumerate() {
        let ev = scored(&app, i, p);
        app.update(ev);
    }
    let ev = failed(&app, 5, "truncated PNG: unexpected end of file");
    app.update(ev);
    app.update(Event::JobEnded);
    app.refresh_view();
    app
}

fn shown(app: &App) -> Vec<String> {
    app.list
        .view
        .iter()
        .map(|&i| app.items[i].entry.rel().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn keys_move_the_cursor_within_the_list() {
    let mut app = app_with(&NAMES);
    assert_eq!(app.current(), Some(0));
    app.update(key('j'));
    app.update(code(KeyCode::Down));
    assert_eq!(app.current(), Some(2));
    app.update(key('k'));
    assert_eq!(app.current(), Some(1));
    app.update(key('G'));
    assert_eq!(app.current(), Some(5));
    app.update(key('j'));
    assert_eq!(app.current(), Some(5), "stays on the last row");
    app.update(code(KeyCode::Home));
    app.update(key('k'));
    assert_eq!(app.current(), Some(0), "stays on the first row");
}

#[test]
fn r_runs_the_marked_images_or_else_the_current_one() {
    let mut app = app_with(&NAMES);
    let cmds = app.update(key('r'));
    match &cmds[..] {
        [Command::Score(jobs)] => assert_eq!(jobs.iter().map(|j| j.0).collect::<Vec<_>>(), [0]),
        other => panic!("{other:?}"),
    }
    assert_eq!(app.items[0].status, Status::Running);
    // Mark two (space marks and moves down), run: only those two, and marks are cleared.
    app.update(key(' ')); // marks 0, which is running: still marked
    app.update(key(' ')); // marks 1
    app.update(key('j'));
    app.update(key(' ')); // marks 3
    let cmds = app.update(key('r'));
    match &cmds[..] {
        [Command::Score(jobs)] => assert_eq!(jobs.iter().map(|j| j.0).collect::<Vec<_>>(), [1, 3]),
        other => panic!("{other:?}"),
    }
    assert!(
        app.items
            .iter()
            .all(|i| !i.marked || i.status == Status::Running)
    );
    assert_eq!(
        app.work.progress.as_ref().map(|p| (p.total, p.jobs)),
        Some((3, 2))
    );
}

#[test]
fn capital_r_runs_only_what_is_pending_and_reports_when_nothing_is() {
    let mut app = scored_app();
    let cmds = app.update(key('R'));
    assert!(cmds.is_empty());
    assert!(app.message.as_deref().unwrap().contains("nothing to run"));
    assert!(app.work.progress.is_none());
}

#[test]
fn escape_cancels_the_run_and_keeps_what_finished() {
    let mut app = app_with(&NAMES);
    app.update(key('R'));
    let ev = scored(&app, 0, [0.9, 0.05, 0.05]);
    app.update(ev);
    let cmds = app.update(code(KeyCode::Esc));
    assert_eq!(cmds, [Command::Cancel]);
    assert_eq!(app.items[0].status, Status::Done);
    assert!(app.items[1..].iter().all(|i| i.status == Status::Pending));
    // A result already on its way when Esc was pressed is still kept.
    let ev = scored(&app, 1, [0.1, 0.8, 0.1]);
    app.update(ev);
    assert_eq!(app.items[1].status, Status::Done);
    app.update(Event::JobEnded);
    assert!(app.work.progress.is_none());
    assert!(
        app.work
            .last_run
            .as_deref()
            .unwrap()
            .starts_with("scored 2 of 6")
    );
    // Pending ones can be run again.
    let cmds = app.update(key('R'));
    assert!(matches!(&cmds[..], [Command::Score(jobs)] if jobs.len() == 4));
}

#[test]
fn summary_counts_follow_results_and_the_operating_point() {
    let mut app = scored_app();
    let s = app.summary();
    assert_eq!(s.per_label, [1, 3, 1]);
    assert_eq!((s.errors, s.pending, s.running), (1, 0, 0));
    // The default model flags covid from its operating point in the manifest.
    let t0 = app.threshold();
    let flagged_at = |app: &App| app.items.iter().filter(|i| app.is_flagged(i)).count();
    assert_eq!(s.flagged, flagged_at(&app));
    // Raise the threshold over 0.20 and 0.10: only a (0.91) stays flagged.
    while app.threshold() < 0.25 {
        app.update(key('+'));
    }
    assert!(app.threshold() > t0);
    assert_eq!(app.summary().flagged, 1);
    // Lower it to 0: every scored image is flagged; errors never are.
    for _ in 0..30 {
        app.update(key('-'));
    }
    assert_eq!(app.threshold(), 0.0);
    assert_eq!(app.summary().flagged, 5);
}

#[test]
fn sorting_by_a_label_puts_the_highest_first_and_keeps_the_cursor_on_its_item() {
    let mut app = scored_app();
    app.update(key('j')); // b.png
    app.update(key('s')); // P(covid)
    app.refresh_view();
    assert_eq!(app.list.sort, SortKey::Label(0));
    assert_eq!(
        shown(&app),
        [
            "covid/a.png",
            "covid/b.png",
            "pneumonia/e.png",
            "normal/d.png",
            "normal/c.png",
            "pneumonia/f-broken.png"
        ]
    );
    assert_eq!(app.current(), Some(1), "cursor follows b.png");
    for _ in 0..3 {
        app.update(key('s'));
    }
    app.refresh_view();
    assert_eq!(app.list.sort, SortKey::Status);
    assert_eq!(shown(&app).last().unwrap(), "pneumonia/f-broken.png");
    app.update(key('s'));
    assert_eq!(app.list.sort, SortKey::Name);
}

#[test]
fn filters_select_labels_errors_and_disagreements() {
    let mut app = scored_app();
    app.update(key('f'));
    app.refresh_view();
    assert_eq!(app.list.filter, Filter::Label(0));
    assert_eq!(shown(&app), ["covid/a.png"]);
    app.update(key('f'));
    app.refresh_view();
    assert_eq!(shown(&app), ["covid/b.png", "normal/c.png", "normal/d.png"]);
    for _ in 0..3 {
        app.update(key('f'));
    }
    app.refresh_view();
    assert_eq!(app.list.filter, Filter::Errors);
    assert_eq!(shown(&app), ["pneumonia/f-broken.png"]);
    app.update(key('f'));
    app.refresh_view();
    assert_eq!(app.list.filter, Filter::Disagree);
    assert_eq!(shown(&app), ["covid/b.png"]);
    app.update(key('F'));
    app.refresh_view();
    assert_eq!(shown(&app).len(), 6);
}

#[test]
fn folders_not_named_after_a_label_never_disagree() {
    let mut app = app_with(&["dicom/x.dcm", "Normal/y.png"]);
    app.update(key('R'));
    for i in 0..2 {
        let ev = scored(&app, i, [0.9, 0.05, 0.05]);
        app.update(ev);
    }
    assert!(!app.disagrees(&app.items[0]), "dicom/ is not a label");
    assert!(
        app.disagrees(&app.items[1]),
        "Normal/ is, whatever the case"
    );
}

#[test]
fn search_filters_as_you_type_and_escape_clears_it() {
    let mut app = scored_app();
    app.update(key('/'));
    assert_eq!(app.mode, Mode::Search);
    for c in "NORMAL/".chars() {
        app.update(key(c));
    }
    app.refresh_view();
    assert_eq!(shown(&app), ["normal/c.png", "normal/d.png"]);
    // Keys typed into the search are not commands: `q` is text here.
    let cmds = app.update(key('q'));
    assert!(cmds.is_empty());
    app.refresh_view();
    assert!(shown(&app).is_empty());
    app.update(code(KeyCode::Backspace));
    app.update(code(KeyCode::Enter));
    assert_eq!(app.mode, Mode::Normal);
    app.refresh_view();
    assert_eq!(shown(&app).len(), 2, "Enter keeps the search");
    app.update(code(KeyCode::Esc));
    app.refresh_view();
    assert_eq!(shown(&app).len(), 6);
}

/// Each key typed filters the view it narrows (no rebuild, no sort): with a result arriving
/// between two keys, it shows what the same search typed at once shows.
#[test]
fn a_search_narrowed_key_by_key_shows_what_one_typed_at_once_shows() {
    let mut app = app_with(&NAMES);
    app.update(key('R'));
    for (i, p) in [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]]
        .into_iter()
        .enumerate()
    {
        let ev = scored(&app, i, p);
        app.update(ev);
    }
    app.update(key('s')); // by P(covid)
    app.update(key('/'));
    app.update(key('n'));
    app.refresh_view();
    assert_eq!(shown(&app).len(), 6, "every name has an n (.png)");
    // normal/d.png now leads by P(covid).
    let ev = scored(&app, 3, [0.99, 0.005, 0.005]);
    app.update(ev);
    app.update(key('O'));
    app.refresh_view();
    let narrowed = shown(&app);
    assert_eq!(narrowed, ["normal/d.png", "normal/c.png"]);
    app.update(code(KeyCode::Esc));
    app.refresh_view();
    app.update(key('/'));
    for c in "nO".chars() {
        app.update(key(c));
    }
    app.refresh_view();
    assert_eq!(shown(&app), narrowed);
}

#[test]
fn export_writes_the_shown_rows_with_the_current_operating_point() {
    let mut app = scored_app();
    app.export_default = "/tmp/out.csv".into();
    app.update(key('f')); // predicted covid: a.png
    app.update(key('e'));
    assert!(matches!(&app.mode, Mode::Export { path, .. } if path == "/tmp/out.csv"));
    let cmds = app.update(code(KeyCode::Enter));
    match &cmds[..] {
        [Command::Export { path, rows, .. }] => {
            assert_eq!(path, &PathBuf::from("/tmp/out.csv"));
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].path, "covid/a.png");
            assert_eq!(rows[0].flagged, Some(true));
        }
        other => panic!("{other:?}"),
    }
    // Tab switches to every row; pending items have no result and are left out.
    app.update(key('F'));
    for _ in 0..30 {
        app.update(key('+'));
    }
    app.update(key('e'));
    app.update(code(KeyCode::Tab));
    for _ in 0..20 {
        app.update(code(KeyCode::Backspace));
    }
    for c in "x.json".chars() {
        app.update(key(c));
    }
    let cmds = app.update(code(KeyCode::Enter));
    match &cmds[..] {
        [Command::Export { path, rows, format }] => {
            assert_eq!(path, &PathBuf::from("x.json"));
            assert_eq!(*format, cxr_triage::results::ExportFormat::Json);
            assert_eq!(rows.len(), 6);
            assert!(
                rows.iter().all(|r| r.flagged != Some(true)),
                "threshold 1.0 flags nothing"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn export_rows_refuses_the_image_folder_and_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let app = scored_app();
    let rows: Vec<_> = app.items.iter().filter_map(|i| app.row(i)).collect();
    let csv = cxr_triage::results::ExportFormat::Csv;
    let inside = images.join("sub/out.csv");
    let err =
        cxr_triage::results::export_rows(&inside, &images, csv, &app.labels, &rows).unwrap_err();
    assert!(err.contains("inside the image folder"), "{err}");
    assert!(!images.join("sub").exists());
    let out = dir.path().join("out.csv");
    let ok = cxr_triage::results::export_rows(&out, &images, csv, &app.labels, &rows).unwrap();
    assert!(ok.starts_with("6 rows written"), "{ok}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 7);
    assert!(text.starts_with("path,status,error,folder_label"));
    let err = cxr_triage::results::export_rows(&out, &images, csv, &app.labels, &rows).unwrap_err();
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        text,
        "not overwritten"
    );
}

#[test]
fn previews_are_asked_for_the_current_item_first_and_only_once() {
    let mut app = app_with(&NAMES);
    app.update(key('j'));
    app.update(key('j'));
    let Some(Command::Previews(list)) = app.wanted_previews(0..4) else {
        panic!("expected a request");
    };
    assert_eq!(list.iter().map(|l| l.0).collect::<Vec<_>>(), [2, 0, 1, 3]);
    assert!(
        app.wanted_previews(0..4).is_none(),
        "same request is not sent twice"
    );
    app.update(Event::Preview {
        item: 2,
        preview: Preview::Failed("x".into()),
    });
    let Some(Command::Previews(list)) = app.wanted_previews(0..4) else {
        panic!("expected a new request");
    };
    assert_eq!(list.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 1, 3]);
}

#[test]
fn the_preview_cache_forgets_the_least_recently_used() {
    let mut cache = cxr_triage::tui::app::PreviewCache::new(2);
    let p = || Preview::Failed(String::new());
    cache.insert(1, p());
    cache.insert(2, p());
    assert!(cache.get(1).is_some()); // 2 is now the oldest
    cache.insert(3, p());
    assert!(cache.contains(1) && cache.contains(3) && !cache.contains(2));
    assert_eq!(cache.len(), 2);
}

#[test]
fn quit_keys_and_signals_ask_to_quit() {
    let mut app = app_with(&NAMES);
    assert_eq!(app.update(key('q')), [Command::Quit]);
    assert_eq!(
        app.update(Event::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL
        ))),
        [Command::Quit]
    );
    assert_eq!(app.update(Event::Signal(15)), [Command::Quit]);
    app.update(key('?'));
    assert_eq!(app.mode, Mode::Help);
    assert!(
        app.update(key('q')).is_empty(),
        "a key closes the help first"
    );
    assert_eq!(app.mode, Mode::Normal);
}

// ---------------------------------------------------------------- snapshots

fn gradient(w: u32, h: u32) -> Thumbnail {
    // A bright frame around a dark centre, like lungs in a chest film.
    let pixels = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let dx = (x as f32 / w as f32 - 0.5).abs();
            let dy = (y as f32 / h as f32 - 0.5).abs();
            (dx.max(dy) * 500.0).min(255.0) as u8
        })
        .collect();
    Thumbnail {
        width: w,
        height: h,
        pixels,
    }
}

fn screen(app: &mut App, w: u16, h: u16, colors: ColorMode) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    ui::prepare(app, ratatui::layout::Rect::new(0, 0, w, h));
    terminal.draw(|f| ui::draw(f, app, colors)).unwrap();
    terminal.backend().to_string()
}

#[test]
fn snapshot_empty_folder() {
    let mut app = app_with(&[]);
    insta::assert_snapshot!(screen(&mut app, 100, 20, ColorMode::TrueColor));
}

#[test]
fn snapshot_folder_loading() {
    let mut app = App::new(PathBuf::from("/data/incoming"), &manifest());
    app.update(Event::Found(NAMES[..3].iter().map(|n| entry(n)).collect()));
    insta::assert_snapshot!(screen(&mut app, 100, 20, ColorMode::TrueColor));
}

#[test]
fn snapshot_results_with_a_selection() {
    let mut app = scored_app();
    app.update(key('j'));
    app.update(Event::Preview {
        item: 1,
        preview: Preview::Ready {
            thumb: Arc::new(gradient(64, 64)),
            film: None,
            describe: "1024x1024 PNG 8-bit".into(),
        },
    });
    insta::assert_snapshot!(screen(&mut app, 120, 35, ColorMode::TrueColor));
}

#[test]
fn snapshot_run_in_progress() {
    let mut app = app_with(&NAMES);
    app.update(key('R'));
    for i in 0..3 {
        let ev = scored(&app, i, [0.2, 0.7, 0.1]);
        app.update(ev);
    }
    // 3 done in 2 s: 1.5 img/s, 3 left, ETA 2 s.
    let started = app.work.progress.as_ref().unwrap().started;
    app.now = started + Duration::from_secs(2);
    insta::assert_snapshot!(screen(&mut app, 100, 14, ColorMode::TrueColor));
}

#[test]
fn snapshot_errors_shown() {
    let mut app = scored_app();
    app.update(key('G'));
    app.update(Event::Preview {
        item: 5,
        preview: Preview::Failed("truncated PNG: unexpected end of file".into()),
    });
    insta::assert_snapshot!(screen(&mut app, 100, 20, ColorMode::TrueColor));
}

#[test]
fn snapshot_help_overlay() {
    let mut app = scored_app();
    app.update(key('?'));
    insta::assert_snapshot!(screen(&mut app, 100, 24, ColorMode::TrueColor));
}

#[test]
fn snapshot_review_overlay() {
    let mut app = scored_app();
    app.update(key('m'));
    insta::assert_snapshot!(screen(&mut app, 100, 24, ColorMode::TrueColor));
}

#[test]
fn snapshot_80x24_without_colour() {
    let mut app = scored_app();
    app.update(Event::Preview {
        item: 0,
        preview: Preview::Ready {
            thumb: Arc::new(gradient(48, 40)),
            film: None,
            describe: "2048x2500 DICOM 12-bit DX PA".into(),
        },
    });
    insta::assert_snapshot!(screen(&mut app, 80, 24, ColorMode::None));
}

#[test]
fn snapshot_grid() {
    let mut app = scored_app();
    for i in 0..4 {
        app.update(Event::Preview {
            item: i,
            preview: Preview::Ready {
                thumb: Arc::new(gradient(32, 32)),
                film: None,
                describe: String::new(),
            },
        });
    }
    app.update(key('g'));
    insta::assert_snapshot!(screen(&mut app, 80, 24, ColorMode::TrueColor));
}

#[test]
fn no_color_draws_no_colour() {
    let mut app = scored_app();
    app.update(Event::Preview {
        item: 0,
        preview: Preview::Ready {
            thumb: Arc::new(gradient(48, 40)),
            film: None,
            describe: String::new(),
        },
    });
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    ui::prepare(&mut app, ratatui::layout::Rect::new(0, 0, 100, 30));
    terminal
        .draw(|f| ui::draw(f, &app, ColorMode::None))
        .unwrap();
    let buf = terminal.backend().buffer();
    use ratatui::style::Color;
    assert!(
        buf.content()
            .iter()
            .all(|c| c.fg == Color::Reset && c.bg == Color::Reset),
        "a cell has a colour under NO_COLOR"
    );
    // With colour the same screen does use colours (the test can fail).
    terminal
        .draw(|f| ui::draw(f, &app, ColorMode::TrueColor))
        .unwrap();
    assert!(
        terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .any(|c| c.bg != Color::Reset)
    );
}

// ---------------------------------------------------------------- end to end, in tmux

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` (with a message) where tmux is not installed.
    fn start(command: &str, w: u16, h: u16) -> Option<Self> {
        if std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("SKIPPED: tmux is not installed; the end-to-end UI test needs it");
            return None;
        }
        let socket = format!("cxr-it-{}-{}", std::process::id(), rand_suffix());
        let ok = std::process::Command::new("tmux")
            .args([
                "-L",
                &socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
            ])
            .args(["-x", &w.to_string(), "-y", &h.to_string(), command])
            .env("TERM", "xterm-256color")
            .env("XDG_CACHE_HOME", crate::common::fresh_cache_home())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // tmux is installed but cannot start a session here (no pseudo-terminals, say).
            eprintln!("SKIPPED: tmux could not start a session; the end-to-end UI test needs one");
            return None;
        }
        Some(Self { socket })
    }

    fn keys(&self, keys: &str) {
        std::process::Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t", keys])
            .status()
            .unwrap();
    }

    fn screen(&self) -> String {
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// After the program exited (the command ends with [`AFTER_EXIT`]): no UI left on the main
    /// screen, alternate screen off, cursor shown, tty out of raw mode. Returns the screen.
    fn assert_restored(&self) -> String {
        let screen = self.wait_for("STTY:", 30);
        assert!(
            !screen.contains("pending"),
            "the UI was left on screen:\n{screen}"
        );
        let out = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "display-message", "-p", "-t", "t"])
            .arg("#{alternate_on} #{cursor_flag}")
            .output()
            .unwrap();
        let flags = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            flags.trim(),
            "0 1",
            "alternate screen on or cursor hidden:\n{screen}"
        );
        let stty = screen
            .lines()
            .find(|l| l.starts_with("STTY:"))
            .unwrap()
            .to_string();
        assert!(
            stty.contains(" icanon") && stty.contains(" echo") && !stty.contains("-icanon"),
            "the terminal was left in raw mode: {stty:?}"
        );
        screen
    }

    /// Wait until the screen contains `text`; panics with the screen after `secs`.
    fn wait_for(&self, text: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`{text}` did not appear within {secs} s; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(42);
    h.finish() % 1_000_000
}

/// What the tmux command runs after the program: its exit code and the tty's line discipline.
const AFTER_EXIT: &str = "; echo EXIT=$?; echo STTY: $(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo); sleep 60";

/// A folder of four small PNGs and one broken file.
fn e2e_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        crate::common::write_png8(&dir.path().join(format!("img{i}.png")), 96, 80);
    }
    std::fs::write(dir.path().join("broken.png"), b"not a png").unwrap();
    dir
}

fn shell_quote(p: &std::path::Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn end_to_end_run_everything_and_read_the_summary() {
    let dir = e2e_folder();
    let before = crate::hostile::snapshot_tree(dir.path());
    let work = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("cxr-triage");
    let command = format!(
        "cd {} && {} {}{AFTER_EXIT}",
        shell_quote(work.path()),
        shell_quote(&bin),
        shell_quote(dir.path())
    );
    let Some(tmux) = Tmux::start(&command, 100, 30) else {
        return;
    };
    tmux.wait_for("5 images", 30);
    tmux.keys("R");
    let screen = tmux.wait_for("scored 5 of 5", 120);
    let summary = screen
        .lines()
        .find(|l| l.contains("flagged") && l.contains("pending"))
        .expect("summary line");
    let count = |name: &str| -> usize {
        let at = summary.find(&format!("{name} ")).expect(name) + name.len() + 1;
        summary[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(count("errors"), 1, "{summary}");
    assert_eq!(count("pending"), 0, "{summary}");
    let per_label: usize = ["covid", "normal", "pneumonia"]
        .iter()
        .map(|l| count(l))
        .sum();
    assert_eq!(per_label, 4, "{summary}");
    // Export with the suggested name: it lands in the working folder, not the image folder.
    tmux.keys("e");
    tmux.wait_for("export to:", 10);
    tmux.keys("Enter");
    tmux.wait_for("rows written", 10);
    let exported: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert_eq!(exported.len(), 1);
    let csv = std::fs::read_to_string(exported[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(csv.lines().count(), 6, "header + 5 rows:\n{csv}");
    // Quit: exit 0, the screen and the tty are as they were.
    tmux.keys("q");
    let after = tmux.assert_restored();
    assert!(after.contains("EXIT=0"), "{after}");
    // The image folder is exactly as it was: nothing created, changed or deleted.
    assert_eq!(crate::hostile::snapshot_tree(dir.path()), before);
}

#[test]
fn end_to_end_sigterm_and_sighup_restore_the_terminal() {
    for signal in ["TERM", "HUP"] {
        let dir = e2e_folder();
        let bin = assert_cmd::cargo::cargo_bin("cxr-triage");
        let pid_file = dir.path().with_extension("pid");
        let command = format!(
            "sh -c 'echo $$ > {}; exec {} {}'{AFTER_EXIT}",
            pid_file.display(),
            bin.display(),
            dir.path().display()
        );
        let Some(tmux) = Tmux::start(&command, 100, 30) else {
            return;
        };
        tmux.wait_for("5 images", 30);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let after = tmux.assert_restored();
        assert!(after.contains("EXIT=0"), "SIG{signal}: {after}");
        let _ = std::fs::remove_file(&pid_file);
    }
}

#[test]
fn without_a_terminal_the_browser_says_so_and_exits_2() {
    let dir = e2e_folder();
    crate::common::cxr()
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("needs a terminal"))
        .stderr(predicates::str::contains("cxr-triage scan"));
    crate::common::cxr()
        .arg("samples")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("needs a terminal"));
}

#[test]
fn a_missing_folder_is_a_usage_error_before_the_screen_changes() {
    crate::common::cxr()
        .arg("/no/such/folder")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no such file or folder"));
}

#[test]
fn end_to_end_samples_opens_the_shipped_images() {
    let bin = assert_cmd::cargo::cargo_bin("cxr-triage");
    let command = format!("{} samples{AFTER_EXIT}", shell_quote(&bin));
    let Some(tmux) = Tmux::start(&command, 100, 30) else {
        return;
    };
    let screen = tmux.wait_for("chest-pa.png", 30);
    assert!(screen.contains("samples"), "{screen}");
    tmux.keys("q");
    assert!(tmux.assert_restored().contains("EXIT=0"));
}

#[test]
fn end_to_end_a_panic_restores_the_terminal_before_the_message() {
    // Debug builds panic on purpose after the first frame with items when this is set.
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: the panic hook test needs a debug build of the binary");
        return;
    }
    let dir = e2e_folder();
    let bin = assert_cmd::cargo::cargo_bin("cxr-triage");
    let command = format!(
        "CXR_TRIAGE_TEST_PANIC=1 {} {}{AFTER_EXIT}",
        shell_quote(&bin),
        shell_quote(dir.path())
    );
    let Some(tmux) = Tmux::start(&command, 100, 30) else {
        return;
    };
    let after = tmux.assert_restored();
    assert!(after.contains("EXIT=101"), "{after}");
    assert!(after.contains("test panic requested"), "{after}");
}

#[test]
fn cancel_stops_a_running_job_and_keeps_what_finished() {
    use cxr_triage::tui::Workers;
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("img-000.png");
    crate::common::write_png8(&first, 512, 512);
    let mut items = vec![(0, Arc::new(entry_at(&first)))];
    for i in 1..300 {
        let p = dir.path().join(format!("img-{i:03}.png"));
        std::fs::hard_link(&first, &p).unwrap();
        items.push((i, Arc::new(entry_at(&p))));
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let model = cxr_triage::model::Model::embedded().unwrap();
    let mut workers = Workers::start(
        model,
        false,
        None,
        tx,
        cxr_triage::tui::image::graphics::Graphics::halfblocks(),
    );
    workers.score(items);
    // Wait for the first result, then cancel.
    let mut scored = 0;
    while scored == 0 {
        match rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Scored { .. } => scored += 1,
            other => panic!("{other:?}"),
        }
    }
    workers.cancel();
    let cancelled_at = std::time::Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            Event::Scored { .. } => scored += 1,
            Event::JobEnded => break,
            other => panic!("{other:?}"),
        }
    }
    // Generous bound: the job ends after the batch in flight, not after 300 images.
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    assert!(
        scored < 300,
        "all {scored} were scored: the cancel did nothing"
    );
    workers.stop();
}

fn entry_at(path: &std::path::Path) -> Entry {
    Entry::file(path.to_path_buf())
}

#[test]
fn end_to_end_library_output_on_stderr_never_reaches_the_screen() {
    // tiff 0.11 prints a `dbg!` line to stderr for this fuzzer-made file; the UI sends stderr to
    // /dev/null while it owns the terminal.
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/tiff-prints-to-stderr.tif");
    std::fs::copy(&fixture, dir.path().join("a.tif")).unwrap();
    crate::common::write_png8(&dir.path().join("b.png"), 96, 80);
    let bin = assert_cmd::cargo::cargo_bin("cxr-triage");
    let command = format!(
        "{} {}{AFTER_EXIT}",
        shell_quote(&bin),
        shell_quote(dir.path())
    );
    let Some(tmux) = Tmux::start(&command, 100, 30) else {
        return;
    };
    tmux.wait_for("2 images", 30);
    tmux.keys("R");
    let screen = tmux.wait_for("scored 2 of 2", 60);
    assert!(!screen.contains("LimitsExceeded"), "{screen}");
    assert!(!screen.contains("ifd.rs"), "{screen}");
    tmux.keys("q");
    assert!(tmux.assert_restored().contains("EXIT=0"));
}

// ---------------------------------------------------------------- store and review

fn scored_with_hashes(
    app: &App,
    item: usize,
    probs: [f32; 3],
    hash: u128,
    dhash: [u64; 4],
) -> Scored {
    Scored {
        hash: Some(hash),
        dhash: Some(dhash),
        cached: true,
        ..Scored::new(
            0,
            (*app.items[item].entry).clone(),
            Outcome::Scored {
                info: info(),
                probs: probs.to_vec(),
                unusual: None,
                border: None,
            },
        )
    }
}

#[test]
fn restored_results_show_at_once_and_r_runs_only_the_rest() {
    let mut app = app_with(&["covid/a.png", "covid/b.png", "normal/c.png"]);
    let found = vec![
        (0, scored_with_hashes(&app, 0, [0.9, 0.05, 0.05], 1, [0; 4])),
        (
            2,
            scored_with_hashes(&app, 2, [0.1, 0.8, 0.1], 2, [u64::MAX; 4]),
        ),
    ];
    app.update(Event::Restored(found));
    assert_eq!(app.work.restored, 2);
    assert_eq!(app.items[0].status, Status::Done);
    assert_eq!(app.items[1].status, Status::Pending);
    match &app.update(key('R'))[..] {
        [Command::Score(jobs)] => assert_eq!(jobs.iter().map(|j| j.0).collect::<Vec<_>>(), [1]),
        other => panic!("{other:?}"),
    }
    // A restore that arrives after a run started does not overwrite it.
    let late = vec![(1, scored_with_hashes(&app, 1, [0.2, 0.2, 0.6], 3, [0; 4]))];
    app.update(Event::Restored(late));
    assert_eq!(app.items[1].status, Status::Running);
    assert_eq!(app.work.restored, 2);
}

#[test]
fn a_stored_result_that_arrives_before_its_item_is_listed_is_not_lost() {
    // The reopening bench once showed 19,999 of 20,000 stored results: the store's answer for
    // the walk's last batch overtook the batch itself and was dropped.
    let mut app = App::new(PathBuf::from("/data/incoming"), &manifest());
    app.update(Event::Found(vec![entry("a.png")]));
    let template = app_with(&["a.png", "b.png"]);
    let early = scored_with_hashes(&template, 1, [0.1, 0.2, 0.7], 5, [0; 4]);
    app.update(Event::Restored(vec![(1, early)]));
    assert_eq!(app.work.restored, 0);
    app.update(Event::Found(vec![entry("b.png")]));
    assert_eq!(app.work.restored, 1);
    assert_eq!(app.items[1].status, Status::Done);
    assert_eq!(app.items[0].status, Status::Pending);
}

#[test]
fn aliased_folders_count_as_labels_and_disagreements_come_most_confident_first() {
    let mut app = app_with(&[
        "COVID-19/a.png",
        "No Finding/b.png",
        "No Finding/c.png",
        "misc/d.png",
    ]);
    app.update(key('R'));
    for (i, probs) in [
        [0.2, 0.7, 0.1],    // covid called normal: disagrees, 0.7
        [0.05, 0.9, 0.05],  // agrees
        [0.95, 0.03, 0.02], // normal called covid: disagrees, 0.95
        [0.9, 0.05, 0.05],  // no label: never disagrees
    ]
    .into_iter()
    .enumerate()
    {
        let ev = scored(&app, i, probs);
        app.update(ev);
    }
    assert_eq!(app.items[0].truth(), Some(0));
    assert_eq!(app.items[1].truth(), Some(1));
    assert_eq!(app.items[3].truth(), None);
    while app.list.filter != Filter::Disagree {
        app.update(key('f'));
    }
    app.refresh_view();
    assert_eq!(shown(&app), ["No Finding/c.png", "COVID-19/a.png"]);
    // The review overlay: eval's metrics over the 3 labelled, scored images.
    let review = app.review();
    assert_eq!(review.labelled, 3);
    let m = review.metrics.unwrap();
    assert_eq!(m.n, 3);
    assert!((m.accuracy - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(m.confusion[0], [0, 1, 0]);
    assert_eq!(review.unmatched, [("misc".to_string(), 1)]);
    let folders: Vec<&str> = review.folders.iter().map(|f| f.folder.as_str()).collect();
    assert_eq!(folders, ["COVID-19", "misc", "No Finding"]);
    app.update(key('m'));
    assert_eq!(app.mode, Mode::Review);
    app.update(key('x'));
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn the_duplicates_filter_asks_for_groups_and_shows_them_in_order() {
    let mut app = app_with(&["a.png", "b.png", "c.png", "d.png"]);
    let found = (0..4)
        .map(|i| {
            let hash = [7, 8, 7, 9][i];
            let m = u64::MAX;
            let dhash = [[0; 4], [m; 4], [0; 4], [m - 1, m, m, m]][i];
            (i, scored_with_hashes(&app, i, [0.3, 0.3, 0.4], hash, dhash))
        })
        .collect();
    app.update(Event::Restored(found));
    let mut asked = None;
    while app.list.filter != Filter::Duplicates {
        for c in app.update(key('f')) {
            if let Command::FindDuplicates {
                candidates,
                threshold,
            } = c
            {
                asked = Some((candidates, threshold));
            }
        }
    }
    let (candidates, threshold) = asked.expect("entering the filter asks for groups");
    assert_eq!(candidates.len(), 4);
    assert!(app.dups.dups_pending);
    let groups = cxr_triage::review::groups(&candidates, threshold);
    // Exact copies (a, c); b and d are one bit apart; the two groups are 255 bits apart.
    assert_eq!(groups.len(), 2, "{groups:?}");
    app.update(Event::Duplicates(groups));
    app.refresh_view();
    assert_eq!(shown(&app), ["a.png", "c.png", "b.png", "d.png"]);
    assert!(!app.dups.dups_pending);
}

// ---------------------------------------------------------------- multi-label models

/// The exported DenseNet fixture's manifest: 5 sigmoid labels, display names, four
/// operating points (atelectasis 0.3, lung_opacity 0.5, effusion 0.25, no_finding 0.6).
fn multi_label_app() -> App {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/densenet/tiny-densenet.json");
    let manifest = Manifest::from_path(&path).unwrap();
    let mut app = App::new(PathBuf::from("/data/incoming"), &manifest);
    app.update(Event::Found(vec![
        entry("a.png"),
        entry("b.png"),
        entry("c.png"),
    ]));
    app.update(Event::WalkDone);
    app.update(key('R'));
    for (i, probs) in [
        [0.9f32, 0.1, 0.6, 0.1, 0.2],
        [0.1, 0.9, 0.2, 0.3, 0.7],
        [0.1, 0.1, 0.1, 0.1, 0.1],
    ]
    .into_iter()
    .enumerate()
    {
        let scored = Scored::new(
            0,
            (*app.items[i].entry).clone(),
            Outcome::Scored {
                info: info(),
                probs: probs.to_vec(),
                unusual: None,
                border: None,
            },
        );
        app.update(Event::Scored {
            item: i,
            scored: Box::new(scored),
        });
    }
    app.update(Event::JobEnded);
    app.refresh_view();
    app
}

#[test]
fn multi_label_summary_counts_flagged_images_per_label() {
    let mut app = multi_label_app();
    let s = app.summary();
    assert!(s.multi_label);
    // a: atelectasis, lung_opacity; b: effusion, no_finding; c: nothing. unused_1 has no
    // operating point, so its 0.9 flags nothing.
    assert_eq!(s.per_label, [1, 0, 1, 1, 1]);
    assert_eq!(s.flagged, 2);
    // `o` picks the label `+ -` move.
    let before = app.op_label;
    app.update(key('o'));
    assert_eq!(app.op_label, (before + 1) % 5);
}

#[test]
fn snapshot_multi_label_80x24_scrolls_the_probabilities() {
    let mut app = multi_label_app();
    insta::assert_snapshot!(screen(&mut app, 80, 12, ColorMode::None));
    app.update(key(']'));
    insta::assert_snapshot!(screen(&mut app, 80, 12, ColorMode::None));
}

/// An unusual input (score above the model's threshold) is counted in the summary, kept by the
/// `unusual` filter (the last stop of `f` for a model with the score) and marked in the row.
#[test]
fn unusual_inputs_are_counted_filtered_and_marked() {
    let mut app = scored_app();
    assert_eq!(app.summary().unusual, 0);
    let ev = match scored(&app, 0, [0.2, 0.7, 0.1]) {
        Event::Scored { item, mut scored } => {
            if let Outcome::Scored { unusual, .. } = &mut scored.outcome {
                *unusual = Some(2.5);
            }
            Event::Scored { item, scored }
        }
        other => other,
    };
    app.update(ev);
    assert!(app.items[0].is_unusual());
    assert_eq!(app.summary().unusual, 1);
    let mut seen = Vec::new();
    for _ in 0..10 {
        app.update(key('f'));
        seen.push(app.list.filter);
        if app.list.filter == Filter::Unusual {
            break;
        }
    }
    assert_eq!(app.list.filter, Filter::Unusual, "{seen:?}");
    app.refresh_view();
    assert_eq!(app.list.view, [0]);
}

/// The README's key table is the one the UI reads (`tui::keys::KEYS`).
#[test]
fn readme_lists_the_keys_of_the_key_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = cxr_triage::tui::keys::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's key table differs from tui::keys::KEYS; it should read:\n{table}"
    );
}

// ---------------------------------------------------------------- heatmaps

/// A heatmap hot in its upper left cell only.
fn hot_corner(label: usize) -> cxr_triage::tui::app::HeatResult {
    use cxr_triage::model::heatmap::{Heatmap, Region};
    Ok(Arc::new(cxr_triage::tui::app::HeatView {
        heatmap: Heatmap {
            width: 2,
            height: 2,
            values: vec![1.0, 0.0, 0.0, 0.0],
            label,
        },
        region: Region::WHOLE,
    }))
}

#[test]
fn capital_h_asks_for_the_current_heatmap_once_and_angles_pick_its_label() {
    let mut app = scored_app();
    assert_eq!(app.wanted_heatmap(), None, "off by default");
    app.update(key('H'));
    let asked = app.wanted_heatmap();
    assert!(
        matches!(
            asked,
            Some(Command::Heatmap {
                item: 0,
                label: None,
                ..
            })
        ),
        "{asked:?}"
    );
    assert_eq!(app.wanted_heatmap(), None, "asked once");
    app.update(Event::Heatmap {
        item: 0,
        label: None,
        result: hot_corner(1),
    });
    assert_eq!(app.wanted_heatmap(), None, "known");
    // `>` goes through the labels, then back to the predicted one; `<` the other way.
    app.update(key('>'));
    assert_eq!(app.heat.label, Some(0));
    assert!(matches!(
        app.wanted_heatmap(),
        Some(Command::Heatmap { label: Some(0), .. })
    ));
    for _ in 0..3 {
        app.update(key('>'));
    }
    assert_eq!(app.heat.label, None);
    app.update(key('<'));
    assert_eq!(app.heat.label, Some(2));
    // The next item gets its own.
    app.update(key('<'));
    app.update(key('<'));
    app.update(key('<'));
    app.update(key('j'));
    assert!(matches!(
        app.wanted_heatmap(),
        Some(Command::Heatmap {
            item: 1,
            label: None,
            ..
        })
    ));
    // Zoom carries the map when it is on and known.
    app.update(key('k'));
    let out = app.update(key('z'));
    assert!(
        matches!(&out[..], [Command::Zoom { heat: Some(_), .. }]),
        "{out:?}"
    );
    assert_eq!(app.mode, Mode::Zoom);
    app.update(key('q'));
    assert_eq!(app.mode, Mode::Normal);
    app.update(key('H'));
    let out = app.update(key('z'));
    assert!(matches!(&out[..], [Command::Zoom { heat: None, .. }]));
}

#[test]
fn snapshot_heatmap_over_the_preview() {
    let mut app = scored_app();
    app.update(Event::Preview {
        item: 0,
        preview: Preview::Ready {
            thumb: Arc::new(gradient(48, 48)),
            film: None,
            describe: "1024x1024 PNG 8-bit".into(),
        },
    });
    app.update(key('H'));
    app.update(Event::Heatmap {
        item: 0,
        label: None,
        result: hot_corner(0),
    });
    // Under NO_COLOR the ramp shows the heat: dense in the upper left, blank elsewhere.
    insta::assert_snapshot!(screen(&mut app, 100, 24, ColorMode::None));
    // In colour, the hot corner's cells are coloured and the cold ones stay gray.
    let mut terminal = Terminal::new(TestBackend::new(100, 24)).unwrap();
    ui::prepare(&mut app, ratatui::layout::Rect::new(0, 0, 100, 24));
    terminal
        .draw(|f| ui::draw(f, &app, ColorMode::TrueColor))
        .unwrap();
    use ratatui::style::Color;
    let buf = terminal.backend().buffer();
    let picture: Vec<(u16, u16, Color)> = (0..24)
        .flat_map(|y| (0..100).map(move |x| (x, y)))
        .filter(|&(x, y)| buf[(x, y)].symbol() == "▀")
        .map(|(x, y)| (x, y, buf[(x, y)].fg))
        .collect();
    let gray = |c: &Color| matches!(c, Color::Rgb(r, g, b) if r == g && g == b);
    let (x0, y0) = (picture[0].0, picture[0].1);
    let (x1, y1) = (picture.last().unwrap().0, picture.last().unwrap().1);
    let first = picture.iter().find(|p| p.0 == x0 && p.1 == y0).unwrap();
    assert!(!gray(&first.2), "hot corner {first:?}");
    let last = picture.iter().find(|p| p.0 == x1 && p.1 == y1).unwrap();
    assert!(gray(&last.2), "cold corner {last:?}");
    let text = terminal.backend().to_string();
    assert!(text.contains("heatmap: covid (predicted)"), "{text}");
    // A map that failed says why instead.
    app.update(Event::Heatmap {
        item: 0,
        label: None,
        result: Err("no heatmap: lateral view".into()),
    });
    assert!(
        screen(&mut app, 100, 24, ColorMode::None).contains("heatmap: no heatmap: lateral view")
    );
}

// ---------------------------------------------------------------- the view, kept incrementally

/// What the view must be: the items the filter keeps, in the sort's order (ties by index).
fn expected_view(app: &App) -> Vec<usize> {
    let mut want: Vec<usize> = (0..app.items.len())
        .filter(|&i| match app.list.filter {
            Filter::All => true,
            Filter::Label(l) => app.items[i].predicted() == Some(l),
            Filter::Errors => app.items[i].status == Status::Error,
            Filter::Flagged => app.is_flagged(&app.items[i]),
            other => panic!("not covered here: {other:?}"),
        })
        .collect();
    let p = |l: usize, i: usize| app.items[i].probs().get(l).copied().unwrap_or(-1.0);
    match app.list.sort {
        SortKey::Name => {}
        SortKey::Label(l) => want.sort_by(|&a, &b| p(l, b).total_cmp(&p(l, a)).then(a.cmp(&b))),
        SortKey::Status => want.sort_by_key(|&i| (app.items[i].status, i)),
    }
    want
}

/// Results and new files arriving in bursts while the list is sorted by a probability or
/// filtered: the view merged after each burst is the one a full rebuild would give, and the
/// cursor stays on its item.
#[test]
fn the_view_kept_up_with_each_burst_of_results_equals_a_full_rebuild() {
    let names: Vec<String> = (0..300).map(|i| format!("f/img-{i:03}.png")).collect();
    let first: Vec<&str> = names[..200].iter().map(String::as_str).collect();
    // (sort key presses, filter key presses) for: P(covid); P(normal) within "normal";
    // status; flagged by name.
    for (sorts, filters) in [(1, 0), (2, 2), (4, 0), (0, 4)] {
        let mut app = app_with(&first);
        app.update(key('R'));
        for _ in 0..sorts {
            app.update(key('s'));
        }
        for _ in 0..filters {
            app.update(key('f'));
        }
        app.refresh_view();
        assert_eq!(
            app.list.view,
            expected_view(&app),
            "sorts {sorts} first view"
        );
        let mut next = uniform(12345u64);
        for burst in 0..40 {
            if burst == 20 {
                // More files found mid-run.
                app.update(Event::Found(
                    names[200..].iter().map(|n| entry(n)).collect(),
                ));
            }
            if burst % 10 == 5 {
                // Round the five sorts back to this one: the view is sorted again from scratch
                // (some items scored, the others sharing one value).
                for _ in 0..5 {
                    app.update(key('s'));
                }
            }
            for _ in 0..7 {
                let item = (next() * app.items.len() as f32) as usize % app.items.len();
                let ev = if next() < 0.1 {
                    failed(&app, item, "bad")
                } else {
                    let (a, b) = (next(), next());
                    let (a, b) = (a.min(b), a.max(b));
                    scored(&app, item, [a, b - a, 1.0 - b])
                };
                app.update(ev);
            }
            let before = app.current();
            app.refresh_view();
            assert_eq!(
                app.list.view,
                expected_view(&app),
                "sorts {sorts} filters {filters}, burst {burst}"
            );
            if let Some(c) = before
                && app.list.view.contains(&c)
            {
                assert_eq!(app.current(), Some(c), "the cursor moved off its item");
            }
            app.update(key('j'));
        }
    }
}

/// A repeatable stream of numbers in [0, 1) (a linear congruential generator).
fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
    move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as f32 / (1u64 << 31) as f32
    }
}

/// The summary counts kept item by item agree with a count from scratch through runs,
/// results, failures, cancels, reruns and operating-point changes.
#[test]
fn the_summary_kept_item_by_item_equals_a_full_count() {
    let names: Vec<String> = (0..120).map(|i| format!("f/img-{i:03}.png")).collect();
    let first: Vec<&str> = names[..80].iter().map(String::as_str).collect();
    let mut app = app_with(&first);
    let mut next = uniform(99u64);
    for step in 0..200 {
        let item = (next() * app.items.len() as f32) as usize % app.items.len();
        let ev = match step % 10 {
            0 => key('R'),
            1 => key('r'),
            2 if step % 30 == 2 => code(KeyCode::Esc),
            3 => key('+'),
            4 => key('-'),
            5 if step == 55 => Event::Found(names[80..].iter().map(|n| entry(n)).collect()),
            6 => failed(&app, item, "bad"),
            7 => key('j'),
            _ => {
                let (a, b) = (next(), next());
                let (a, b) = (a.min(b), a.max(b));
                scored(&app, item, [a, b - a, 1.0 - b])
            }
        };
        app.update(ev);
        assert_eq!(app.summary(), app.count_all(), "step {step}");
    }
    let s = app.summary();
    assert_eq!(
        s.pending + s.running + s.errors + s.out_of_scope + s.per_label.iter().sum::<usize>(),
        120
    );
}

#[test]
fn files_arriving_out_of_order_are_listed_by_name_and_the_cursor_never_jumps() {
    // A streamed big folder: chunks, each sorted, in no order between them.
    let name = |i: usize| format!("img-{i}.png");
    let mut app = App::new(PathBuf::from("/data/incoming"), &manifest());
    app.list.list_rows = 10;
    let chunks: [&[usize]; 3] = [&[40, 41, 45, 47, 50], &[3, 7, 44, 46], &[1, 2, 42, 43, 48]];
    app.update(Event::Found(
        chunks[0].iter().map(|&i| entry(&name(i))).collect(),
    ));
    app.refresh_view();
    // Untouched while files arrive: the cursor stays on the first row, whatever comes first.
    app.update(Event::Found(
        chunks[1].iter().map(|&i| entry(&name(i))).collect(),
    ));
    app.refresh_view();
    assert_eq!(app.list.cursor, 0);
    assert_eq!(shown(&app)[0], "img-3.png");
    // Moved onto img-44 (row 4 of the screen): new files above it keep it on row 4.
    app.update(key('j'));
    app.update(key('j'));
    app.update(key('j'));
    assert_eq!(shown(&app)[app.list.cursor], "img-41.png");
    app.update(key('j'));
    let at = app.current().unwrap();
    assert_eq!(app.items[at].entry.rel().to_str(), Some("img-44.png"));
    let row = app.list.cursor - app.list.scroll;
    app.update(Event::Found(
        chunks[2].iter().map(|&i| entry(&name(i))).collect(),
    ));
    app.update(Event::WalkDone);
    app.refresh_view();
    assert_eq!(app.current(), Some(at), "the cursor stays on its item");
    assert_eq!(app.list.cursor - app.list.scroll, row, "and on its row");
    let mut all: Vec<usize> = chunks.concat();
    all.sort();
    assert_eq!(
        shown(&app),
        all.iter().map(|&i| name(i)).collect::<Vec<_>>()
    );
    // Other sorts break ties by name too, and the export of everything is in name order.
    app.update(key('s'));
    app.refresh_view();
    assert_eq!(
        shown(&app),
        all.iter().map(|&i| name(i)).collect::<Vec<_>>()
    );
}

/// A preview with its 16-bit film: a horizontal ramp over 0..=65535.
fn film_preview(w: u32, h: u32) -> Preview {
    use cxr_triage::imaging::{Film, GrayImage, render};
    let pixels = (0..h)
        .flat_map(|_| (0..w).map(move |x| (x * 65535 / (w - 1)) as u16))
        .collect();
    let film = Film::plain(GrayImage::new(w, h, 16, pixels).unwrap());
    Preview::Ready {
        thumb: Arc::new(render(&film.image, film.voi(), false)),
        film: Some(Arc::new(film)),
        describe: format!("{w}x{h} PNG 16-bit"),
    }
}

/// The truecolour gray levels of one row of the preview's picture.
fn preview_row(app: &mut App) -> Vec<u8> {
    let mut terminal = Terminal::new(TestBackend::new(120, 35)).unwrap();
    ui::prepare(app, ratatui::layout::Rect::new(0, 0, 120, 35));
    terminal
        .draw(|f| ui::draw(f, app, ColorMode::TrueColor))
        .unwrap();
    let buf = terminal.backend().buffer();
    (0..120)
        .filter_map(|x| match buf[(x, 5)].fg {
            ratatui::style::Color::Rgb(v, _, _) if buf[(x, 5)].symbol() == "▀" => Some(v),
            _ => None,
        })
        .collect()
}

#[test]
fn window_keys_redraw_the_current_film_and_the_next_film_opens_with_its_own() {
    let mut app = scored_app();
    for item in 0..2 {
        app.update(Event::Preview {
            item,
            preview: film_preview(64, 64),
        });
    }
    let own = preview_row(&mut app);
    assert!(own.len() > 10, "the picture is drawn: {own:?}");
    // Narrower: steeper around the same level (more black and more white at the ends).
    app.update(key('w'));
    let narrow = preview_row(&mut app);
    assert_ne!(narrow, own);
    let count = |row: &[u8], v: u8| row.iter().filter(|&&g| g == v).count();
    assert!(count(&narrow, 0) > count(&own, 0) && count(&narrow, 255) > count(&own, 255));
    assert!(screen(&mut app, 120, 35, ColorMode::TrueColor).contains("W 80% L 50%"));
    // The level up: darker everywhere.
    app.update(key('.'));
    let darker = preview_row(&mut app);
    assert!(darker.iter().zip(&narrow).all(|(d, n)| d <= n));
    assert!(darker.iter().zip(&narrow).any(|(d, n)| d < n));
    // `v`: the file's own window again.
    app.update(key('v'));
    assert_eq!(preview_row(&mut app), own);
    // `i`: every level turned over, and said so.
    app.update(key('i'));
    let inverted = preview_row(&mut app);
    assert!(
        inverted
            .iter()
            .zip(&own)
            .all(|(a, b)| *a as u16 + *b as u16 == 255)
    );
    assert!(screen(&mut app, 120, 35, ColorMode::TrueColor).contains("inverted"));
    app.update(key('i'));
    // A window set on one film is not carried to the next.
    app.update(key('W'));
    assert!(app.look.window.is_some());
    app.update(key('j'));
    assert_eq!(preview_row(&mut app), own);
    assert_eq!(app.look.window, None);
}

#[test]
fn window_keys_without_a_film_say_so() {
    let mut app = scored_app();
    app.update(key('w'));
    assert_eq!(app.message.as_deref(), Some("no picture to window yet"));
    assert_eq!(app.look.window, None);
}

/// Draw `app` into a `w` x `h` test terminal, making every picture it asks for with
/// `graphics` first (as the picture worker would); the buffer's symbols joined.
fn drawn_with(app: &mut App, graphics: &Graphics, w: u16, h: u16) -> (String, Vec<Shot>) {
    let area = ratatui::layout::Rect::new(0, 0, w, h);
    let mut shots = Vec::new();
    for c in ui::prepare(app, area) {
        if let Command::Pictures(list) = c {
            shots.extend(list);
        }
    }
    for shot in &shots {
        let picture = graphics.take(shot);
        app.update(Event::Picture {
            key: shot.key,
            picture,
        });
    }
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    ui::prepare(app, area);
    terminal
        .draw(|f| ui::draw(f, app, ColorMode::TrueColor))
        .unwrap();
    let buf = terminal.backend().buffer();
    let text = buf.content().iter().map(|c| c.symbol()).collect();
    (text, shots)
}

fn graphics_app(graphics: &Graphics) -> App {
    let mut app = scored_app();
    app.screen = graphics.screen();
    app.update(Event::Preview {
        item: 0,
        preview: film_preview(64, 80),
    });
    app
}

#[test]
fn forced_protocols_draw_the_preview_in_their_escape_sequences_sized_to_the_pane() {
    for (protocol, marker) in [
        (ImageProtocol::Kitty, "\x1b_G"),
        (ImageProtocol::Sixel, "\x1bP"),
        (ImageProtocol::Iterm2, "\x1b]1337;File=inline=1"),
    ] {
        let graphics = Graphics::forced(protocol, (10, 20));
        let mut app = graphics_app(&graphics);
        let (text, shots) = drawn_with(&mut app, &graphics, 120, 35);
        // One picture asked for: the current item's, in the preview pane.
        assert_eq!(shots.len(), 1, "{protocol:?}");
        let (cols, rows) = shots[0].cells;
        assert!(cols > 20 && rows > 10, "{protocol:?}: {cols}x{rows}");
        assert!(text.contains(marker), "{protocol:?}: no {marker:?} drawn");
        let (pw, ph) = (cols as u32 * 10, rows as u32 * 20);
        let sized = match protocol {
            ImageProtocol::Kitty => format!("s={pw},v={ph},c={cols},r={rows}"),
            // Sixel's raster attributes: aspect 1:1, then width and height in pixels.
            ImageProtocol::Sixel => format!("\"1;1;{pw};{ph}"),
            _ => format!("width={pw}px;height={ph}px"),
        };
        assert!(text.contains(&sized), "{protocol:?}: not sized {sized}");
        // No half-block pixels where the picture is.
        assert!(!text.contains('▀'), "{protocol:?}");
        // A second frame asks for nothing new: the picture is cached.
        let (_, again) = drawn_with(&mut app, &graphics, 120, 35);
        assert!(again.is_empty(), "{protocol:?}");
        // A window change is a new picture.
        app.update(key('w'));
        let (_, windowed) = drawn_with(&mut app, &graphics, 120, 35);
        assert_eq!(windowed.len(), 1);
        assert_ne!(windowed[0].key, shots[0].key);
    }
}

#[test]
fn the_grid_asks_only_for_the_pictures_it_shows() {
    let graphics = Graphics::forced(ImageProtocol::Kitty, (10, 20));
    let mut app = graphics_app(&graphics);
    for item in 1..6 {
        app.update(Event::Preview {
            item,
            preview: film_preview(32, 32),
        });
    }
    app.update(key('g'));
    let (text, shots) = drawn_with(&mut app, &graphics, 80, 24);
    // 80 x 24: a 3 x 2 grid of 6 items, every one decoded; no preview pane in the grid.
    assert_eq!(shots.len(), 6);
    let mut items: Vec<usize> = shots.iter().map(|s| s.key.item).collect();
    items.sort();
    assert_eq!(items, (0..6).collect::<Vec<_>>());
    assert!(text.contains("\x1b_G"));
}

#[test]
fn halfblocks_ask_for_no_pictures_outside_the_zoom() {
    let graphics = Graphics::halfblocks();
    let mut app = graphics_app(&graphics);
    let (text, shots) = drawn_with(&mut app, &graphics, 120, 35);
    assert!(shots.is_empty());
    assert!(text.contains('▀') && !text.contains('\x1b'));
}

#[test]
fn the_zoom_opens_fits_zooms_pans_and_returns() {
    use cxr_triage::imaging::{Film, GrayImage};
    let graphics = Graphics::halfblocks();
    let mut app = graphics_app(&graphics);
    let out = app.update(key('z'));
    assert!(matches!(&out[..], [Command::Zoom { .. }]));
    assert_eq!(app.mode, Mode::Zoom);
    assert!(
        drawn_with(&mut app, &graphics, 100, 30)
            .0
            .contains("loading")
    );
    let pixels = (0..400 * 300).map(|i| (i % 65536) as u16).collect();
    let film = Film::plain(GrayImage::new(400, 300, 16, pixels).unwrap());
    app.update(Event::ZoomReady(Ok(Arc::new(film))));
    let (text, shots) = drawn_with(&mut app, &graphics, 100, 30);
    assert_eq!(shots.len(), 1);
    assert!(shots[0].key.zoom);
    assert!(
        text.contains("1.0x · 400x300 of 400x300 at (200, 150)"),
        "{text}"
    );
    assert!(text.contains('▀'));
    // Closer: a crop of the film, centred where it was.
    app.update(key('+'));
    let (text, shots) = drawn_with(&mut app, &graphics, 100, 30);
    assert!(text.contains("1.5x"), "{text}");
    let c = shots[0].crop;
    assert!(c.width < 400.0 && c.height < 300.0);
    assert!((c.left + c.width / 2.0 - 200.0).abs() < 1e-6);
    // Pan right as far as it goes: the crop stops at the edge.
    for _ in 0..30 {
        app.update(key('l'));
    }
    let (_, shots) = drawn_with(&mut app, &graphics, 100, 30);
    let c = shots[0].crop;
    assert!((c.left + c.width - 400.0).abs() < 1e-6, "{c:?}");
    // `0` fits again; `q` returns to the list and drops the full-screen pictures.
    app.update(key('0'));
    let (text, _) = drawn_with(&mut app, &graphics, 100, 30);
    assert!(text.contains("1.0x"));
    app.update(key('q'));
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.zoom.is_none());
    let (text, _) = drawn_with(&mut app, &graphics, 100, 30);
    assert!(!text.contains("1.0x"));
}

#[test]
fn the_zoom_of_an_unreadable_file_says_why() {
    let graphics = Graphics::halfblocks();
    let mut app = graphics_app(&graphics);
    app.update(key('z'));
    app.update(Event::ZoomReady(Err("truncated PNG".into())));
    let (text, _) = drawn_with(&mut app, &graphics, 100, 30);
    assert!(text.contains("cannot show this file: truncated PNG"));
    app.update(code(KeyCode::Esc));
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn zoom_and_pan_stay_inside_tiny_and_thin_films() {
    use cxr_triage::tui::app::ZoomView;
    for (w, h) in [(1u32, 1u32), (10_000, 10), (10, 10_000), (3, 7)] {
        let screen = (1000, 560);
        let mut z = ZoomView::new(0, None);
        z.center = (w as f64 / 2.0, h as f64 / 2.0);
        let moves = [
            (1.5, (0.0, 0.0)),
            (1.5, (0.1, 0.0)),
            (1.0, (-0.1, 0.1)),
            (1e9, (0.0, -0.1)),
            (1.0, (5.0, 5.0)),
            (1.0, (-50.0, -50.0)),
            (1e-9, (0.0, 0.0)),
        ];
        for (factor, pan) in moves {
            z.step(factor, pan, w, h, screen);
            let c = z.crop(w, h, screen);
            assert!(z.scale >= 1.0 && z.scale <= ZoomView::max_scale(w as f64, h as f64, screen));
            assert!(c.width > 0.0 && c.height > 0.0, "{w}x{h}: {c:?}");
            assert!(c.left >= -1e-9 && c.top >= -1e-9, "{w}x{h}: {c:?}");
            assert!(c.left + c.width <= w as f64 + 1e-9, "{w}x{h}: {c:?}");
            assert!(c.top + c.height <= h as f64 + 1e-9, "{w}x{h}: {c:?}");
        }
    }
    // A 1 x 1 film cannot be zoomed further than its fit (already 560 pixels a pixel).
    assert_eq!(ZoomView::max_scale(1.0, 1.0, (1000, 560)), 1.0);
}

#[test]
fn the_help_scrolls_where_it_is_taller_than_the_terminal() {
    let mut app = scored_app();
    app.update(key('?'));
    let first = screen(&mut app, 80, 24, ColorMode::None);
    assert!(first.contains("j k scroll"), "{first}");
    assert!(first.contains("page down / up"));
    for _ in 0..10 {
        app.update(key('j'));
    }
    let later = screen(&mut app, 80, 24, ColorMode::None);
    assert_eq!(app.mode, Mode::Help);
    assert!(!later.contains("page down / up") && later.contains("back to the list"));
    app.update(key('x'));
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn a_sixel_picture_that_leaves_its_spot_is_reported_for_clearing() {
    let graphics = Graphics::forced(ImageProtocol::Sixel, (10, 20));
    let mut app = graphics_app(&graphics);
    assert!(app.screen.overdrawn);
    let area = ratatui::layout::Rect::new(0, 0, 120, 35);
    assert!(
        ui::protocol_areas(&app, area).is_empty(),
        "nothing made yet"
    );
    let (_, shots) = drawn_with(&mut app, &graphics, 120, 35);
    let drawn = ui::protocol_areas(&app, area);
    assert_eq!(drawn.len(), 1);
    assert_eq!((drawn[0].width, drawn[0].height), shots[0].cells);
    // Item 1 has no preview yet: the pane shows no picture, so the spot must be cleared.
    app.update(key('j'));
    ui::prepare(&mut app, area);
    assert!(!ui::protocol_areas(&app, area).contains(&drawn[0]));
    // Kitty places its pictures in the cells: nothing to clear.
    assert!(!Graphics::forced(ImageProtocol::Kitty, (10, 20)).overdrawn());
}

#[test]
fn snapshot_a_narrow_window_inverted_without_colour() {
    let mut app = scored_app();
    app.update(Event::Preview {
        item: 0,
        preview: film_preview(48, 40),
    });
    for c in ['w', 'w', 'w', '.', 'i'] {
        app.update(key(c));
    }
    insta::assert_snapshot!(screen(&mut app, 80, 24, ColorMode::None));
}

#[test]
fn sixel_pictures_stay_within_xterms_default_graphic_size() {
    use cxr_triage::tui::image::graphics::{Picture, SIXEL_MAX_PX};
    let graphics = Graphics::forced(ImageProtocol::Sixel, (10, 20));
    let mut app = graphics_app(&graphics);
    app.update(key('z'));
    app.update(Event::ZoomReady(Ok(Arc::new(
        cxr_triage::imaging::Film::plain(
            cxr_triage::imaging::GrayImage::new(64, 64, 16, vec![30000; 64 * 64]).unwrap(),
        ),
    ))));
    // 250 x 70 cells of 10 x 20 pixels: 2500 x 1380 pixels, more than xterm shows.
    let (text, shots) = drawn_with(&mut app, &graphics, 250, 70);
    assert_eq!(shots[0].cells, (250, 69));
    let Ok(Picture::Protocol(p)) = graphics.take(&shots[0]) else {
        panic!("a sixel picture");
    };
    let size = p.size();
    assert_eq!(
        (size.width as u32 * 10, size.height as u32 * 20),
        (SIXEL_MAX_PX, SIXEL_MAX_PX)
    );
    assert!(text.contains(&format!("\"1;1;{SIXEL_MAX_PX};{SIXEL_MAX_PX}")));
}
