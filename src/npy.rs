//! Reading and writing `.npy` arrays at the boundary with other tools, with errors that name the
//! file and say what is wrong.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use tch::{Kind, Tensor};

/// Reads a 2-D float32/float64 `.npy` (e.g. N×K embeddings) as a float64 tensor; rejects other
/// ranks, other dtypes, empty arrays and non-finite values.
pub fn read_matrix(path: &Path) -> Result<Tensor> {
    let shown = path.display();
    ensure!(path.exists(), "{shown}: no such file");
    let array = Tensor::read_npy(path).map_err(|e| anyhow::anyhow!("{shown}: not a readable .npy file ({e})"))?;
    match array.kind() {
        Kind::Float | Kind::Double => {}
        other => bail!("{shown}: expected float32 or float64 values, found {other:?}"),
    }
    ensure!(array.dim() == 2, "{shown}: expected a 2-D array (rows × columns), found shape {:?}", array.size());
    ensure!(array.numel() > 0, "{shown}: the array is empty (shape {:?})", array.size());
    let array = array.to_kind(Kind::Double);
    let non_finite = array.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    if non_finite > 0 {
        let first = array.isfinite().logical_not().nonzero().get(0);
        bail!(
            "{shown}: {non_finite} value(s) are NaN or infinite (first at row {}, column {})",
            first.int64_value(&[0]),
            first.int64_value(&[1])
        );
    }
    Ok(array)
}

/// Writes a tensor as `.npy` (atomically: a temporary file, then a rename).
pub fn write(tensor: &Tensor, path: &Path) -> Result<()> {
    let tmp = path.with_extension("npy.tmp");
    tensor.write_npy(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
