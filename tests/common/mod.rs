//! What the integration tests share: a scratch folder that is removed when the test ends.

use std::path::Path;

/// A fresh folder under the system temp dir, deleted on drop, so test runs leave nothing behind
/// (a pretraining test writes a few hundred MB of checkpoints).
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

/// `scratch("resume")` in tests/pretrain.rs → `/tmp/lejepa-pretrain-resume-XXXXXX/`, empty.
pub fn scratch(name: &str) -> Scratch {
    let prefix = format!("lejepa-{}-{name}-", env!("CARGO_CRATE_NAME"));
    Scratch(tempfile::Builder::new().prefix(&prefix).tempdir().expect("cannot create a scratch folder"))
}

/// The project's Python (`.venv`, made by `scripts/setup --python`) if it can import `modules`
/// (e.g. "timm, safetensors"); else None, saying on stderr that `skipped` is skipped (outside CI only).
#[allow(dead_code)] // not every test file compares against Python
pub fn python_with(modules: &str, skipped: &str) -> Option<std::path::PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let import = format!("import {modules}");
    if std::process::Command::new(&python).args(["-c", &import]).output().is_ok_and(|o| o.status.success()) {
        Some(python)
    } else {
        // In CI (.ci/run sets CI) a missing dependency is a failure, never a silent skip.
        assert!(std::env::var_os("CI").is_none(), "{skipped}: .venv cannot import {modules}; CI must run every cross-check (scripts/setup --python)");
        eprintln!("skipping {skipped}: .venv cannot import {modules} (run scripts/setup --python)");
        None
    }
}

/// How long any child process of a test may run: a hung rank, loader or Python check fails its test
/// with a message instead of holding CI for its whole budget.
#[allow(dead_code)]
pub const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// `Command::output` with a deadline: past it the child is killed and the test fails, naming the command.
#[allow(dead_code)]
pub trait OutputWithin {
    fn output_within(&mut self, limit: std::time::Duration) -> std::process::Output;
}

impl OutputWithin for std::process::Command {
    fn output_within(&mut self, limit: std::time::Duration) -> std::process::Output {
        use std::process::Stdio;
        let what = format!("{self:?}");
        let child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        wait_within(child.unwrap_or_else(|e| panic!("{what}: cannot start: {e}")), limit, &what)
    }
}

/// Waits for `child` (stdout and stderr piped, or not captured) for at most `limit`; past it, kills it and
/// fails the test naming `what` and quoting the end of its stderr.
#[allow(dead_code)]
pub fn wait_within(mut child: std::process::Child, limit: std::time::Duration, what: &str) -> std::process::Output {
    use std::io::Read;
    // Read both pipes while waiting: a child blocked on a full pipe would otherwise look hung.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        pipe.map(|mut pipe| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child process") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // Its own pipes close with it (a grandchild holding them would block this join: not joined then).
            let tail = stderr
                .filter(|handle| handle.is_finished() || { std::thread::sleep(std::time::Duration::from_secs(1)); handle.is_finished() })
                .map(|handle| String::from_utf8_lossy(&handle.join().unwrap_or_default()).into_owned())
                .unwrap_or_default();
            let tail: String = tail.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("{what}: still running after {} s, killed (hung?); the end of its stderr:\n{tail}", limit.as_secs());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let collect = |handle: Option<std::thread::JoinHandle<Vec<u8>>>| handle.map(|h| h.join().unwrap_or_default()).unwrap_or_default();
    std::process::Output { status, stdout: collect(stdout), stderr: collect(stderr) }
}
