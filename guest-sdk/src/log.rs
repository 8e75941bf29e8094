//! Logging into the host's structured log.
//!
//! Messages carry the plugin's name on the host side. Use the macros like
//! `format!`: `sluice_guest::info!("decoded {} x {}", w, h)`.

use crate::bindings::host_log::{self, Level};

pub use crate::bindings::host_log::Level as LogLevel;

/// Send one message to the host log.
pub fn log(level: Level, message: &str) {
    host_log::log(level, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:ident, $($arg:tt)*) => {
        $crate::log::log($crate::log::LogLevel::$level, &::std::format!($($arg)*))
    };
}

/// Log at debug level.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::__log!(Debug, $($arg)*) }; }
/// Log at info level.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::__log!(Info, $($arg)*) }; }
/// Log at warn level.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::__log!(Warn, $($arg)*) }; }
/// Log at error level.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::__log!(Error, $($arg)*) }; }
