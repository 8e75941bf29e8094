//! The `sluice` command: parses arguments and prints; the work is in the
//! `sluice-agent` library.

mod cmd;

use clap::{Parser, Subcommand};
use sluice_agent::config::PluginSource;
use std::path::PathBuf;

/// Sluice runs sandboxed WebAssembly pre- and post-processing plugins around
/// native ONNX inference on edge devices, and keeps results on the device
/// until they are delivered upstream.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info`, `sluice=debug`; RUST_LOG if not given. The
    /// default shows warnings, and at `info` what plugins granted `stdio`
    /// print (the target `plugin_output`; rate-limited per plugin).
    #[arg(
        long,
        global = true,
        env = "RUST_LOG",
        default_value = "warn,plugin_output=info"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole path on bundled defaults: the digits agent ingests its
    /// held-out images, infers, stores results in its outbox and syncs them
    /// to a collector (sluice-collector) on loopback; prints what was
    /// processed, stored and delivered.
    Demo {
        /// The demo's configuration (default: examples/digits/sluice.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the demo keeps its state (default: the configuration's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep the collector running after the run, with its fleet
        /// dashboard, until Ctrl-C.
        #[arg(long)]
        dashboard: bool,
    },
    /// Run a pipeline once over files or folders; print JSON Lines results in input order.
    Infer {
        #[arg(long)]
        config: PathBuf,
        /// Which pipeline, when the configuration has several.
        #[arg(long)]
        pipeline: Option<String>,
        /// Input files or folders.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Keep state (the compiled-plugin cache) here instead of the configuration's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run the device agent: ingest from a folder and HTTP, infer, keep
    /// results in the outbox, sync them upstream; SIGTERM drains and exits.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect the device's outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with ONNX models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Signed, versioned bundles of a pipeline: make keys, build, sign,
    /// verify, inspect.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Make a signing key: FILE (secret, readable by its owner only) and
    /// FILE.pub (the public key devices pin).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build an unsigned bundle of one pipeline of a configuration: its
    /// plugins, granted folders, model, drift profile, configuration, and
    /// a validation set with the results this build gives for it.
    Build {
        #[arg(long)]
        config: PathBuf,
        /// Which pipeline, when the configuration has several.
        #[arg(long)]
        pipeline: Option<String>,
        /// The bundle's version: above every version built before under its name.
        #[arg(long)]
        version: u64,
        /// How long devices may accept it, e.g. `90d`, `12h`.
        #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
        expires_in: std::time::Duration,
        /// Input files or folders of the validation set.
        #[arg(long = "validation")]
        validation: Vec<PathBuf>,
        /// How far the device's results may be from the expected ones
        /// (relative; absolute below 1).
        #[arg(long, default_value_t = 1e-4)]
        tolerance: f64,
        /// Per-item latency budget for the validation set on the device, ms.
        #[arg(long, default_value_t = 1000)]
        max_item_ms: u64,
        /// Keep state (the compiled-plugin cache) here instead of the configuration's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle (in place) with a key from `sluice bundle keygen`.
    Sign {
        #[arg(long)]
        key: PathBuf,
        bundle: PathBuf,
    },
    /// Check a bundle as a device would: signature by a trusted key, files,
    /// expiry, version, requirements. Exits non-zero naming the cause.
    Verify {
        /// A trusted public key (its text or a file holding it); repeat for several.
        #[arg(long = "trust")]
        trust: Vec<String>,
        /// The version installed on the device: the bundle must be above it.
        #[arg(long)]
        installed_version: Option<u64>,
        bundle: PathBuf,
    },
    /// Show a bundle's manifest and signers (nothing checked).
    Inspect {
        bundle: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Pending results, bytes, oldest, last sync, last error, drop counters.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Results the collector refused, kept aside: id, when, why.
    SetAside {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send the set-aside results again (once the collector that refused
    /// them was fixed): they go back to pending, under the outbox's cap.
    Requeue {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Show a model's inputs, outputs and operators, whether the engine
    /// supports them, and how the scheduler would run its batches (measured).
    Inspect {
        file: PathBuf,
        /// Dimensions after the batch axis of an input the model leaves open,
        /// e.g. `x=3,48,192`; repeat for several inputs.
        #[arg(long = "input-shape", value_parser = cmd::inspect::parse_input_shape)]
        input_shapes: Vec<(String, Vec<usize>)>,
        /// The engine to load it with (`auto`: measure every engine of this
        /// build and keep the fastest that agrees with tract). onnxruntime
        /// loads the library named by ORT_DYLIB_PATH.
        #[arg(long, default_value = sluice_agent::infer::DEFAULT_ENGINE)]
        engine: String,
        /// Largest batch to measure.
        #[arg(long, default_value_t = 32)]
        max_batch_size: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run reference data through a pipeline and write its model's drift
    /// profile (default: beside the model, `<model path>.profile.json`, or
    /// `models.NAME.profile`), bound to the model file's SHA-256.
    Profile {
        #[arg(long)]
        config: PathBuf,
        /// Which pipeline, when the configuration has several.
        #[arg(long)]
        pipeline: Option<String>,
        /// Reference input files or folders (as `sluice infer` takes them).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Write the profile here instead.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Keep state (the compiled-plugin cache) here instead of the configuration's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show a plugin's world, imports, exports and what it would be granted.
    Inspect {
        /// A `.wasm` component, or `bundled:NAME` for a plugin shipped in this binary.
        file: String,
        /// Show the grants this configuration gives to the plugin named by `--plugin`.
        #[arg(long, requires = "plugin")]
        config: Option<PathBuf>,
        /// The plugin's name in `--config`.
        #[arg(long, requires = "config")]
        plugin: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Keep compiled plugins here (without --config; default the
        /// machine's cache, `$XDG_CACHE_HOME/sluice` or `~/.cache/sluice`).
        #[arg(long, env = "SLUICE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// Call one plugin of a configuration on sample inputs, as one batch,
    /// under its limits and grants; print one JSON line per input. A
    /// preprocessor reads the files' bytes; a postprocessor reads JSON files
    /// `{"tensors": [{"name", "dtype", "shape", "data": [numbers]}]}`.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// The plugin's name in `--config` (needed when it has several).
        #[arg(long)]
        plugin: Option<String>,
        /// Input files or folders.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Keep state (the compiled-plugin cache) here instead of the configuration's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Start a plugin project that builds and passes its own test as written:
    /// source, build script, sample inputs, expected output, sluice.toml.
    New {
        /// The plugin's name (lower-case letters, digits, `-`).
        name: String,
        #[arg(long, value_enum)]
        lang: cmd::new::Lang,
        #[arg(long, value_enum)]
        world: cmd::new::World,
        /// Where to create it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the plugins shipped inside this binary.
    List,
    /// Compile every plugin of a configuration into its cache, so that a
    /// runtime-only build (no compiler) can load them.
    Compile {
        #[arg(long)]
        config: PathBuf,
        /// Use this data directory's cache instead of the configuration's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo { .. }) {
        // A command that prints and exits, piped into `head`, should stop
        // quietly when the reader goes away, as Unix tools do, not panic on
        // a failed print. (The agent and the demo keep Rust's default,
        // ignoring SIGPIPE: they write to sockets, where a closed peer is
        // an error to handle, not a reason to die.)
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of one signal, before
        // any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cmd::error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            config,
            data_dir,
            dashboard,
        } => cmd::demo::run(config, data_dir, dashboard),
        Command::Infer {
            config,
            pipeline,
            inputs,
            data_dir,
        } => cmd::infer::run(&config, pipeline.as_deref(), &inputs, data_dir),
        Command::Model(ModelCommand::Inspect {
            file,
            input_shapes,
            engine,
            max_batch_size,
            json,
        }) => cmd::inspect::model(
            &file,
            &engine,
            &input_shapes.into_iter().collect(),
            max_batch_size,
            json,
        ),
        Command::Model(ModelCommand::Profile {
            config,
            pipeline,
            inputs,
            output,
            data_dir,
        }) => cmd::profile::run(&config, pipeline.as_deref(), &inputs, output, data_dir),
        Command::Plugin(PluginCommand::Inspect {
            file,
            config,
            plugin,
            json,
            cache_dir,
        }) => cmd::plugin::inspect(
            &file,
            config.as_deref().zip(plugin.as_deref()),
            cache_dir.or_else(cmd::machine_cache_dir),
            json,
        ),
        Command::Plugin(PluginCommand::New {
            name,
            lang,
            world,
            dir,
        }) => cmd::new::run(&name, lang, world, dir),
        Command::Plugin(PluginCommand::Run {
            config,
            plugin,
            inputs,
            data_dir,
        }) => cmd::plugin::run(&config, plugin.as_deref(), &inputs, data_dir),
        Command::Run { config } => cmd::run::run(&config),
        Command::Outbox(OutboxCommand::Status { config, json }) => {
            cmd::run::outbox_status(&config, json)
        }
        Command::Outbox(OutboxCommand::SetAside { config, json }) => {
            cmd::run::outbox_set_aside(&config, json)
        }
        Command::Outbox(OutboxCommand::Requeue { config }) => cmd::run::outbox_requeue(&config),
        Command::Plugin(PluginCommand::Compile { config, data_dir }) => {
            cmd::plugin::compile(&config, data_dir)
        }
        Command::Bundle(BundleCommand::Keygen { out }) => cmd::bundle::keygen(&out),
        Command::Bundle(BundleCommand::Build {
            config,
            pipeline,
            version,
            expires_in,
            validation,
            tolerance,
            max_item_ms,
            data_dir,
            out,
        }) => cmd::bundle::build(&sluice_agent::bundle::BuildRequest {
            config,
            pipeline,
            version,
            expires_in,
            validation_inputs: validation,
            validation: sluice_bundle::Validation {
                tolerance,
                max_item_ms,
            },
            data_dir,
            out,
        }),
        Command::Bundle(BundleCommand::Sign { key, bundle }) => cmd::bundle::sign(&bundle, &key),
        Command::Bundle(BundleCommand::Verify {
            trust,
            installed_version,
            bundle,
        }) => cmd::bundle::verify(&bundle, &trust, installed_version),
        Command::Bundle(BundleCommand::Inspect { bundle, json }) => {
            cmd::bundle::inspect(&bundle, json)
        }
        Command::Plugin(PluginCommand::List) => {
            for name in sluice_agent::bundled::names() {
                println!("{}", PluginSource::Bundled(name.to_string()));
            }
            Ok(())
        }
    }
}
