//! The commands behind `sluice`'s subcommands: the only code that prints
//! for people (or JSON for programs). The library never prints.

pub mod demo;
pub mod infer;
pub mod inspect;
pub mod run;

/// The one tokio runtime of a `sluice` process.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-io")
        .enable_all()
        .build()?)
}
