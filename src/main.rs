use std::process::ExitCode;

fn main() -> ExitCode {
    cxr_triage::cli::main()
}
