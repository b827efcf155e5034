//! The one key table: every key of the list view, the action it triggers and its help line.
//! The key handler ([`lookup`]), the `?` overlay and the README's key table (checked by a
//! test) all read [`KEYS`]. Keys inside the search and export prompts are the prompts' own
//! (typing, Enter, Esc, Tab) and are listed in the rows that open them.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// What a key does in the list view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Down,
    Up,
    /// Sideways in the grid (nothing in the list).
    Right,
    Left,
    PageDown,
    PageUp,
    HalfPageDown,
    HalfPageUp,
    First,
    Last,
    Mark,
    RunSelection,
    RunPending,
    /// Cancel the run, else clear the search, else unmark.
    Cancel,
    Sort,
    Filter,
    FilterOff,
    Review,
    Search,
    ThresholdUp,
    ThresholdDown,
    NextLabel,
    ScrollProbsDown,
    ScrollProbsUp,
    Grid,
    Zoom,
    /// The heatmap over the preview, on or off.
    Heatmap,
    HeatLabelNext,
    HeatLabelPrev,
    Export,
    Help,
    Quit,
    /// Window/level of the shown film.
    WindowNarrow,
    WindowWiden,
    LevelDown,
    LevelUp,
    /// Back to the file's own window.
    WindowReset,
    Invert,
    /// In the zoom: closer, further, the whole film, pan, back to the list.
    ZoomIn,
    ZoomOut,
    Fit,
    PanLeft,
    PanRight,
    PanUp,
    PanDown,
    Back,
}

/// A key: its code, and whether it needs Ctrl. Keys without Ctrl match whatever the modifiers
/// (Shift comes with capitals on some terminals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub ctrl: bool,
}

const fn ch(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: false,
    }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        ctrl: true,
    }
}

const fn code(code: KeyCode) -> Key {
    Key { code, ctrl: false }
}

/// One line of help: the keys as shown, what they do, and the bindings behind them.
pub struct Binding {
    pub keys: &'static str,
    pub help: &'static str,
    pub bind: &'static [(Key, Action)],
}

use Action as A;

/// Every key of the list view, in the order the help lists them.
pub const KEYS: &[Binding] = &[
    Binding {
        keys: "j k ↓ ↑",
        help: "move",
        bind: &[
            (ch('j'), A::Down),
            (code(KeyCode::Down), A::Down),
            (ch('k'), A::Up),
            (code(KeyCode::Up), A::Up),
        ],
    },
    Binding {
        keys: "PgDn PgUp ^d ^u",
        help: "page down / up",
        bind: &[
            (code(KeyCode::PageDown), A::PageDown),
            (code(KeyCode::PageUp), A::PageUp),
            (ctrl('d'), A::HalfPageDown),
            (ctrl('u'), A::HalfPageUp),
        ],
    },
    Binding {
        keys: "Home End G",
        help: "first / last",
        bind: &[
            (code(KeyCode::Home), A::First),
            (code(KeyCode::End), A::Last),
            (ch('G'), A::Last),
        ],
    },
    Binding {
        keys: "space",
        help: "mark (r runs the marked images)",
        bind: &[(ch(' '), A::Mark)],
    },
    Binding {
        keys: "r",
        help: "run the model on the marked images, or on the current one",
        bind: &[(ch('r'), A::RunSelection)],
    },
    Binding {
        keys: "R",
        help: "run on everything not scored yet",
        bind: &[(ch('R'), A::RunPending)],
    },
    Binding {
        keys: "Esc",
        help: "cancel the run (keeps the results) / clear search / unmark",
        bind: &[(code(KeyCode::Esc), A::Cancel)],
    },
    Binding {
        keys: "s",
        help: "sort: name → P(each label) → status",
        bind: &[(ch('s'), A::Sort)],
    },
    Binding {
        keys: "f F",
        help: "filter: label → flagged → errors → disagrees → dups → unusual; F off",
        bind: &[(ch('f'), A::Filter), (ch('F'), A::FilterOff)],
    },
    Binding {
        keys: "m",
        help: "review: label metrics, confusion matrix, figures per folder",
        bind: &[(ch('m'), A::Review)],
    },
    Binding {
        keys: "/",
        help: "search the paths as you type (Enter keeps, Esc clears)",
        bind: &[(ch('/'), A::Search)],
    },
    Binding {
        keys: "+ -",
        help: "move the operating point of the flag label",
        bind: &[
            (ch('+'), A::ThresholdUp),
            (ch('='), A::ThresholdUp),
            (ch('-'), A::ThresholdDown),
        ],
    },
    Binding {
        keys: "o",
        help: "next label for + - (models with several labels)",
        bind: &[(ch('o'), A::NextLabel)],
    },
    Binding {
        keys: "[ ]",
        help: "scroll the probabilities (models with many labels)",
        bind: &[(ch(']'), A::ScrollProbsDown), (ch('['), A::ScrollProbsUp)],
    },
    Binding {
        keys: "H",
        help: "heatmap (Grad-CAM): where the model looked, over the preview and zoom",
        bind: &[(ch('H'), A::Heatmap)],
    },
    Binding {
        keys: "< >",
        help: "heatmap label: predicted → each label in turn",
        bind: &[(ch('>'), A::HeatLabelNext), (ch('<'), A::HeatLabelPrev)],
    },
    Binding {
        keys: "g",
        help: "thumbnail grid of the list / back (h l move sideways)",
        bind: &[
            (ch('g'), A::Grid),
            (ch('l'), A::Right),
            (code(KeyCode::Right), A::Right),
            (ch('h'), A::Left),
            (code(KeyCode::Left), A::Left),
        ],
    },
    Binding {
        keys: "z Enter",
        help: "zoom: the film full-screen, whole (keys below)",
        bind: &[(ch('z'), A::Zoom), (code(KeyCode::Enter), A::Zoom)],
    },
    Binding {
        keys: "w W , .",
        help: "window narrower / wider, level down / up (the picture only, not the model)",
        bind: &[
            (ch('w'), A::WindowNarrow),
            (ch('W'), A::WindowWiden),
            (ch(','), A::LevelDown),
            (ch('.'), A::LevelUp),
        ],
    },
    Binding {
        keys: "v i",
        help: "the file's own window (DICOM's, else its range) / invert",
        bind: &[(ch('v'), A::WindowReset), (ch('i'), A::Invert)],
    },
    Binding {
        keys: "e",
        help: "export the list (Tab: shown rows or all) to .csv .json .jsonl",
        bind: &[(ch('e'), A::Export)],
    },
    Binding {
        keys: "?",
        help: "this help",
        bind: &[(ch('?'), A::Help)],
    },
    Binding {
        keys: "q ^c",
        help: "quit",
        bind: &[(ch('q'), A::Quit), (ctrl('c'), A::Quit)],
    },
];

/// The full-screen zoom's keys (window/level and invert as in the list).
pub const ZOOM_KEYS: &[Binding] = &[
    Binding {
        keys: "+ - z Z",
        help: "zoom in / out (the info line shows the scale and position)",
        bind: &[
            (ch('+'), A::ZoomIn),
            (ch('='), A::ZoomIn),
            (ch('z'), A::ZoomIn),
            (ch('-'), A::ZoomOut),
            (ch('Z'), A::ZoomOut),
        ],
    },
    Binding {
        keys: "h j k l ← ↓ ↑ →",
        help: "pan",
        bind: &[
            (ch('h'), A::PanLeft),
            (code(KeyCode::Left), A::PanLeft),
            (ch('j'), A::PanDown),
            (code(KeyCode::Down), A::PanDown),
            (ch('k'), A::PanUp),
            (code(KeyCode::Up), A::PanUp),
            (ch('l'), A::PanRight),
            (code(KeyCode::Right), A::PanRight),
        ],
    },
    Binding {
        keys: "0",
        help: "fit: the whole film",
        bind: &[(ch('0'), A::Fit)],
    },
    Binding {
        keys: "w W , . v i",
        help: "window narrower / wider, level down / up, the file's own window, invert",
        bind: &[
            (ch('w'), A::WindowNarrow),
            (ch('W'), A::WindowWiden),
            (ch(','), A::LevelDown),
            (ch('.'), A::LevelUp),
            (ch('v'), A::WindowReset),
            (ch('i'), A::Invert),
        ],
    },
    Binding {
        keys: "q Esc Enter",
        help: "back to the list",
        bind: &[
            (ch('q'), A::Back),
            (code(KeyCode::Esc), A::Back),
            (code(KeyCode::Enter), A::Back),
        ],
    },
];

/// The action of a key in the list view. A binding with Ctrl wins over one without.
pub fn lookup(key: &KeyEvent) -> Option<Action> {
    lookup_in(KEYS, key)
}

/// The action of a key in a table.
pub fn lookup_in(table: &[Binding], key: &KeyEvent) -> Option<Action> {
    let held = key.modifiers.contains(KeyModifiers::CONTROL);
    let mut plain = None;
    for (k, action) in table.iter().flat_map(|b| b.bind.iter()) {
        if k.code == key.code {
            if k.ctrl && held {
                return Some(*action);
            }
            if !k.ctrl {
                plain = plain.or(Some(*action));
            }
        }
    }
    plain
}

/// Ctrl-C: quits from every mode, the prompts included.
pub fn is_interrupt(key: &KeyEvent) -> bool {
    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c')
}

/// The README's key tables: the list's, then the zoom's; one `| keys | help |` line per
/// binding, keys in backticks.
pub fn markdown_table() -> String {
    let mut out = table_of(KEYS);
    out.push_str("\nIn the zoom:\n\n");
    out.push_str(&table_of(ZOOM_KEYS));
    out
}

fn table_of(table: &[Binding]) -> String {
    let mut out = String::from("| Keys | What they do |\n|---|---|\n");
    for b in table {
        let keys: Vec<String> = b
            .keys
            .split(' ')
            .map(|k| format!("`{}`", if k == "|" { "\\|" } else { k }))
            .collect();
        out.push_str(&format!("| {} | {} |\n", keys.join(" "), b.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> Option<Action> {
        lookup(&KeyEvent::new(code, modifiers))
    }

    #[test]
    fn ctrl_bindings_need_ctrl_and_plain_ones_ignore_shift() {
        assert_eq!(
            press(KeyCode::Char('d'), KeyModifiers::CONTROL),
            Some(A::HalfPageDown)
        );
        assert_eq!(press(KeyCode::Char('d'), KeyModifiers::NONE), None);
        assert_eq!(
            press(KeyCode::Char('G'), KeyModifiers::SHIFT),
            Some(A::Last)
        );
        assert_eq!(
            press(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(A::Quit)
        );
        assert_eq!(press(KeyCode::Char('c'), KeyModifiers::NONE), None);
    }

    /// A key as the help writes it.
    fn parse(shown: &str) -> KeyEvent {
        let (code, modifiers) = match shown {
            "space" => (KeyCode::Char(' '), KeyModifiers::NONE),
            "Esc" => (KeyCode::Esc, KeyModifiers::NONE),
            "Enter" => (KeyCode::Enter, KeyModifiers::NONE),
            "PgDn" => (KeyCode::PageDown, KeyModifiers::NONE),
            "PgUp" => (KeyCode::PageUp, KeyModifiers::NONE),
            "Home" => (KeyCode::Home, KeyModifiers::NONE),
            "End" => (KeyCode::End, KeyModifiers::NONE),
            "↓" => (KeyCode::Down, KeyModifiers::NONE),
            "↑" => (KeyCode::Up, KeyModifiers::NONE),
            "←" => (KeyCode::Left, KeyModifiers::NONE),
            "→" => (KeyCode::Right, KeyModifiers::NONE),
            s if s.starts_with('^') => (
                KeyCode::Char(s.chars().nth(1).unwrap()),
                KeyModifiers::CONTROL,
            ),
            s => {
                let mut chars = s.chars();
                let c = chars.next().unwrap();
                assert!(chars.next().is_none(), "unknown key name {s:?}");
                (KeyCode::Char(c), KeyModifiers::NONE)
            }
        };
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn no_key_is_bound_twice_and_every_shown_key_does_what_its_line_says() {
        for table in [KEYS, ZOOM_KEYS] {
            check(table);
        }
    }

    fn check(table: &[Binding]) {
        let mut seen = std::collections::HashSet::new();
        for b in table {
            for (k, _) in b.bind {
                assert!(
                    seen.insert((format!("{:?}", k.code), k.ctrl)),
                    "{k:?} twice"
                );
            }
            for shown in b.keys.split(' ') {
                let action = lookup_in(table, &parse(shown));
                assert!(
                    b.bind.iter().any(|(_, a)| Some(*a) == action),
                    "{shown:?} in {:?} does {action:?}",
                    b.keys
                );
            }
        }
    }
}
