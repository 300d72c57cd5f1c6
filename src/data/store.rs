//! Where a dataset's pixels live: decoded in memory (small built-in sources), a memory-mapped
//! `.npy` array, or image files decoded when a batch needs them, at the size the views need,
//! through a bounded cache.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rayon::prelude::*;

use super::Image;

/// The pixels behind one or more splits; a split reads them by row.
pub enum Store {
    Memory(Vec<Arc<Image>>),
    Mapped(NpyMap),
    Files(FileStore),
}

impl Store {
    pub fn len(&self) -> usize {
        match self {
            Store::Memory(images) => images.len(),
            Store::Mapped(map) => map.rows,
            Store::Files(files) => files.files.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The image at `row`, with `channels` channels (gray is replicated to RGB where asked).
    pub fn image(&self, row: usize, channels: usize) -> Result<Arc<Image>> {
        let image = match self {
            Store::Memory(images) => images[row].clone(),
            Store::Mapped(map) => Arc::new(map.image(row)),
            Store::Files(files) => return files.image(row, channels),
        };
        Ok(if image.channels == channels { image } else { Arc::new(image.to_rgb()) })
    }

    /// (width, height) of the image at `row` as stored (files: as on disk), without decoding it.
    pub fn dimensions(&self, row: usize) -> (usize, usize) {
        match self {
            Store::Memory(images) => (images[row].width, images[row].height),
            Store::Mapped(map) => (map.width, map.height),
            Store::Files(files) => (files.files[row].width, files.files[row].height),
        }
    }

    /// What a row is, for messages and for the rows of `embed`'s index: the file's path, or `row N`.
    pub fn name(&self, row: usize) -> String {
        match self {
            Store::Files(files) => files.files[row].path.display().to_string(),
            _ => format!("row {row}"),
        }
    }
}

/// A uint8 `.npy` array of N×H×W or N×H×W×C images, mapped rather than read: only the rows a
/// batch touches are paged in.
pub struct NpyMap {
    map: memmap2::Mmap,
    offset: usize,
    pub rows: usize,
    pub height: usize,
    pub width: usize,
    pub channels: usize,
}

impl NpyMap {
    pub fn open(path: &Path) -> Result<NpyMap> {
        let shown = path.display();
        let file = File::open(path).with_context(|| format!("{shown}: cannot open"))?;
        // Safety: the file is only read; a file changed by another program while mapped is outside what we promise.
        let map = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("{shown}: cannot map"))?;
        let (descr, fortran, shape, offset) = npy_header(&map).with_context(|| format!("{shown}: not a readable .npy file"))?;
        ensure!(descr == "|u1" || descr == "<u1", "{shown}: expected uint8 pixels (dtype |u1), found dtype {descr}");
        ensure!(!fortran, "{shown}: Fortran-ordered arrays are not supported; save it with numpy's default (C) order");
        let (rows, height, width, channels) = match shape.as_slice() {
            &[n, h, w] => (n, h, w, 1),
            &[n, h, w, c] if c == 1 || c == 3 => (n, h, w, c),
            _ => bail!("{shown}: expected N×H×W or N×H×W×C (C = 1 or 3) images, found shape {shape:?}"),
        };
        ensure!(rows > 0 && height > 0 && width > 0, "{shown}: empty array of shape {shape:?}");
        let needed = offset + rows * height * width * channels;
        ensure!(map.len() >= needed, "{shown}: truncated: shape {shape:?} needs {needed} bytes, the file has {}", map.len());
        Ok(NpyMap { map, offset, rows, height, width, channels })
    }

    fn image(&self, row: usize) -> Image {
        let per_image = self.height * self.width * self.channels;
        let pixels = self.map[self.offset + row * per_image..][..per_image].to_vec();
        Image { width: self.width, height: self.height, channels: self.channels, pixels }
    }
}

/// Parses an `.npy` header: (dtype descr, Fortran order, shape, offset of the data).
fn npy_header(bytes: &[u8]) -> Result<(String, bool, Vec<usize>, usize)> {
    ensure!(bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY", "no .npy magic bytes");
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated header");
            (u32::from_le_bytes(bytes[8..12].try_into()?) as usize, 12)
        }
        v => bail!("unknown .npy format version {v}"),
    };
    ensure!(bytes.len() >= start + len, "truncated header");
    let header = std::str::from_utf8(&bytes[start..start + len])?;
    let value_of = |key: &str| -> Result<&str> {
        let at = header.find(&format!("'{key}'")).with_context(|| format!("no '{key}' in the header"))?;
        Ok(header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start())
    };
    let descr = value_of("descr")?.trim_start_matches('\'').split('\'').next().unwrap_or_default().to_string();
    let fortran = value_of("fortran_order")?.starts_with("True");
    let shape_text = value_of("shape")?;
    let inner = shape_text.strip_prefix('(').and_then(|s| s.split(')').next()).context("bad shape")?;
    let shape = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse::<usize>()).collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape, start + len))
}

/// One image file as the start-up scan found it.
pub struct FileInfo {
    pub path: PathBuf,
    pub width: usize,
    pub height: usize,
    pub color: bool,
}

/// Reads an image file's header only: format, dimensions, whether it has colour.
pub fn scan(path: &Path) -> Result<FileInfo> {
    use image::ImageDecoder;
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .with_context(|| format!("{}: cannot open", path.display()))?;
    ensure!(reader.format().is_some(), "{}: not a PNG or JPEG image", path.display());
    let decoder = reader.into_decoder().with_context(|| format!("{}: unreadable image header", path.display()))?;
    let (width, height) = decoder.dimensions();
    ensure!(width > 0 && height > 0, "{}: empty image ({width}×{height})", path.display());
    Ok(FileInfo { path: path.to_path_buf(), width: width as usize, height: height as usize, color: decoder.color_type().has_color() })
}

/// Scans files in parallel; returns the readable ones with their labels and, separately, the
/// failures as "path: what is wrong" in path order.
pub fn scan_all(files: &[(PathBuf, i64)]) -> (Vec<(FileInfo, i64)>, Vec<String>) {
    let scanned: Vec<Result<FileInfo>> = files.par_iter().map(|(path, _)| scan(path)).collect();
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for ((_, label), result) in files.iter().zip(scanned) {
        match result {
            Ok(info) => good.push((info, *label)),
            Err(e) => bad.push(format!("{e:#}")),
        }
    }
    (good, bad)
}

/// Image files decoded on demand. Each file is decoded at the smallest size whose shorter side
/// still holds `decode_side` pixels (JPEG: scaled in the DCT, by 1/2, 1/4 or 1/8), and kept in a
/// cache until `cache_budget` bytes are used: after the first epoch a dataset that fits is read
/// from memory, and one that does not costs at most the budget.
pub struct FileStore {
    pub files: Vec<FileInfo>,
    decode_side: OnceLock<usize>,
    cache: Vec<OnceLock<Arc<Image>>>,
    cache_budget: usize,
    cache_used: AtomicUsize,
    /// Rows that failed to decode after passing the scan, with the reason.
    failed: Mutex<BTreeMap<usize, String>>,
}

/// Unreadable files named one by one on stderr; all of them are listed in the run's summary.
const MAX_REPORTED: usize = 20;

/// Larger non-JPEG images are shrunk (antialiased) when their shorter side is at least this many
/// times what the views need; below that they are kept as decoded.
const SHRINK_FACTOR: usize = 4;

impl FileStore {
    pub fn new(files: Vec<FileInfo>, cache_budget: usize) -> FileStore {
        let cache = (0..files.len()).map(|_| OnceLock::new()).collect();
        FileStore { files, decode_side: OnceLock::new(), cache, cache_budget, cache_used: AtomicUsize::new(0), failed: Mutex::new(BTreeMap::new()) }
    }

    /// Fixes the shorter side images are decoded at (0: full size). Only the first call counts, and
    /// only before the first decode: every read of a row must give the same pixels.
    pub fn decode_at(&self, side: usize) {
        let _ = self.decode_side.set(side);
    }

    /// Bytes held by the cache now.
    pub fn cached_bytes(&self) -> usize {
        self.cache_used.load(Ordering::Relaxed)
    }

    /// Files that passed the scan but failed to decode, as "path: reason".
    pub fn failures(&self) -> Vec<String> {
        self.failed.lock().unwrap().values().cloned().collect()
    }

    fn image(&self, row: usize, channels: usize) -> Result<Arc<Image>> {
        let image = match self.cache[row].get() {
            Some(image) => image.clone(),
            None => {
                if let Some(reason) = self.failed.lock().unwrap().get(&row) {
                    return Err(anyhow!("{reason}"));
                }
                let info = &self.files[row];
                let side = *self.decode_side.get_or_init(|| 0);
                let image = match decode(&info.path, side) {
                    Ok(image) => Arc::new(image),
                    Err(e) => {
                        let reason = format!("{e:#}");
                        let mut failed = self.failed.lock().unwrap();
                        if failed.insert(row, reason.clone()).is_none() && failed.len() <= MAX_REPORTED {
                            eprintln!("warning: an image that passed the start-up scan cannot be decoded; it is left out: {reason}");
                        }
                        return Err(anyhow!(reason));
                    }
                };
                let bytes = image.pixels.len();
                if self.cache_used.fetch_add(bytes, Ordering::Relaxed) + bytes <= self.cache_budget {
                    if self.cache[row].set(image.clone()).is_err() {
                        self.cache_used.fetch_sub(bytes, Ordering::Relaxed); // another thread cached it first
                    }
                } else {
                    self.cache_used.fetch_sub(bytes, Ordering::Relaxed);
                }
                image
            }
        };
        Ok(if image.channels == channels { image } else { Arc::new(image.to_rgb()) })
    }
}

/// The largest of 1, 2, 4, 8 that divides `short` (rounding up, as libjpeg's scaled IDCT does)
/// into at least `side` pixels.
fn jpeg_divisor(short: usize, side: usize) -> usize {
    if side == 0 {
        return 1;
    }
    [8, 4, 2].into_iter().find(|&d| short.div_ceil(d) >= side).unwrap_or(1)
}

/// Decodes one image file into 8-bit gray or RGB with its shorter side at least `side` pixels
/// where it had that many (0: full size). 16-bit is scaled down, alpha dropped, CMYK converted.
pub fn decode(path: &Path, side: usize) -> Result<Image> {
    let shown = path.display();
    let mut head = [0u8; 3];
    let is_jpeg = File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == [0xFF, 0xD8, 0xFF];
    let image = if is_jpeg {
        decode_jpeg(path, side).with_context(|| format!("{shown}: cannot decode JPEG"))?
    } else {
        let decoded = image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(anyhow::Error::from)
            .and_then(|r| r.decode().map_err(anyhow::Error::from))
            .with_context(|| format!("{shown}: cannot decode image"))?;
        let short = decoded.width().min(decoded.height()) as usize;
        let decoded = if side > 0 && short >= SHRINK_FACTOR * side {
            let scale = side as f64 / short as f64;
            let (w, h) = ((decoded.width() as f64 * scale).round().max(1.0) as u32, (decoded.height() as f64 * scale).round().max(1.0) as u32);
            decoded.resize_exact(w, h, image::imageops::FilterType::Triangle)
        } else {
            decoded
        };
        let (width, height) = (decoded.width() as usize, decoded.height() as usize);
        if decoded.color().has_color() {
            Image { width, height, channels: 3, pixels: decoded.into_rgb8().into_raw() }
        } else {
            Image { width, height, channels: 1, pixels: decoded.into_luma8().into_raw() }
        }
    };
    ensure!(image.width > 0 && image.height > 0, "{shown}: empty image");
    Ok(image)
}

/// JPEG through jpeg-decoder, whose scaled IDCT decodes at 1/2, 1/4 or 1/8 of the size for little
/// more than the cost of reading the file (BENCHMARKS.md, "Decoding at the size the views need").
fn decode_jpeg(path: &Path, side: usize) -> Result<Image> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(BufReader::new(File::open(path)?));
    decoder.read_info()?;
    let info = decoder.info().context("no image header")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let divisor = jpeg_divisor(w.min(h), side);
    if divisor > 1 {
        decoder.scale(w.div_ceil(divisor) as u16, h.div_ceil(divisor) as u16)?;
    }
    let data = decoder.decode()?;
    let info = decoder.info().context("no image header")?;
    let (width, height) = (info.width as usize, info.height as usize);
    let (channels, pixels) = match info.pixel_format {
        PixelFormat::L8 => (1, data),
        PixelFormat::L16 => (1, data.chunks_exact(2).map(|p| p[0]).collect()), // big-endian: the high byte first
        PixelFormat::RGB24 => (3, data),
        PixelFormat::CMYK32 => (3, data.chunks_exact(4).flat_map(|p| {
            // Adobe JPEGs store inverted CMYK: R = C·K/255 on the stored values.
            let k = p[3] as u16;
            [(p[0] as u16 * k / 255) as u8, (p[1] as u16 * k / 255) as u8, (p[2] as u16 * k / 255) as u8]
        }).collect()),
    };
    ensure!(pixels.len() == width * height * channels, "decoded {} bytes for {width}×{height}×{channels}", pixels.len());
    Ok(Image { width, height, channels, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_divisor_keeps_the_shorter_side() {
        assert_eq!(jpeg_divisor(1024, 0), 1);
        assert_eq!(jpeg_divisor(1024, 128), 8);
        assert_eq!(jpeg_divisor(1024, 129), 4);
        assert_eq!(jpeg_divisor(1000, 125), 8);
        assert_eq!(jpeg_divisor(1001, 126), 8, "1001/8 rounds up to 126");
        assert_eq!(jpeg_divisor(1000, 126), 4, "1000/8 is only 125");
        assert_eq!(jpeg_divisor(300, 200), 1);
        assert_eq!(jpeg_divisor(300, 150), 2);
    }

    #[test]
    fn npy_headers_of_both_versions() {
        let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
        let dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (5, 28, 28), }";
        v1.extend((dict.len() as u16).to_le_bytes());
        v1.extend(dict.as_bytes());
        let (descr, fortran, shape, offset) = npy_header(&v1).unwrap();
        assert_eq!((descr.as_str(), fortran, shape, offset), ("|u1", false, vec![5, 28, 28], 10 + dict.len()));
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        let dict = "{'descr': '<i8', 'fortran_order': True, 'shape': (7,), }";
        v2.extend((dict.len() as u32).to_le_bytes());
        v2.extend(dict.as_bytes());
        let (descr, fortran, shape, _) = npy_header(&v2).unwrap();
        assert_eq!((descr.as_str(), fortran, shape), ("<i8", true, vec![7]));
        assert!(npy_header(b"not an npy file").is_err());
    }
}
