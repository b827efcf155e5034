//! Third-party decoders fed hostile bytes sometimes panic. [`catch`] turns such a panic into
//! that file's error, quietly: the panic hook stays silent for panics inside a guarded call, so
//! a scan's stderr and the UI's screen are not covered in backtraces.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Is this thread inside [`catch`]? (Other panic hooks use this to stay out of the way.)
pub fn is_guarded() -> bool {
    DEPTH.with(Cell::get) > 0
}

/// The message of a panic, as text.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Run `f`; a panic inside becomes `Err(message)` and is not printed.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if is_guarded() {
                let message = panic_message(info.payload());
                MESSAGE.with(|m| *m.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|payload| {
        MESSAGE
            .with(|m| m.borrow_mut().take())
            .unwrap_or_else(|| panic_message(&*payload))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_message() {
        let r: Result<(), String> = catch(|| panic!("bad bytes at {}", 7));
        assert_eq!(r, Err("bad bytes at 7".to_string()));
        assert!(!is_guarded());
        assert_eq!(catch(|| 5), Ok(5));
    }
}
