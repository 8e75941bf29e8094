//! `sluice model profile` writes a profile bound to the model, which the
//! agent uses.

use super::example_config;
use crate::common::repo_root;
use sluice_agent::drift::Profile;

#[test]
fn sluice_model_profile_writes_a_profile_bound_to_the_model_that_the_agent_uses() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("digits.profile.json");
    let output = std::process::Command::new(crate::common::sluice_bin())
        .args(["model", "profile", "--config"])
        .arg(repo_root().join("examples/digits/sluice.toml"))
        .args(["--pipeline", "digits", "--output"])
        .arg(&profile)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg(repo_root().join("models/digits/heldout"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The folder also holds labels.csv: not an image, left out, and said.
    assert!(stdout.contains("450 of 451 reference item(s)"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 item(s) failed"), "{stderr}");
    let (profile, _) = Profile::read(&profile).unwrap();
    let config = example_config("digits", dir.path());
    assert_eq!(
        profile.model_sha256,
        config.models["digits"].sha256.clone().unwrap()
    );
    assert_eq!((profile.items, profile.pipeline.as_str()), (450, "digits"));
    // 64 pixels, the class and the confidence; deciles make at most 10 bins.
    assert_eq!(profile.features.len(), 66);
    assert!(
        profile
            .features
            .iter()
            .all(|f| f.counts.len() <= 10 && f.counts.iter().sum::<u64>() == 450)
    );
    let class = profile
        .features
        .iter()
        .find(|f| f.name == "output.probabilities.class")
        .unwrap();
    assert_eq!(class.counts.len(), 10);
    // The default place is beside the model.
    assert_eq!(
        config.models["digits"].profile_path(),
        repo_root().join("models/digits/digits_mlp.onnx.profile.json")
    );
}
