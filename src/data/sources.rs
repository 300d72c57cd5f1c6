//! Readers for each kind of source. Every error names the file and what is wrong with it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use tch::{Kind, Tensor};

use super::store::{FileStore, NpyMap, Store, scan_all};
use super::{Dataset, Image, OpenOptions, Split, stratified_split};

pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Reads a whole file, gunzipping it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> usize {
    u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// MNIST-format IDX: images (magic 0x803, n × rows × cols) and labels (magic 0x801, n).
fn idx_images(path: &Path) -> Result<Vec<Image>> {
    let bytes = read_maybe_gz(path)?;
    let shown = path.display();
    ensure!(bytes.len() >= 16 && be_u32(&bytes, 0) == 0x803, "{shown}: not an IDX image file (magic 0x00000803)");
    let (n, rows, cols) = (be_u32(&bytes, 4), be_u32(&bytes, 8), be_u32(&bytes, 12));
    ensure!(n > 0 && rows > 0 && cols > 0, "{shown}: the header says {n} images of {rows}×{cols}: no pixels");
    let size = n.checked_mul(rows).and_then(|v| v.checked_mul(cols)).and_then(|v| v.checked_add(16));
    ensure!(size == Some(bytes.len()), "{shown}: the header says {n} images of {rows}×{cols} pixels, the file has {} bytes", bytes.len());
    Ok(bytes[16..]
        .chunks_exact(rows * cols)
        .map(|p| Image { width: cols, height: rows, channels: 1, pixels: p.to_vec() })
        .collect())
}

fn idx_labels(path: &Path) -> Result<Vec<i64>> {
    let bytes = read_maybe_gz(path)?;
    let shown = path.display();
    ensure!(bytes.len() >= 8 && be_u32(&bytes, 0) == 0x801, "{shown}: not an IDX label file (magic 0x00000801)");
    let n = be_u32(&bytes, 4);
    ensure!(bytes.len() == 8 + n, "{shown}: truncated: header says {n} labels, file has {} bytes", bytes.len());
    Ok(bytes[8..].iter().map(|&l| l as i64).collect())
}

/// `dir/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
pub fn idx_dir(dir: &Path, classes: Option<&[&str]>) -> Result<Dataset> {
    let find = |stem: &str| -> Result<PathBuf> {
        [dir.join(stem), dir.join(format!("{stem}.gz"))]
            .into_iter()
            .find(|p| p.exists())
            .with_context(|| format!("{}: no {stem} or {stem}.gz", dir.display()))
    };
    let split = |prefix: &str| -> Result<Split> {
        let images_path = find(&format!("{prefix}-images-idx3-ubyte"))?;
        let images = idx_images(&images_path)?;
        let labels = idx_labels(&find(&format!("{prefix}-labels-idx1-ubyte"))?)?;
        ensure!(images.len() == labels.len(), "{}: {} images but {} labels", images_path.display(), images.len(), labels.len());
        Ok(Split::from_images(images, Some(labels)))
    };
    let (train, test) = (split("train")?, split("t10k")?);
    let n_classes = train.labels.as_ref().unwrap().iter().max().map_or(0, |m| m + 1);
    let classes = match classes {
        Some(names) => names.iter().map(|s| s.to_string()).collect(),
        None => (0..n_classes).map(|c| c.to_string()).collect(),
    };
    Ok(Dataset { spec: String::new(), val: Split::default(), channels: 1, classes, train: Arc::new(train), test, skipped: vec![] })
}

pub fn fashion_mnist() -> Result<Dataset> {
    ensure!(
        Path::new(FASHION_MNIST_DIR).exists(),
        "the built-in dataset 'fashion-mnist' is not installed ({FASHION_MNIST_DIR} is missing): run scripts/setup, \
         which installs the Debian package dataset-fashion-mnist"
    );
    idx_dir(Path::new(FASHION_MNIST_DIR), Some(&FASHION_MNIST_CLASSES))
}

fn is_image_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list folder", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list folder", dir.display()))?;
    entries.sort();
    Ok(entries)
}

/// Scans the files' headers (in parallel) into a store of files read when a batch needs them. An
/// unreadable file is an error naming it, or with `skip_bad` is left out and reported.
fn file_store(files: &[(PathBuf, i64)], options: &OpenOptions, skipped: &mut Vec<String>) -> Result<(Arc<Store>, Vec<i64>, bool)> {
    let (good, bad) = scan_all(files);
    if !bad.is_empty() && !options.skip_bad {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        let more = if bad.len() > 5 { format!("\n(and {} more)", bad.len() - 5) } else { String::new() };
        bail!("{} unreadable image file(s):\n{}{more}\nuse --skip-bad to leave them out", bad.len(), shown.join("\n"));
    }
    skipped.extend(bad);
    let color = good.iter().any(|(info, _)| info.color);
    let labels = good.iter().map(|(_, l)| *l).collect();
    let infos = good.into_iter().map(|(info, _)| info).collect();
    Ok((Arc::new(Store::Files(FileStore::new(infos, options.cache_bytes))), labels, color))
}

/// Files of a folder tree: class subfolders (labeled) or image files directly inside (unlabeled).
fn folder_files(dir: &Path, classes: &mut Vec<String>) -> Result<(Vec<(PathBuf, i64)>, bool)> {
    let entries = sorted_entries(dir)?;
    let subdirs: Vec<&PathBuf> = entries.iter().filter(|p| p.is_dir()).collect();
    let flat: Vec<(PathBuf, i64)> = entries.iter().filter(|p| is_image_file(p)).map(|p| (p.clone(), -1)).collect();
    if subdirs.is_empty() {
        return Ok((flat, false));
    }
    ensure!(flat.is_empty(), "{}: holds both image files and class subfolders; use one layout", dir.display());
    let mut files = Vec::new();
    for sub in subdirs {
        let name = sub.file_name().unwrap().to_string_lossy().to_string();
        let label = match classes.iter().position(|c| *c == name) {
            Some(i) => i,
            None => {
                classes.push(name);
                classes.len() - 1
            }
        } as i64;
        files.extend(sorted_entries(sub)?.into_iter().filter(|p| is_image_file(p)).map(|p| (p, label)));
    }
    Ok((files, true))
}

pub fn folder(dir: &Path, options: &OpenOptions) -> Result<Dataset> {
    ensure!(dir.is_dir(), "{}: no such folder", dir.display());
    let mut classes = Vec::new();
    let mut skipped = Vec::new();
    let explicit = dir.join("train").is_dir() && dir.join("test").is_dir();
    let (train, test, color) = if explicit {
        let (train_files, labeled) = folder_files(&dir.join("train"), &mut classes)?;
        let (test_files, _) = folder_files(&dir.join("test"), &mut classes)?;
        ensure!(!train_files.is_empty(), "{}: no PNG or JPEG images found", dir.join("train").display());
        let (train_store, train_labels, train_color) = file_store(&train_files, options, &mut skipped)?;
        let (test_store, test_labels, test_color) = file_store(&test_files, options, &mut skipped)?;
        let channels = if train_color || test_color { 3 } else { 1 };
        (
            Split::new(train_store, labeled.then_some(train_labels), channels),
            Split::new(test_store, labeled.then_some(test_labels), channels),
            train_color || test_color,
        )
    } else {
        let (files, labeled) = folder_files(dir, &mut classes)?;
        ensure!(!files.is_empty(), "{}: no PNG or JPEG images found (looked for .png, .jpg and .jpeg files, and for class subfolders holding them)", dir.display());
        let (store, labels, color) = file_store(&files, options, &mut skipped)?;
        let all = Split::new(store, labeled.then_some(labels.clone()), if color { 3 } else { 1 });
        if labeled {
            let (train_idx, test_idx) = stratified_split(&labels, options.test_fraction);
            (all.select(&train_idx), all.select(&test_idx), color)
        } else {
            (all, Split::default(), color)
        }
    };
    ensure!(!train.is_empty(), "{}: none of the images could be read ({} skipped)", dir.display(), skipped.len());
    // One channel count for the whole dataset: colour wins, gray images are replicated when read.
    let channels = if color { 3 } else { 1 };
    Ok(Dataset { spec: String::new(), val: Split::default(), channels, classes, train: Arc::new(train), test, skipped })
}

/// A uint8 `.npy` of N×H×W or N×H×W×C (C = 1 or 3) images, memory-mapped.
fn npy_images(path: &Path) -> Result<Arc<Store>> {
    ensure!(path.exists(), "{}: no such file", path.display());
    Ok(Arc::new(Store::Mapped(NpyMap::open(path)?)))
}

fn npy_labels(path: &Path, expected: usize) -> Result<Vec<i64>> {
    let shown = path.display();
    let array = Tensor::read_npy(path).map_err(|e| anyhow::anyhow!("{shown}: not a readable .npy file ({e})"))?;
    ensure!(
        matches!(array.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8),
        "{shown}: expected integer labels, found {:?}",
        array.kind()
    );
    ensure!(array.dim() == 1 && array.size()[0] as usize == expected, "{shown}: expected {expected} labels, found shape {:?}", array.size());
    let labels = Vec::<i64>::try_from(array.to_kind(Kind::Int64))?;
    ensure!(labels.iter().all(|&l| l >= 0), "{shown}: labels must be non-negative class indices");
    Ok(labels)
}

pub fn npy_dir(dir: &Path, options: &OpenOptions) -> Result<Dataset> {
    ensure!(dir.is_dir(), "{}: no such folder", dir.display());
    let read_split = |prefix: &str| -> Result<Split> {
        let store = npy_images(&dir.join(format!("{prefix}images.npy")))?;
        let labels_path = dir.join(format!("{prefix}labels.npy"));
        let labels = if labels_path.exists() { Some(npy_labels(&labels_path, store.len())?) } else { None };
        let Store::Mapped(map) = &*store else { unreachable!() };
        let channels = map.channels;
        Ok(Split::new(store, labels, channels))
    };
    let (train, test) = if dir.join("train_images.npy").exists() {
        (read_split("train_")?, read_split("test_")?)
    } else if dir.join("images.npy").exists() {
        let all = read_split("")?;
        match &all.labels {
            Some(labels) => {
                let (train_idx, test_idx) = stratified_split(labels, options.test_fraction);
                (all.select(&train_idx), all.select(&test_idx))
            }
            None => (all, Split::default()),
        }
    } else {
        bail!("{}: expected images.npy (and optional labels.npy) or train_images.npy/test_images.npy", dir.display());
    };
    ensure!(test.len() == 0 || test.channels == train.channels, "{}: train and test images have different channel counts", dir.display());
    let channels = train.channels;
    let n_classes = train.labels.iter().chain(&test.labels).flatten().max().map_or(0, |m| m + 1);
    let classes = (0..n_classes).map(|c| c.to_string()).collect();
    Ok(Dataset { spec: String::new(), val: Split::default(), channels, classes, train: Arc::new(train), test, skipped: vec![] })
}

/// scikit-learn's 8×8 digits, compiled into the binary (assets/digits.csv.gz): 64 values 0–16, then the label.
pub fn digits(options: &OpenOptions) -> Result<Dataset> {
    let mut csv = String::new();
    flate2::read::GzDecoder::new(&include_bytes!("../../assets/digits.csv.gz")[..]).read_to_string(&mut csv)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let values: Vec<u32> = line.split(',').map(|v| v.trim().parse::<f64>().map(|x| x as u32)).collect::<Result<_, _>>()?;
        ensure!(values.len() == 65, "digits.csv: a row has {} values, expected 65", values.len());
        // 0–16 → 0–255
        let pixels = values[..64].iter().map(|&v| ((v * 255 + 8) / 16) as u8).collect();
        images.push(Image { width: 8, height: 8, channels: 1, pixels });
        labels.push(values[64] as i64);
    }
    let all = Split::from_images(images, Some(labels.clone()));
    let (train_idx, test_idx) = stratified_split(&labels, options.test_fraction);
    let classes = (0..10).map(|c| c.to_string()).collect();
    Ok(Dataset { spec: String::new(), val: Split::default(), channels: 1, classes, train: Arc::new(all.select(&train_idx)), test: all.select(&test_idx), skipped: vec![] })
}

/// Where `scripts/setup --elpv` unpacks the ELPV wheel: $LEJEPA_DATA/elpv, ./data/elpv or <repo>/data/elpv.
fn elpv_dir() -> Option<PathBuf> {
    let roots = [
        std::env::var_os("LEJEPA_DATA").map(PathBuf::from),
        Some(PathBuf::from("data")),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("data")),
    ];
    roots.into_iter().flatten().map(|r| r.join("elpv/elpv_dataset/data")).find(|d| d.join("labels.csv").exists())
}

/// ELPV solar cells: 2,624 gray 300×300 electroluminescence images; label = defect probability
/// (4 levels: 0, 1/3, 2/3, 1) or, `binary`, functional (0) vs defective (> 0). Split 75/25,
/// stratified by (defect probability, module type).
pub fn elpv(binary: bool, options: &OpenOptions) -> Result<Dataset> {
    let dir = elpv_dir().context(
        "the built-in dataset 'elpv' is not installed: run scripts/setup --elpv (fetches the PyPI wheel elpv-dataset into data/elpv)",
    )?;
    let labels_path = dir.join("labels.csv");
    let text = std::fs::read_to_string(&labels_path).with_context(|| format!("{}: cannot read", labels_path.display()))?;
    let mut files = Vec::new();
    let mut strata = Vec::new();
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        ensure!(fields.len() == 3, "{}:{}: expected 'path probability type'", labels_path.display(), line_no + 1);
        let probability: f64 = fields[1].parse().with_context(|| format!("{}:{}: bad probability", labels_path.display(), line_no + 1))?;
        let level = (probability * 3.0).round() as i64; // 0, 1, 2, 3
        let label = if binary { (level > 0) as i64 } else { level };
        let module = (fields[2] == "poly") as i64;
        files.push((dir.join(fields[0]), label));
        strata.push(level * 2 + module);
    }
    let mut skipped = Vec::new();
    let (store, labels, _) = file_store(&files, options, &mut skipped)?;
    let strata: Vec<i64> = if skipped.is_empty() { strata } else { labels.clone() };
    let all = Split::new(store, Some(labels), 1);
    let (train_idx, test_idx) = stratified_split(&strata, 0.25);
    let classes = if binary {
        vec!["functional".into(), "defective".into()]
    } else {
        vec!["p=0".into(), "p=1/3".into(), "p=2/3".into(), "p=1".into()]
    };
    Ok(Dataset { spec: String::new(), val: Split::default(), channels: 1, classes, train: Arc::new(all.select(&train_idx)), test: all.select(&test_idx), skipped })
}
