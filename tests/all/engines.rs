//! Inference engines: `engine = "auto"` and, in builds with the
//! `onnxruntime` feature (CI: `cargo test -p sluice --features onnxruntime
//! --test all engines`), the onnxruntime engine on the library of the PyPI
//! wheel the benchmarks' peer uses: agreement with tract on every bundled
//! model, the digits pipeline's accuracy, guests' `wasi:nn` calls through its
//! scheduler, the automatic choice remembered, and a missing library named.

use crate::common::*;
use sluice_agent::infer::InputShapes;
use sluice_agent::schedule::{BatchConfig, ModelSource, start_model};

/// A configuration's `engine = "auto"` starts on the reference engine in a
/// build that has only tract, and says which engine that was.
#[test]
fn auto_runs_every_engine_of_the_build_and_says_which_it_kept() {
    #[cfg(feature = "onnxruntime")]
    onnxruntime::library();
    let bytes = std::fs::read(repo_root().join("models/digits/digits_mlp.onnx")).unwrap();
    let source = ModelSource {
        name: "digits",
        bytes: &bytes,
        engine: "auto",
        shapes: &InputShapes::new(),
    };
    let scheduler = start_model(&source, BatchConfig::default(), None).unwrap();
    let choice = scheduler.engine_choice().expect("auto says how it chose");
    assert_eq!(choice.engine, scheduler.model().engine());
    let tried: Vec<&str> = choice.trials.iter().map(|t| t.engine.as_str()).collect();
    assert_eq!(tried, sluice_agent::infer::ENGINES);
    for trial in &choice.trials {
        assert!(trial.micros_per_item.is_some_and(|m| m > 0.0), "{trial:?}");
        assert_eq!(trial.problem, None);
    }
}

/// A build without onnxruntime refuses a configuration asking for it, and
/// says which build has it.
#[cfg(not(feature = "onnxruntime"))]
#[test]
fn a_build_without_onnxruntime_refuses_it_naming_the_feature() {
    let text = "[models.m]\npath = \"m.onnx\"\nengine = \"onnxruntime\"\n";
    let error = sluice_agent::config::Config::parse(text, std::path::Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("models.m.engine") && error.contains("--features onnxruntime"),
        "{error}"
    );
}

#[cfg(feature = "onnxruntime")]
mod onnxruntime {
    use super::*;
    use sluice_agent::infer::{Model, engine};
    use sluice_agent::pipeline::process_all;
    use sluice_agent::plugin::{EngineOptions, PluginHost, PluginKind, scheduler_nn};
    use sluice_agent::runtime::Runtime;
    use sluice_agent::schedule::{AGREEMENT_TOLERANCE, ExecutionCache, ExecutionMode, Scheduler};
    use sluice_agent::types::Tensor;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::{Arc, OnceLock};

    /// libonnxruntime from the PyPI wheel pinned for the benchmarks' peer
    /// (`benches/peer/requirements.txt`), downloaded once into
    /// `target/plugin-toolchains` (pip in a venv; only the shared library is
    /// kept), then given to the engine for this test process.
    pub(super) fn library() -> &'static PathBuf {
        static LIBRARY: OnceLock<PathBuf> = OnceLock::new();
        LIBRARY.get_or_init(|| {
            let requirements =
                std::fs::read_to_string(repo_root().join("benches/peer/requirements.txt")).unwrap();
            let version = requirements
                .lines()
                .find_map(|l| l.trim().strip_prefix("onnxruntime=="))
                .expect("onnxruntime pinned in benches/peer/requirements.txt")
                .trim()
                .to_owned();
            let dir = repo_root().join(format!("target/plugin-toolchains/onnxruntime-{version}"));
            let library = dir.join(format!("libonnxruntime.so.{version}"));
            if !library.exists() {
                std::fs::create_dir_all(&dir).unwrap();
                let script = format!(
                    r#"set -e
python3 -m venv "$1/venv"
"$1/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$1/wheel" onnxruntime=={version}
python3 - "$1" <<'PY'
import glob, sys, zipfile
dir = sys.argv[1]
with zipfile.ZipFile(glob.glob(dir + "/wheel/onnxruntime-*.whl")[0]) as wheel:
    member = next(n for n in wheel.namelist() if "/capi/libonnxruntime.so." in n)
    open(dir + "/libonnxruntime.so.{version}.partial", "wb").write(wheel.read(member))
PY
mv "$1/libonnxruntime.so.{version}.partial" "$1/libonnxruntime.so.{version}"
"#
                );
                let status = Command::new("bash")
                    .args(["-c", &script, "bash"])
                    .arg(&dir)
                    .status()
                    .unwrap();
                assert!(
                    status.success() && library.exists(),
                    "cannot get libonnxruntime {version} from PyPI (python3 with venv and pip needed)"
                );
            }
            sluice_agent::infer::use_native_libraries(Some(&library));
            library
        })
    }

    fn load(engine_name: &str, model: &str, shapes: &InputShapes) -> Arc<dyn Model> {
        library();
        let bytes = std::fs::read(repo_root().join("models").join(model)).unwrap();
        engine(engine_name)
            .unwrap()
            .load(model, &bytes, shapes)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Inputs of `n` items with fixed pseudo-random values in [-1, 1).
    fn inputs(model: &dyn Model, n: usize) -> Vec<Tensor> {
        model
            .inputs()
            .iter()
            .map(|spec| {
                let mut shape: Vec<usize> = spec.shape.iter().map(|d| d.unwrap_or(n)).collect();
                shape[0] = n;
                let count: usize = shape.iter().product();
                let values: Vec<f32> = (0..count)
                    .map(|i| ((i * 7919 + 13) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                Tensor::from_f32(&spec.name, shape, &values)
            })
            .collect()
    }

    #[test]
    fn onnxruntime_agrees_with_tract_on_every_bundled_model() {
        let text = InputShapes::from([("x".to_owned(), vec![3, 48, 192])]);
        for (model, shapes) in [
            ("digits/digits_mlp.onnx", InputShapes::new()),
            ("anomaly/autoencoder.onnx", InputShapes::new()),
            ("text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx", text),
        ] {
            let tract = load("tract", model, &shapes);
            let ort = load("onnxruntime", model, &shapes);
            assert_eq!(ort.engine(), "onnxruntime");
            assert_eq!(ort.inputs(), tract.inputs(), "{model}");
            assert_eq!(ort.outputs().len(), tract.outputs().len(), "{model}");
            for batch in [1, 4] {
                let input = inputs(tract.as_ref(), batch);
                let want = tract
                    .plan(batch)
                    .unwrap()
                    .run(input.clone(), false)
                    .unwrap();
                for intra_op in [false, true] {
                    let got = ort
                        .plan(batch)
                        .unwrap()
                        .run(input.clone(), intra_op)
                        .unwrap();
                    for (w, g) in want.iter().zip(&got) {
                        assert_eq!(w.shape, g.shape, "{model} batch {batch}");
                        let (w, g) = (w.f32_values().unwrap(), g.f32_values().unwrap());
                        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                        let worst = w
                            .iter()
                            .zip(&g)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0f32, f32::max);
                        assert!(
                            (worst / scale) as f64 <= AGREEMENT_TOLERANCE,
                            "{model} batch {batch} intra-op {intra_op}: differs by {worst} (scale {scale})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn runs_from_many_threads_at_once_each_get_their_own_answer() {
        // Chunk lanes run at once, each on a session of its own (made on
        // demand): every run must still get the outputs of its own input.
        let model = load("onnxruntime", "digits/digits_mlp.onnx", &InputShapes::new());
        let plan = model.plan(1).unwrap();
        let items: Vec<Tensor> = (0..16)
            .map(|i| {
                let values: Vec<f32> = (0..64).map(|j| ((i * 64 + j) % 17) as f32 / 16.0).collect();
                Tensor::from_f32("input", vec![1, 64], &values)
            })
            .collect();
        let alone: Vec<Vec<f32>> = items
            .iter()
            .map(|t| {
                plan.run(vec![t.clone()], false).unwrap()[0]
                    .f32_values()
                    .unwrap()
            })
            .collect();
        let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = items
                .iter()
                .map(|t| {
                    let plan = &plan;
                    scope.spawn(move || {
                        plan.run(vec![t.clone()], false).unwrap()[0]
                            .f32_values()
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(alone, together);
    }

    #[test]
    fn the_digits_pipeline_on_onnxruntime_reaches_the_models_accuracy() {
        library();
        let path = repo_root().join("examples/digits/sluice.toml");
        let mut config = sluice_agent::config::Config::load(&path).unwrap();
        config.runtime.cache_dir = Some(shared_cache_dir());
        for model in config.models.values_mut() {
            model.engine = "onnxruntime".into();
            model.batching.execution = ExecutionMode::Stacked;
        }
        let runtime = Runtime::start(config).unwrap();
        let pipeline = runtime.pipeline(None).unwrap();
        assert_eq!(pipeline.scheduler().model().engine(), "onnxruntime");
        let (items, labels) = digit_items();
        let outcomes = process_all(pipeline, items.clone(), &|_| {});
        let correct = outcomes
            .iter()
            .zip(&labels)
            .filter(|(o, l)| {
                let body = &o.result.as_ref().unwrap_or_else(|e| panic!("{e}")).body;
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["label"] == **l
            })
            .count();
        // The reference accuracy was measured with onnxruntime in Python.
        let expected: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join("models/digits/expected.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(correct as u64, expected["correct"].as_u64().unwrap());
    }

    #[test]
    fn guests_wasi_nn_calls_reach_an_onnxruntime_model_through_its_scheduler() {
        let model = load("onnxruntime", "digits/digits_mlp.onnx", &InputShapes::new());
        let config = BatchConfig {
            execution: ExecutionMode::Stacked,
            ..BatchConfig::default()
        };
        let scheduler = Scheduler::start(model, config).unwrap();
        let schedulers = BTreeMap::from([("digits".to_owned(), scheduler.clone())]);
        let host =
            PluginHost::with_nn(&EngineOptions::default(), scheduler_nn(&schedulers, 0)).unwrap();
        let guest = crate::common::load(
            &host,
            "nn-guest",
            "nn-guest",
            PluginKind::Preprocessor,
            "[plugins.p.config]\nmodel = \"digits\"\ninput = \"input\"\n",
        );
        let input = inputs(scheduler.model().as_ref(), 1).remove(0);
        let direct = scheduler.infer(vec![input.clone()]).unwrap();
        let before = scheduler.stats().items;
        let through_guest = guest
            .preprocess(&[item("x", "application/octet-stream", input.data)])
            .remove(0)
            .unwrap();
        assert_eq!(
            scheduler.stats().items,
            before + 1,
            "the guest's call went through the scheduler"
        );
        assert_eq!(through_guest[0].f32_values(), direct[0].f32_values());
    }

    #[test]
    fn auto_keeps_the_fastest_engine_that_agrees_and_remembers_it() {
        library();
        let bytes = std::fs::read(
            repo_root().join("models/text-direction/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        )
        .unwrap();
        let shapes = InputShapes::from([("x".to_owned(), vec![3, 48, 192])]);
        let source = ModelSource {
            name: "text-direction",
            bytes: &bytes,
            engine: "auto",
            shapes: &shapes,
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = ExecutionCache::new(dir.path(), &"cd".repeat(32));
        let config = BatchConfig {
            max_batch_size: 4,
            ..BatchConfig::default()
        };
        let first = start_model(&source, config.clone(), Some(&cache)).unwrap();
        let choice = first.engine_choice().unwrap().clone();
        assert_eq!(first.model().engine(), choice.engine);
        let [tract, ort] = &choice.trials[..] else {
            panic!("{choice:?}")
        };
        assert_eq!(
            (tract.engine.as_str(), ort.engine.as_str()),
            ("tract", "onnxruntime")
        );
        let difference = ort.difference.expect("compared with tract");
        assert!(difference <= AGREEMENT_TOLERANCE, "{choice:?}");
        assert_eq!(ort.problem, None);
        let fastest = if ort.micros_per_item < tract.micros_per_item {
            "onnxruntime"
        } else {
            "tract"
        };
        assert_eq!(choice.engine, fastest, "{choice:?}");
        let remembered = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("engine-")
            })
            .count();
        assert_eq!(remembered, 1);
        drop(first);
        // A restart reuses the choice: same engine, same trials, no new
        // measurement (the numbers are the remembered ones to the last bit).
        let again = start_model(&source, config, Some(&cache)).unwrap();
        assert_eq!(again.engine_choice(), Some(&choice));
        assert_eq!(again.model().engine(), choice.engine);
    }

    #[test]
    fn without_its_library_onnxruntime_is_named_and_auto_keeps_tract() {
        let model = repo_root().join("models/digits/digits_mlp.onnx");
        let missing = "/nonexistent/libonnxruntime.so.1.32.0";
        let inspect = |engine: &str| {
            Command::new(crate::common::sluice_bin())
                .args([
                    "model",
                    "inspect",
                    "--max-batch-size",
                    "2",
                    "--engine",
                    engine,
                ])
                .arg(&model)
                .env("ORT_DYLIB_PATH", missing)
                .output()
                .unwrap()
        };
        let out = inspect("onnxruntime");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(missing) && stderr.contains("onnxruntime"),
            "{stderr}"
        );
        let out = inspect("auto");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("engine:     tract"), "{stdout}");
        let ort_line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("onnxruntime"))
            .unwrap();
        assert!(
            ort_line.contains("left out") && ort_line.contains(missing),
            "{stdout}"
        );
    }
}
