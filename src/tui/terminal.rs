//! The terminal while the UI owns it: raw mode and the alternate screen (undone on every way
//! out), stderr silenced, and a panic hook that restores the screen before reporting.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread;

use ratatui::crossterm::{cursor, execute, terminal};

use crate::imaging;

/// Raw mode and the alternate screen, undone on drop.
pub(super) struct TerminalGuard;

impl TerminalGuard {
    pub(super) fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        silence_stderr();
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The real stderr while the UI runs (-1 when not redirected). Libraries write to stderr on
/// their own (tiff 0.11 has a `dbg!` on a limits error): on the UI's screen that would be
/// garbage over the frame, so stderr goes to /dev/null while the UI owns the terminal.
static SAVED_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn silence_stderr() {
    // SAFETY: plain fd calls on the process's own descriptors; failures leave stderr as it was.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        let saved = libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3);
        if saved >= 0 && libc::dup2(null, libc::STDERR_FILENO) >= 0 {
            SAVED_STDERR.store(saved, Ordering::SeqCst);
        } else if saved >= 0 {
            libc::close(saved);
        }
        libc::close(null);
    }
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the descriptor `silence_stderr` duplicated.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
    }
}

/// Leave raw mode and the alternate screen, and give stderr back; safe to call more than once
/// and when the terminal is gone (errors are ignored: there is nobody to tell).
pub fn restore_terminal() {
    restore_stderr();
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = std::io::stdout().flush();
}

static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub(super) fn take_worker_panics() -> Vec<String> {
    std::mem::take(&mut *WORKER_PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A panic on the UI thread restores the terminal, then reports as usual. A panic on a
/// background thread is recorded (printed after the UI closes) instead of garbling the screen.
pub(super) fn install_panic_hook() {
    let ui = thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if imaging::guard::is_guarded() {
            // A decoder panic that becomes a per-file error: not ours to report.
            previous(info);
        } else if thread::current().id() == ui {
            restore_terminal();
            previous(info);
        } else {
            let msg = imaging::guard::panic_message(info.payload());
            let at = info
                .location()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default();
            WORKER_PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{msg}{at}"));
        }
    }));
}
