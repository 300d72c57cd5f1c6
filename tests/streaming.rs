//! Image folders stream: files are decoded when a batch needs them, at the size the views need,
//! through a bounded cache; bad files never cost a run; memory does not grow with the folder.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use lejepa::data::augment::MultiCrop;
use lejepa::data::loader::{Loader, LoaderConfig};
use lejepa::data::store::{Store, decode};
use lejepa::data::{OpenOptions, Split, open, stratified_subset};
use tch::{Kind, Tensor};

use common::{CHILD_DEADLINE, OutputWithin, scratch};

/// A smooth colour picture with some detail, different for each `seed`.
fn picture(width: u32, height: u32, seed: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
        let ring = (((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt() * (20.0 + seed as f32)).sin();
        image::Rgb([(255.0 * u) as u8, (255.0 * v) as u8, (127.5 + 127.0 * ring) as u8])
    })
}

fn batches(split: Arc<Split>, crop: &Arc<MultiCrop>, count: usize) -> Vec<Tensor> {
    let config = LoaderConfig { batch_size: 8, shard: (0, 1), batches_per_epoch: split.len() / 8, seed: 3, start: (0, 0), workers: 2, prefetch: 1 };
    let loader = Loader::new(split, crop.clone(), config).unwrap();
    (0..count)
        .map(|_| {
            let b = loader.next();
            Tensor::cat(&[b.global.flatten(0, -1), b.local.unwrap().flatten(0, -1)], 0)
        })
        .collect()
}

#[test]
fn streamed_views_equal_in_memory_views_and_do_not_depend_on_the_cache() {
    // The same 24 gray pictures as PNG files and as one .npy array (memory-mapped).
    let dir = scratch("same-views");
    let folder = dir.join("png");
    std::fs::create_dir_all(&folder).unwrap();
    let mut all = Vec::new();
    for i in 0..24u32 {
        let gray = image::DynamicImage::ImageRgb8(picture(40, 36, i)).into_luma8();
        gray.save(folder.join(format!("{i:02}.png"))).unwrap();
        all.extend_from_slice(gray.as_raw());
    }
    let npy = dir.join("npy");
    std::fs::create_dir_all(&npy).unwrap();
    Tensor::from_slice(&all).view([24, 36, 40]).write_npy(npy.join("images.npy")).unwrap();

    let crop = Arc::new(MultiCrop::lejepa(36, 4, 2, 3));
    let cached = open(&format!("folder:{}", folder.display()), &OpenOptions::default()).unwrap();
    let uncached = open(&format!("folder:{}", folder.display()), &OpenOptions { cache_bytes: 0, ..Default::default() }).unwrap();
    let mapped = open(&format!("npy:{}", npy.display()), &OpenOptions::default()).unwrap();
    assert!(matches!(cached.train.store(), Store::Files(_)) && matches!(mapped.train.store(), Store::Mapped(_)));
    let reference = batches(mapped.train.clone(), &crop, 3);
    for (name, dataset) in [("cached files", &cached), ("uncached files", &uncached)] {
        for (a, b) in batches(dataset.train.clone(), &crop, 3).iter().zip(&reference) {
            assert!(a.equal(b), "{name}: views differ from the in-memory ones");
        }
    }
    let Store::Files(files) = cached.train.store() else { unreachable!() };
    assert_eq!(files.cached_bytes(), 24 * 40 * 36, "every image read is cached (budget permitting)");
    let Store::Files(files) = uncached.train.store() else { unreachable!() };
    assert_eq!(files.cached_bytes(), 0, "--cache-gb 0 caches nothing");
}

#[test]
fn jpegs_are_decoded_at_the_size_the_views_need() {
    let dir = scratch("scaled");
    let path = dir.join("photo.jpg");
    picture(1024, 768, 1).save(&path).unwrap();
    let full = decode(&path, 0).unwrap();
    assert_eq!((full.width, full.height, full.channels), (1024, 768, 3));
    // 768 / 8 = 96 ≥ 90: an eighth; 768 / 4 = 192 ≥ 100: a quarter.
    let eighth = decode(&path, 90).unwrap();
    assert_eq!((eighth.width, eighth.height), (128, 96));
    assert_eq!((decode(&path, 100).unwrap().width, decode(&path, 100).unwrap().height), (256, 192));
    // The scaled decode is the same picture: the full decode averaged over 8×8 blocks, to within JPEG's rounding.
    let full_t = Tensor::from_slice(&full.pixels).view([768, 1024, 3]).permute([2, 0, 1]).to_kind(Kind::Float).unsqueeze(0);
    let pooled = full_t.avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None).squeeze_dim(0);
    let ours = Tensor::from_slice(&eighth.pixels).view([96, 128, 3]).permute([2, 0, 1]).to_kind(Kind::Float);
    let mean_diff = (pooled - ours).abs().mean(Kind::Float).double_value(&[]);
    assert!(mean_diff < 2.0, "mean difference {mean_diff} of 255");

    // In a dataset, the decode size follows the views (MultiCrop::decode_side).
    for i in 0..4 {
        picture(1024, 1024, i).save(dir.join(format!("{i}.jpg"))).unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    let ds = open(&format!("folder:{}", dir.display()), &OpenOptions::default()).unwrap();
    assert_eq!(ds.train.dimensions(0), (1024, 1024), "dimensions come from the header scan");
    let crop = MultiCrop::lejepa(64, 4, 2, 4);
    let side = crop.decode_side();
    // Global 64 px from ≥ 30% of the area at aspect 3/4: 64 / √(0.3 · 0.75) = 135; local 28 px from 5%: 145.
    assert_eq!(side, 145);
    ds.decode_at(side);
    assert_eq!(ds.train.image(0).unwrap().width, 256, "1024 / 4 = 256 ≥ 145 > 1024 / 8");
}

#[test]
fn files_that_break_after_the_scan_are_skipped_and_reported() {
    let dir = scratch("breaks");
    for i in 0..32u32 {
        image::DynamicImage::ImageRgb8(picture(24, 24, i)).into_luma8().save(dir.join(format!("{i:02}.png"))).unwrap();
    }
    // 05.png keeps its header but its pixel data is destroyed; 17.png disappears after the scan;
    let broken = dir.join("05.png");
    let mut bytes = std::fs::read(&broken).unwrap();
    let data = bytes.windows(4).position(|w| w == b"IDAT").unwrap() + 8;
    bytes[data..data + 40].iter_mut().for_each(|b| *b = 0xA5);
    std::fs::write(&broken, bytes).unwrap();
    // 09.jpg, a JPEG cut in the middle of its scan data: its headers are whole.
    let jpeg = dir.join("09.jpg");
    image::DynamicImage::ImageRgb8(picture(24, 24, 9)).into_luma8().save(&jpeg).unwrap();
    std::fs::remove_file(dir.join("09.png")).unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    let scan = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap(); // start of scan: the headers end here
    std::fs::write(&jpeg, &bytes[..scan + (bytes.len() - scan) / 2]).unwrap();
    let ds = open(&format!("folder:{}", dir.display()), &OpenOptions::default()).unwrap();
    assert_eq!(ds.train.len(), 32, "all three pass the header scan");
    std::fs::remove_file(dir.join("17.png")).unwrap();

    let crop = Arc::new(MultiCrop::lejepa(24, 4, 2, 2));
    let config = LoaderConfig { batch_size: 8, shard: (0, 1), batches_per_epoch: 4, seed: 1, start: (0, 0), workers: 2, prefetch: 1 };
    let loader = Loader::new(ds.train.clone(), crop, config).unwrap();
    for _ in 0..8 {
        assert_eq!(loader.next().global.size(), [16, 1, 24, 24], "two epochs of full batches");
    }
    let failures = ds.unreadable();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(failures[0].contains("05.png") && failures[1].contains("09.jpg") && failures[2].contains("17.png"), "{failures:?}");
}

#[test]
fn folders_that_hold_no_usable_images_are_clear_errors() {
    let open_err = |dir: &Path| format!("{:#}", open(&format!("folder:{}", dir.display()), &OpenOptions::default()).unwrap_err());
    let empty = scratch("empty");
    let err = open_err(&empty);
    assert!(err.contains(&empty.display().to_string()) && err.contains("no PNG or JPEG"), "{err}");

    let texts = scratch("texts");
    std::fs::write(texts.join("notes.txt"), "hello").unwrap();
    assert!(open_err(&texts).contains("no PNG or JPEG"));

    let mixed = scratch("mixed");
    std::fs::create_dir_all(mixed.join("cats")).unwrap();
    picture(8, 8, 0).save(mixed.join("cats/a.png")).unwrap();
    picture(8, 8, 0).save(mixed.join("loose.png")).unwrap();
    let err = open_err(&mixed);
    assert!(err.contains("both image files and class subfolders"), "{err}");

    // A file whose header cannot be read: named, with the way out.
    let bad = scratch("bad-header");
    picture(8, 8, 0).save(bad.join("good.png")).unwrap();
    std::fs::write(bad.join("fake.jpg"), b"\xFF\xD8\xFF\xE0 not a jpeg").unwrap();
    let err = open_err(&bad);
    assert!(err.contains("fake.jpg") && err.contains("--skip-bad"), "{err}");
    let ds = open(&format!("folder:{}", bad.display()), &OpenOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!((ds.train.len(), ds.skipped.len()), (1, 1));
}

#[test]
fn the_online_probe_subset_covers_every_class_of_a_class_sorted_split() {
    // 10 classes of 100, sorted by class as folder and npy test splits are.
    let labels: Vec<i64> = (0..1000).map(|i| i / 100).collect();
    let images = (0..1000).map(|_| lejepa::data::Image { width: 2, height: 2, channels: 1, pixels: vec![0; 4] }).collect();
    let split = Split::from_images(images, Some(labels));
    let subset = stratified_subset(&split, 200);
    assert_eq!(subset.len(), 200);
    let mut per_class = [0; 10];
    subset.labels.as_ref().unwrap().iter().for_each(|&l| per_class[l as usize] += 1);
    assert_eq!(per_class, [20; 10], "20 of each class, where the first 200 rows would hold two classes");
    assert_eq!(stratified_subset(&split, 5000).len(), 1000, "a limit above the split's size keeps it whole");
}

/// Peak resident memory stays bounded on a folder whose decoded pixels are more than five times
/// the bound: images are decoded when needed, at the size the views need, through a bounded cache.
#[test]
fn pretraining_on_a_folder_larger_than_memory_keeps_memory_bounded() {
    let dir = scratch("big-folder");
    let folder = dir.join("photos");
    std::fs::create_dir_all(&folder).unwrap();
    // 2,600 photos of 1024×1024 RGB: 8.2 GB decoded. Eight distinct pictures, hard-linked.
    let originals: Vec<_> = (0..8u32)
        .map(|i| {
            let path = dir.join(format!("original{i}.jpg"));
            picture(1024, 1024, i).save(&path).unwrap();
            path
        })
        .collect();
    for i in 0..2600 {
        std::fs::hard_link(&originals[i % 8], folder.join(format!("{i:05}.jpg"))).unwrap();
    }
    let bound = 1_500_000_000u64;
    assert!(2600u64 * 1024 * 1024 * 3 > 5 * bound);
    let output = Command::new(env!("CARGO_BIN_EXE_lejepa"))
        .args(["pretrain", "--preset", "cpu-small", "--data", &format!("folder:{}", folder.display()), "--global-size", "32", "--batch-size", "32"])
        .args(["--max-steps", "3", "--threads", "2", "--json", "--out"])
        .arg(dir.join("runs"))
        .output_within(CHILD_DEADLINE);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let peak = summary["peak_resident_bytes"].as_u64().expect("the summary reports the peak resident memory");
    assert!(peak < bound, "peak resident memory {:.2} GB ≥ {:.2} GB", peak as f64 / 1e9, bound as f64 / 1e9);
    assert_eq!(summary["steps"], 3);
    assert_eq!(summary["unreadable_files"].as_array().map(Vec::len), Some(0));
}
