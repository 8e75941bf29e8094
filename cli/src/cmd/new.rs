//! `sluice plugin new`: a plugin project that builds and passes its own test
//! as written, in Rust, Python, JavaScript or C, for either world.
//!
//! The templates live in `cli/templates/plugin/` and are compiled into the
//! binary. The same sample inputs and the same expected output serve every
//! language: the three templates do the same thing, so their results are
//! equal by construction, and CI checks it.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the `sluice-guest` crate.
    Rust,
    /// Python, built with componentize-py (pinned).
    Python,
    /// JavaScript, built with jco / ComponentizeJS (pinned).
    Js,
    /// C, built with clang for WASI and wit-bindgen's C bindings (pinned).
    C,
}

/// The plugin's world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// Raw input bytes in, tensors out.
    Preprocessor,
    /// Model outputs in, a result document out.
    Postprocessor,
}

/// One file of a template: where it goes, its text, and for which language
/// and world (`None`: all).
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    lang: Option<Lang>,
    world: Option<World>,
    executable: bool,
}

macro_rules! file {
    ($path:literal, $template:literal, $lang:expr, $world:expr) => {
        file!($path, $template, $lang, $world, false)
    };
    ($path:literal, $template:literal, $lang:expr, $world:expr, $exec:expr) => {
        TemplateFile {
            path: $path,
            text: include_str!(concat!("../../templates/plugin/", $template)),
            lang: $lang,
            world: $world,
            executable: $exec,
        }
    };
}

use Lang::{C, Js, Python, Rust};
use World::{Postprocessor as Post, Preprocessor as Pre};

const FILES: &[TemplateFile] = &[
    file!("README.md", "common/README.md", None, None),
    file!("sluice.toml", "common/sluice.toml", None, None),
    file!("test.sh", "common/test.sh", None, None, true),
    file!(".gitignore", "common/gitignore", None, None),
    file!(
        "sample/1-readings.txt",
        "common/sample-preprocessor/1-readings.txt",
        None,
        Some(Pre)
    ),
    file!(
        "sample/2-not-a-number.txt",
        "common/sample-preprocessor/2-not-a-number.txt",
        None,
        Some(Pre)
    ),
    file!(
        "expected.jsonl",
        "common/expected.preprocessor.jsonl",
        None,
        Some(Pre)
    ),
    file!(
        "sample/1-scores.json",
        "common/sample-postprocessor/1-scores.json",
        None,
        Some(Post)
    ),
    file!(
        "sample/2-wrong-name.json",
        "common/sample-postprocessor/2-wrong-name.json",
        None,
        Some(Post)
    ),
    file!(
        "expected.jsonl",
        "common/expected.postprocessor.jsonl",
        None,
        Some(Post)
    ),
    file!("Cargo.toml", "rust/Cargo.toml", Some(Rust), None),
    file!("build.sh", "rust/build.sh", Some(Rust), None, true),
    file!(
        "options.json",
        "rust/options.preprocessor.json",
        Some(Rust),
        Some(Pre)
    ),
    file!(
        "options.json",
        "rust/options.postprocessor.json",
        Some(Rust),
        Some(Post)
    ),
    file!(
        "src/lib.rs",
        "rust/src/lib.preprocessor.rs",
        Some(Rust),
        Some(Pre)
    ),
    file!(
        "src/lib.rs",
        "rust/src/lib.postprocessor.rs",
        Some(Rust),
        Some(Post)
    ),
    // Python and JavaScript build exactly as the examples do.
    file!(
        "build.sh",
        "../../../examples/plugins/classify-python/build.sh",
        Some(Python),
        None,
        true
    ),
    file!(
        "app.py",
        "python/app.preprocessor.py",
        Some(Python),
        Some(Pre)
    ),
    file!(
        "app.py",
        "python/app.postprocessor.py",
        Some(Python),
        Some(Post)
    ),
    file!(
        "build.sh",
        "../../../examples/plugins/classify-js/build.sh",
        Some(Js),
        None,
        true
    ),
    file!(
        "package.json",
        "../../../examples/plugins/classify-js/package.json",
        Some(Js),
        None
    ),
    file!(
        "package-lock.json",
        "../../../examples/plugins/classify-js/package-lock.json",
        Some(Js),
        None
    ),
    file!(
        "plugin.js",
        "js/plugin.preprocessor.js",
        Some(Js),
        Some(Pre)
    ),
    file!(
        "plugin.js",
        "js/plugin.postprocessor.js",
        Some(Js),
        Some(Post)
    ),
    file!("build.sh", "c/build.sh", Some(C), None, true),
    file!("config.h", "c/config.h", Some(C), None),
    file!("plugin.c", "c/plugin.preprocessor.c", Some(C), Some(Pre)),
    file!("plugin.c", "c/plugin.postprocessor.c", Some(C), Some(Post)),
];

/// The line of the shared build scripts that names the world (the examples
/// are postprocessors).
const BUILD_WORLD_LINE: &str = "\nworld=postprocessor\n";

/// The WIT a project builds against: at `wit/` for Python, JavaScript and
/// C, inside the guest SDK's copy for Rust.
const WIT: &[(&str, &str)] = &[
    ("wit/sluice.wit", include_str!("../../../wit/sluice.wit")),
    (
        "wit/deps/wasi-nn/wasi-nn.wit",
        include_str!("../../../wit/deps/wasi-nn/wasi-nn.wit"),
    ),
];

/// Where a Rust project keeps its copy of the guest SDK. A copy rather than a
/// path into a Sluice checkout or a registry: the project builds wherever it
/// is moved or shared, offline, with the SDK this `sluice` speaks.
const SDK_DIR: &str = "vendor/sluice-guest";

/// The guest SDK's files, besides its WIT: exactly what `cargo package`
/// puts in the published crate (a test compares the two).
const SDK: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../guest-sdk/Cargo.toml")),
    ("README.md", include_str!("../../../guest-sdk/README.md")),
    ("src/lib.rs", include_str!("../../../guest-sdk/src/lib.rs")),
    (
        "src/bindings.rs",
        include_str!("../../../guest-sdk/src/bindings.rs"),
    ),
    ("src/log.rs", include_str!("../../../guest-sdk/src/log.rs")),
    (
        "src/options.rs",
        include_str!("../../../guest-sdk/src/options.rs"),
    ),
    (
        "src/tensor.rs",
        include_str!("../../../guest-sdk/src/tensor.rs"),
    ),
];

/// The longest plugin name (it becomes a crate, package and file name).
const MAX_NAME: usize = 64;

/// `sluice plugin new`: write the project for plugin `name` into `dir`
/// (default `./NAME`), which must not exist or be empty.
pub fn run(name: &str, lang: Lang, world: World, dir: Option<PathBuf>) -> anyhow::Result<()> {
    check_name(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty: choose another --dir",
            dir.display()
        );
    }
    let vars = variables(name, lang, world);
    let mut written = Vec::new();
    for file in FILES
        .iter()
        .filter(|f| f.lang.is_none_or(|l| l == lang) && f.world.is_none_or(|w| w == world))
    {
        write(
            &dir,
            file.path,
            &substitute(file.text, &vars),
            file.executable,
        )?;
        written.push(file.path);
    }
    if lang == Rust {
        for (path, text) in SDK.iter().chain(WIT) {
            write(&dir.join(SDK_DIR), path, text, false)?;
        }
    } else {
        for (path, text) in WIT {
            write(&dir, path, text, false)?;
            written.push(path);
        }
    }
    println!("created {} ({lang:?} {world:?}):", dir.display());
    for path in written {
        println!("  {path}");
    }
    if lang == Rust {
        println!(
            "  {SDK_DIR}/ (the guest SDK, sluice-guest {})",
            sdk_version()
        );
    }
    println!("next: cd {} && ./test.sh", dir.display());
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "`{name}`: a plugin name is 1 to {MAX_NAME} lower-case letters, digits and `-`, \
             starting with a letter (it becomes a package and a file name)"
        );
    }
    Ok(())
}

/// The guest SDK's version, from its manifest's first `version = "…"` line
/// (the SDK follows the WIT package's version, not the CLI's).
fn sdk_version() -> &'static str {
    SDK[0]
        .1
        .lines()
        .find_map(|line| line.strip_prefix("version = \""))
        .and_then(|rest| rest.split('"').next())
        .expect("guest-sdk/Cargo.toml names its version")
}

fn variables(name: &str, lang: Lang, world: World) -> Vec<(&'static str, String)> {
    let (world_name, role, config) = match world {
        Pre => (
            "preprocessor",
            "preprocess",
            "output = \"input\" # the model input the tensor is for\n# length = 3       # refuse inputs with another count of numbers",
        ),
        Post => (
            "postprocessor",
            "postprocess",
            "input = \"output\" # the model output holding the scores\n# labels = [\"cat\", \"dog\", \"bird\", \"fish\"]",
        ),
    };
    let (lang_title, source, requirements, memory_mb, native_tests, ignore) = match lang {
        Rust => (
            "Rust",
            "src/lib.rs",
            "Needs Rust (rustup); it adds the `wasm32-wasip2` target if missing. \
             `vendor/sluice-guest/` is the guest SDK this project was made with.",
            "32",
            "cargo test --quiet --lib --manifest-path \"$here/Cargo.toml\" # the logic, natively",
            "target/",
        ),
        Python => (
            "Python",
            "app.py",
            "Needs Python 3.10+ with pip; it installs componentize-py (pinned) into `.toolchain/` on first use.",
            "64",
            "",
            ".toolchain/\n__pycache__/",
        ),
        Js => (
            "JavaScript",
            "plugin.js",
            "Needs Node.js 18+ with npm; it installs jco (pinned) into `.toolchain/` on first use.",
            "64",
            "",
            ".toolchain/\nnode_modules/",
        ),
        C => (
            "C",
            "plugin.c",
            "Needs clang with a WASI sysroot (Debian/Ubuntu: `apt install clang lld wasi-libc \
             libclang-rt-dev-wasm32`, or the WASI SDK with `WASI_SDK_PATH`) and Rust (rustup), \
             whose `wasm-component-ld` links the component; it installs wit-bindgen (pinned) \
             into `.toolchain/` on first use. `config.h` reads the JSON configuration.",
            "16",
            "",
            ".toolchain/\n.build/",
        ),
    };
    let what = match world {
        Pre => "It turns text holding numbers into an `fp32` tensor `[1, N]`.",
        Post => "It turns a score tensor into the best class as JSON.",
    };
    vec![
        ("name", name.to_owned()),
        ("crate", name.replace('-', "_")),
        ("world", world_name.to_owned()),
        ("role", role.to_owned()),
        ("config", config.to_owned()),
        ("lang_title", lang_title.to_owned()),
        ("source", source.to_owned()),
        ("what", what.to_owned()),
        ("requirements", requirements.to_owned()),
        ("memory_mb", memory_mb.to_owned()),
        ("native_tests", native_tests.to_owned()),
        ("ignore", ignore.to_owned()),
        (
            "sdk",
            format!(
                "{{ version = \"{}\", path = \"{SDK_DIR}\" }}",
                sdk_version()
            ),
        ),
    ]
}

/// `text` with every `{{key}}` replaced, and the build scripts' world.
fn substitute(text: &str, vars: &[(&str, String)]) -> String {
    let text = vars.iter().fold(text.to_owned(), |text, (key, value)| {
        text.replace(&format!("{{{{{key}}}}}"), value)
    });
    let world = &vars.iter().find(|(k, _)| *k == "world").expect("a world").1;
    text.replace(BUILD_WORLD_LINE, &format!("\nworld={world}\n"))
}

fn write(dir: &Path, path: &str, text: &str, executable: bool) -> anyhow::Result<()> {
    let path = dir.join(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}
