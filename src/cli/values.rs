//! How the library's plain enums appear on the command line: the names and help that
//! `--help` lists. The library types carry no clap derives (as fd keeps its `Config` plain);
//! clap learns them here.

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::catalog::dataset::Split;
use crate::results::ExportFormat;
use crate::training::Arch;
use crate::tui::image::graphics::ImageProtocol;

/// `impl ValueEnum` for a library enum: each variant with its command-line name and help.
macro_rules! value_enum {
    ($ty:ident { $($variant:ident => $name:literal $(: $help:literal)?),+ $(,)? }) => {
        impl ValueEnum for $ty {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($ty::$variant),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                Some(match self {
                    $($ty::$variant => PossibleValue::new($name)$(.help($help))?),+
                })
            }
        }
    };
}

value_enum!(Split {
    Train => "train",
    Val => "val",
    Test => "test",
});

value_enum!(ExportFormat {
    Csv => "csv",
    Json => "json",
    Jsonl => "jsonl",
});

value_enum!(Arch {
    Cxrnet => "cxrnet": "The project's compact residual CNN (minutes per epoch on 2 cores)",
    Densenet121 => "densenet121": "DenseNet-121, the original project's network (about 100x the compute of cxrnet)",
});

value_enum!(ImageProtocol {
    Auto => "auto": "Ask the terminal; half-blocks if it names no protocol",
    Kitty => "kitty",
    Sixel => "sixel",
    Iterm2 => "iterm2": "iTerm2's inline images (also WezTerm, mintty, VS Code)",
    Halfblocks => "halfblocks": "Two pixels a cell: every terminal, tmux and SSH",
});

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant is listed once, under the name serde and the docs use.
    #[test]
    fn names_round_trip() {
        for v in Split::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(Split::from_str(&name, false).unwrap(), *v);
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{name}\""));
        }
        for v in ImageProtocol::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(name, v.name());
            assert_eq!(ImageProtocol::from_name(&name.to_uppercase()), Some(*v));
        }
        for v in Arch::value_variants() {
            let name = v.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{name}\""));
        }
        let formats: Vec<_> = ExportFormat::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(formats, ["csv", "json", "jsonl"]);
    }
}
