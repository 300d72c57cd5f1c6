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
