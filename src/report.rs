//! Reports: the messages rcu-defer prints when something goes wrong that
//! has no caller to return an error to (a panicking callback, a failed
//! guest notification, a stalled grace period), and panic payloads turned
//! into text for them.

use std::any::Any;
use std::fmt;
use std::io::{self, Write};

/// Prints one report on stderr, prefixed with `rcu-defer: `.
///
/// Never panics (unlike `eprintln!`, which panics when stderr is a closed
/// pipe): reports are made on paths that must not unwind, such as the
/// `rcu-call` thread holding retired values, or a thread that is already
/// unwinding. Under loom it prints nothing: a model runs the same threads
/// thousands of times, and its failures are reported by loom.
pub(crate) fn emit(args: fmt::Arguments<'_>) {
    if cfg!(loom) {
        return;
    }
    let _ = writeln!(io::stderr().lock(), "rcu-defer: {args}");
}

/// `report!("...", args)`: [`emit`] with `format!` syntax.
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::report::emit(format_args!($($arg)*))
    };
}
pub(crate) use report;

/// The message of a panic payload, for reports.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic payload that is not a string)"
    }
}
