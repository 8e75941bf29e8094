// Empty: only for the build-dependencies feature unification (see Cargo.toml).
fn main() {}
