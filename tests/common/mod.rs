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
