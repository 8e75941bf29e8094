//! The commands behind `sluice`'s subcommands: the only code that prints
//! for people (or JSON for programs). The library never prints.

pub mod bundle;
pub mod demo;
pub mod infer;
pub mod inspect;
pub mod new;
pub mod plugin;
pub mod profile;
pub mod run;

/// Load the configuration at `path`, keeping state (the compiled-plugin
/// cache, measurements) in `data_dir` instead of its own when given.
pub fn load_config(
    path: &std::path::Path,
    data_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<sluice_agent::config::Config> {
    let mut config = sluice_agent::config::Config::load(path)?;
    if let Some(dir) = data_dir {
        config.device.data_dir = dir;
    }
    use_machine_cache(&mut config);
    Ok(config)
}

/// The machine's cache folder for `sluice` commands: `$SLUICE_CACHE_DIR`,
/// else `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice` (per user: the
/// cache holds native code the process trusts, so only its user may write
/// it).
pub fn machine_cache_dir() -> Option<std::path::PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("SLUICE_CACHE_DIR").or_else(|| {
        absolute("XDG_CACHE_HOME")
            .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
            .map(|base| base.join("sluice"))
    })
}

/// Give a configuration that names no `runtime.cache_dir` the machine's
/// cache, so every command and data directory compiles a plugin once. A
/// folder that cannot be written (a read-only root file system, a service
/// user without a home) leaves the library's default, `<data_dir>/cache`.
pub fn use_machine_cache(config: &mut sluice_agent::config::Config) {
    if config.runtime.cache_dir.is_some() {
        return;
    }
    let Some(dir) = machine_cache_dir() else {
        return;
    };
    let writable = std::fs::create_dir_all(&dir).is_ok() && tempfile::tempfile_in(&dir).is_ok();
    if writable {
        config.runtime.cache_dir = Some(dir);
    }
}

/// Start only pipeline `pipeline` of `config` (or its only one), for a
/// one-shot command: a wrong or missing choice fails before anything is
/// loaded, and nothing else is loaded. `runtime.pipeline(None)` is it.
pub fn start_one_pipeline(
    mut config: sluice_agent::config::Config,
    pipeline: Option<&str>,
) -> anyhow::Result<sluice_agent::runtime::Runtime> {
    sluice_agent::runtime::narrow_to_pipeline(&mut config, pipeline)?;
    Ok(with_spinner(
        "starting: loading the model and plugins",
        || sluice_agent::runtime::Runtime::start(config),
    )?)
}

/// `error` and its causes, joined by ": " like `{:#}`, leaving out a cause
/// whose text is already shown: the library's errors name their cause in
/// their own message and also keep it as their `source()`.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The one tokio runtime of a `sluice` process.
pub fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-io")
        .enable_all()
        .build()?)
}

/// Run `work` with a spinner saying `what` on stderr, on a terminal only: a
/// plugin's first compile can take seconds (an 18 MB Python component:
/// 7-15 s), which should not look like a hang.
pub fn with_spinner<T>(what: &str, work: impl FnOnce() -> T) -> T {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return work();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!(
        "{what} (the first time takes longer; it is cached)"
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = work();
    spinner.finish_and_clear();
    result
}
