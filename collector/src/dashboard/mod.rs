//! The dashboard: the fleet view as server-rendered HTML pages with inline
//! SVG charts, made here in Rust. No JavaScript and nothing fetched at run
//! time (no CDN): it works on an offline site network, and the pages'
//! Content-Security-Policy can forbid every script.
//!
//! Invariant: every value put into a page goes through [`esc`], names too
//! (device and pipeline names are restricted by `check_name`, but drift
//! features, model names, versions and digests come from records, which
//! a device writes as it likes: all are treated as hostile).

mod chart;
mod device;
mod filter;
mod fleet;
mod page;
mod summary;

pub use device::{WINDOWS, device};
pub use filter::{FAILING_ERROR_RATE, Filter, PAGE_SIZE};
pub use fleet::{FleetPage, fleet};
pub use page::{denied, esc, utc};
