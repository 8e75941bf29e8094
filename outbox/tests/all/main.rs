//! Model-based test of the outbox, in the style of Vector's disk-buffer
//! model tests: random sequences of operations (accepting inputs, keyed or
//! not; completing them, also twice; forming, acknowledging and splitting
//! batches; requeueing, expiring; crashes; a full disk) run against the
//! real outbox and against a simple in-memory model (`model.rs`), and the
//! two are compared after every step (`view.rs`, `runner.rs`).
//!
//! `PROPTEST_CASES=5000 cargo test -p sluice-outbox --test all model` runs
//! longer (see `docs/fuzzing.md`).

mod actions;
mod model;
mod regressions;
mod runner;
mod view;

use proptest::prelude::*;

/// Cases: `PROPTEST_CASES` if set (longer runs), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        // A case takes milliseconds: shrink far enough for a short case.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Whatever the operations, the outbox holds what the model holds, and
    /// nothing accepted is lost or duplicated.
    #[test]
    fn the_outbox_behaves_as_its_model(
        config in actions::outbox_config(),
        actions in proptest::collection::vec(actions::action(), 1..60),
    ) {
        runner::run(config, &actions).map_err(TestCaseError::fail)?;
    }
}
