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

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// `scratch("pretrain-resume")` → `/tmp/lejepa-pretrain-resume-XXXXXX/`, empty.
pub fn scratch(name: &str) -> Scratch {
    Scratch(tempfile::Builder::new().prefix(&format!("lejepa-{name}-")).tempdir().expect("cannot create a scratch folder"))
}
