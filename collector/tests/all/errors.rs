//! Errors a person running `sluice-collector` reads: the path and the cause.

use std::process::Command;

fn collector(db: &std::path::Path) -> (bool, String) {
    let output = Command::new(crate::common::collector_bin())
        .args(["--listen", "127.0.0.1:0", "--token", "a=ta", "--db"])
        .arg(db)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_database_in_a_folder_that_is_a_file_names_the_path_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let db = file.join("sub").join("c.db");
    let (ok, stderr) = collector(&db);
    assert!(!ok);
    assert!(stderr.contains(&db.display().to_string()), "{stderr}");
    assert!(stderr.contains("Not a directory"), "{stderr}");
}

#[test]
fn a_database_that_cannot_be_opened_names_the_path_and_the_cause() {
    // A folder where the file should be (root ignores permissions, so an
    // unwritable folder would not fail here).
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = collector(dir.path());
    assert!(!ok);
    assert!(
        stderr.contains(&dir.path().display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("unable to open database file"), "{stderr}");

    let foreign = dir.path().join("other.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE mine(x);")
        .unwrap();
    let (ok, stderr) = collector(&foreign);
    assert!(!ok);
    assert!(
        stderr.contains(&foreign.display().to_string())
            && stderr.contains("not a Sluice collector database"),
        "{stderr}"
    );
}

#[test]
fn a_zero_limit_is_refused_naming_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(crate::common::collector_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "a=ta",
            "--max-connections",
            "0",
            "--db",
        ])
        .arg(dir.path().join("c.db"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-connections"), "{stderr}");
}

/// The collector's stderr when started with `--tokens` holding `text`,
/// and the tokens file's path.
fn with_tokens_file(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.txt");
    std::fs::write(&file, text).unwrap();
    let output = Command::new(crate::common::collector_bin())
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&file)
        .arg("--db")
        .arg(dir.path().join("c.db"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    (
        String::from_utf8_lossy(&output.stderr).into_owned(),
        file.display().to_string(),
    )
}

#[test]
fn a_bad_tokens_file_line_is_one_message_naming_the_file_the_line_and_the_cause_once() {
    let cases = [
        (
            "# devices\na=ta\nb/c=tb\n",
            "line 3",
            "has the character '/'",
        ),
        ("a=ta\n\nno-delimiter\n", "line 3", "expected DEVICE=TOKEN"),
        ("a=same\nb=same\n", "line 2", "have the same token"),
    ];
    for (text, line, cause) in cases {
        let (stderr, file) = with_tokens_file(text);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("tokens file {file} {line}: ")),
            "{stderr}"
        );
        assert_eq!(stderr.matches(cause).count(), 1, "the cause once: {stderr}");
    }
    // A file that cannot be read: its path and the OS's reason, once.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let output = Command::new(crate::common::collector_bin())
        .args(["--listen", "127.0.0.1:0", "--tokens"])
        .arg(&missing)
        .arg("--db")
        .arg(dir.path().join("c.db"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
}
