//! A server binary of the workspace run as a child process (the real
//! `sluice-collector`, as a fleet runs it), found on the address it prints.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A child process that printed the `http://` address it listens on in its
/// first line of output; killed when dropped. Its further output is read
/// (and dropped) so that it never blocks on a full pipe.
pub struct Listening {
    child: Child,
    url: String,
}

impl Listening {
    /// Spawn `command` and read its address. Panics, naming the command,
    /// when it exits or prints no address first.
    pub fn spawn(command: &mut Command) -> Listening {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(url) = first
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(|w| w.trim_end_matches(',').to_owned())
        else {
            let _ = child.kill();
            panic!("{command:?} printed no address first: {first:?}");
        };
        std::thread::spawn(move || for _ in lines {});
        Listening { child, url }
    }

    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process, to signal or wait for.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
