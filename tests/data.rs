//! Data sources and the loader: real files (Fashion-MNIST, digits), generated folders, .npy and
//! IDX files, corrupt inputs, and determinism of the views.

mod common;

use std::path::Path;
use std::sync::Arc;

use lejepa::data::augment::MultiCrop;
use lejepa::data::loader::{Loader, LoaderConfig};
use lejepa::data::{OpenOptions, open};
use tch::{Kind, Tensor};

use common::scratch;

fn counts(labels: &[i64], classes: usize) -> Vec<usize> {
    let mut c = vec![0; classes];
    labels.iter().for_each(|&l| c[l as usize] += 1);
    c
}

#[test]
fn fashion_mnist_is_the_official_split() {
    let ds = open("fashion-mnist", &OpenOptions::default()).expect("run scripts/setup first");
    assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
    assert_eq!(counts(ds.train.labels.as_ref().unwrap(), 10), vec![6000; 10]);
    assert_eq!(counts(ds.test.labels.as_ref().unwrap(), 10), vec![1000; 10]);
    assert_eq!(ds.classes[9], "Ankle boot");
    assert_eq!((ds.train.dimensions(0), ds.channels), ((28, 28), 1));
}

#[test]
fn digits_split_is_stratified_and_fixed() {
    let ds = open("digits", &OpenOptions::default()).unwrap();
    assert_eq!(ds.train.len() + ds.test.len(), 1797);
    let test = counts(ds.test.labels.as_ref().unwrap(), 10);
    let all: Vec<usize> = counts(ds.train.labels.as_ref().unwrap(), 10).iter().zip(&test).map(|(a, b)| a + b).collect();
    for (t, a) in test.iter().zip(&all) {
        assert_eq!(*t, (*a as f64 * 0.25).round() as usize, "each class splits 75/25");
    }
    let again = open("digits", &OpenOptions::default()).unwrap();
    assert_eq!(ds.test.labels, again.test.labels);
    assert_eq!(ds.test.image(5).unwrap().pixels, again.test.image(5).unwrap().pixels);
    // The file's first digit is a 0 whose top row reads 0 0 5 13 9 1 0 0 (0–16 scaled to 0–255).
    let top_row = [0u8, 0, 80, 207, 143, 16, 0, 0];
    let all = (0..ds.train.len()).map(|i| ds.train.image(i).unwrap()).chain((0..ds.test.len()).map(|i| ds.test.image(i).unwrap()));
    let first = all.map(|i| i.pixels[..8].to_vec()).position(|row| row == top_row);
    assert!(first.is_some(), "the first digit of the CSV is in the dataset");
    let subset = open("digits", &OpenOptions { train_subset: Some(100), ..Default::default() }).unwrap();
    assert_eq!(subset.train.len(), 100);
}

fn write_png(path: &Path, width: u32, height: u32, color: bool, sixteen_bit: bool) {
    if sixteen_bit {
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(width, height, |x, _| image::Luma([(x * 4000) as u16]));
        img.save(path).unwrap();
    } else if color {
        image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8 * 10, y as u8 * 10, 128, 255])).save(path).unwrap();
    } else {
        image::GrayImage::from_fn(width, height, |x, y| image::Luma([(x + y) as u8 * 5])).save(path).unwrap();
    }
}

#[test]
fn image_folders_with_classes_flat_or_explicit_splits() {
    let dir = scratch("folder");
    for (class, n) in [("cat", 8), ("dog", 4)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..n {
            write_png(&dir.join(class).join(format!("{i}.png")), 20 + i, 16, i == 1, i == 2);
        }
    }
    image::RgbImage::from_pixel(12, 12, image::Rgb([1, 2, 3])).save(dir.join("dog/photo.jpg")).unwrap();
    let ds = open(&format!("folder:{}", dir.display()), &OpenOptions::default()).unwrap();
    assert_eq!(ds.classes, vec!["cat", "dog"]);
    assert_eq!(ds.train.len() + ds.test.len(), 13);
    assert_eq!(ds.channels, 3, "one RGBA image makes the dataset RGB");
    assert!((0..ds.train.len()).all(|i| ds.train.image(i).unwrap().channels == 3));
    assert_eq!(ds.test.len(), 2 + 1, "25% of each class: round(2) + round(1.25)");

    // A corrupt file: one error naming it, or skipped and counted with --skip-bad.
    std::fs::write(dir.join("cat/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = format!("{:#}", open(&format!("folder:{}", dir.display()), &OpenOptions::default()).unwrap_err());
    assert!(err.contains("broken.png") && err.contains("--skip-bad"), "{err}");
    let ds = open(&format!("folder:{}", dir.display()), &OpenOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.train.len() + ds.test.len(), 13);

    // Flat folder: unlabeled, everything for training.
    let flat = scratch("flat");
    for i in 0..5 {
        write_png(&flat.join(format!("{i}.png")), 10, 10, false, false);
    }
    let ds = open(&format!("folder:{}", flat.display()), &OpenOptions::default()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len(), ds.train.labels.is_none(), ds.channels), (5, 0, true, 1));

    // train/ and test/ subfolders: an explicit split.
    let explicit = scratch("explicit");
    for split in ["train", "test"] {
        for class in ["a", "b"] {
            std::fs::create_dir_all(explicit.join(split).join(class)).unwrap();
            write_png(&explicit.join(split).join(class).join("x.png"), 9, 9, false, false);
        }
    }
    let ds = open(&format!("folder:{}", explicit.display()), &OpenOptions::default()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len()), (2, 2));
    assert_eq!(ds.test.labels, Some(vec![0, 1]));
}

#[test]
fn npy_and_idx_folders() {
    let dir = scratch("npy");
    Tensor::arange(2 * 5 * 6 * 3, (Kind::Uint8, tch::Device::Cpu)).view([2, 5, 6, 3]).write_npy(dir.join("train_images.npy")).unwrap();
    Tensor::from_slice(&[0i64, 1]).write_npy(dir.join("train_labels.npy")).unwrap();
    Tensor::zeros([1, 5, 6, 3], (Kind::Uint8, tch::Device::Cpu)).write_npy(dir.join("test_images.npy")).unwrap();
    Tensor::from_slice(&[1i64]).write_npy(dir.join("test_labels.npy")).unwrap();
    let ds = open(&format!("npy:{}", dir.display()), &OpenOptions::default()).unwrap();
    assert_eq!((ds.train.len(), ds.test.len(), ds.channels, ds.classes.len()), (2, 1, 3, 2));
    assert_eq!(&ds.train.image(0).unwrap().pixels[..4], &[0, 1, 2, 3], "HWC order kept");

    let bad = scratch("npy-bad");
    Tensor::zeros([2, 5, 6], (Kind::Float, tch::Device::Cpu)).write_npy(bad.join("images.npy")).unwrap();
    let err = format!("{:#}", open(&format!("npy:{}", bad.display()), &OpenOptions::default()).unwrap_err());
    assert!(err.contains("images.npy") && err.contains("uint8"), "{err}");

    // IDX files, uncompressed; a truncated one is named in the error.
    let idx = scratch("idx");
    let header = |magic: u32, dims: &[u32]| -> Vec<u8> { std::iter::once(magic).chain(dims.iter().copied()).flat_map(|v| v.to_be_bytes()).collect() };
    for prefix in ["train", "t10k"] {
        let mut images = header(0x803, &[3, 4, 4]);
        images.extend(vec![7u8; 48]);
        std::fs::write(idx.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let mut labels = header(0x801, &[3]);
        labels.extend([0u8, 1, 2]);
        std::fs::write(idx.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
    let ds = open(&format!("idx:{}", idx.display()), &OpenOptions::default()).unwrap();
    assert_eq!((ds.train.len(), ds.classes.len()), (3, 3));
    std::fs::write(idx.join("t10k-images-idx3-ubyte"), &header(0x803, &[3, 4, 4])[..]).unwrap();
    let err = format!("{:#}", open(&format!("idx:{}", idx.display()), &OpenOptions::default()).unwrap_err());
    assert!(err.contains("t10k-images-idx3-ubyte") && err.contains("3 images of 4×4 pixels, the file has 16 bytes"), "{err}");
}

/// Each kind of bad array or IDX file is an error that names the file and what is wrong with it.
#[test]
fn bad_npy_and_idx_data_are_clear_errors_naming_the_file() {
    let open_err = |spec: String| format!("{:#}", open(&spec, &OpenOptions::default()).unwrap_err());
    let cpu = tch::Device::Cpu;
    let npy_case = |labels: Option<Tensor>, images: Tensor| {
        let dir = scratch("npy-case");
        images.write_npy(dir.join("images.npy")).unwrap();
        if let Some(labels) = labels {
            labels.write_npy(dir.join("labels.npy")).unwrap();
        }
        let err = open_err(format!("npy:{}", dir.display()));
        (dir, err)
    };
    let images = || Tensor::zeros([20, 8, 8], (Kind::Uint8, cpu));
    let (_d, err) = npy_case(Some(Tensor::zeros([15], (Kind::Int64, cpu))), images());
    assert!(err.contains("labels.npy") && err.contains("expected 20 labels"), "wrong length: {err}");
    let (_d, err) = npy_case(Some(Tensor::zeros([20], (Kind::Float, cpu))), images());
    assert!(err.contains("labels.npy") && err.contains("integer labels"), "float labels: {err}");
    let (_d, err) = npy_case(Some(Tensor::full([20], -1, (Kind::Int64, cpu))), images());
    assert!(err.contains("labels.npy") && err.contains("non-negative"), "negative labels: {err}");
    let (_d, err) = npy_case(None, Tensor::zeros([0, 8, 8], (Kind::Uint8, cpu)));
    assert!(err.contains("images.npy") && err.contains("empty"), "no images: {err}");

    let header = |magic: u32, dims: &[u32]| -> Vec<u8> { std::iter::once(magic).chain(dims.iter().copied()).flat_map(|v| v.to_be_bytes()).collect() };
    let idx_case = |images: Vec<u8>, labels: Vec<u8>, gzip_images: bool| {
        let dir = scratch("idx-case");
        for prefix in ["train", "t10k"] {
            if gzip_images {
                std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &images).unwrap();
            } else {
                std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), &images).unwrap();
            }
            std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), &labels).unwrap();
        }
        let err = open_err(format!("idx:{}", dir.display()));
        (dir, err)
    };
    let good_images = [header(0x803, &[3, 4, 4]), vec![7u8; 48]].concat();
    let good_labels = [header(0x801, &[3]), vec![0u8, 1, 2]].concat();
    let (_d, err) = idx_case([header(0x802, &[3, 4, 4]), vec![7u8; 48]].concat(), good_labels.clone(), false);
    assert!(err.contains("images-idx3-ubyte") && err.contains("not an IDX image file"), "bad magic: {err}");
    let (_d, err) = idx_case(good_images.clone(), [header(0x801, &[2]), vec![0u8, 1]].concat(), false);
    assert!(err.contains("3 images but 2 labels"), "counts differ: {err}");
    let (_d, err) = idx_case(header(0x803, &[3, 0, 4]), good_labels.clone(), false);
    assert!(err.contains("no pixels"), "zero rows: {err}");
    let (_d, err) = idx_case([header(0x803, &[3, u32::MAX, u32::MAX]), vec![0u8; 8]].concat(), good_labels.clone(), false);
    assert!(err.contains("images-idx3-ubyte") && err.contains("file has 24 bytes"), "a header too large for the file: {err}");
    let (_d, err) = idx_case(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3], good_labels, true);
    assert!(err.contains("images-idx3-ubyte.gz") && err.contains("gzip"), "corrupt gzip: {err}");
}

#[test]
fn unknown_sources_and_missing_builtins_say_what_to_do() {
    let err = open("cifar10", &OpenOptions::default()).unwrap_err().to_string();
    assert!(err.contains("cifar10") && err.contains("folder:PATH"), "{err}");
    let err = open("folder:/no/such/folder", &OpenOptions::default()).unwrap_err().to_string();
    assert!(err.contains("/no/such/folder"), "{err}");
}

fn loader_batches(workers: usize, start: (u64, usize)) -> Vec<Tensor> {
    let ds = open("digits", &OpenOptions::default()).unwrap();
    let crop = Arc::new(MultiCrop::lejepa(8, 1, 2, 3));
    let config = LoaderConfig { batch_size: 16, shard: (0, 1), batches_per_epoch: 84, seed: 9, start, workers, prefetch: 2 };
    let loader = Loader::new(ds.train, crop, config).unwrap();
    (0..3)
        .map(|_| {
            let b = loader.next();
            assert_eq!(b.global.size(), [2 * 16, 1, 8, 8]);
            assert_eq!(b.local.as_ref().unwrap().size(), [3 * 16, 1, 3, 3]);
            Tensor::cat(&[b.global.flatten(0, -1), b.local.unwrap().flatten(0, -1), b.labels.unwrap().to_kind(Kind::Float)], 0)
        })
        .collect()
}

#[test]
fn loader_batches_do_not_depend_on_threads_and_resume_exactly() {
    let one = loader_batches(1, (0, 0));
    let two = loader_batches(2, (0, 0));
    for (a, b) in one.iter().zip(&two) {
        assert!(a.equal(b), "views must not depend on the worker count");
    }
    let resumed = loader_batches(2, (0, 1));
    assert!(resumed[0].equal(&one[1]) && resumed[1].equal(&one[2]), "starting at batch 1 gives batches 1, 2, …");
}

#[test]
fn shards_of_a_global_batch_are_its_halves_with_the_same_views() {
    let ds = open("digits", &OpenOptions::default()).unwrap();
    let crop = Arc::new(MultiCrop::lejepa(8, 2, 2, 3));
    let batch = |batch_size, shard| {
        let config = LoaderConfig { batch_size, shard, batches_per_epoch: 5, seed: 4, start: (0, 2), workers: 2, prefetch: 1 };
        Loader::new(ds.train.clone(), crop.clone(), config).unwrap().next()
    };
    let whole = batch(32, (0, 1));
    let halves = [batch(16, (0, 2)), batch(16, (1, 2))];
    // View-major rows: view v of sample n is row v·N + n, so each view's rows split in two.
    let local = |b: &lejepa::data::loader::Batch| b.local.as_ref().unwrap().shallow_clone();
    for (whole, halves, views) in [(&whole.global, [&halves[0].global, &halves[1].global], 2), (&local(&whole), [&local(&halves[0]), &local(&halves[1])], 3)] {
        let joined = Tensor::cat(&[halves[0].view([views, 16, -1]), halves[1].view([views, 16, -1])], 1);
        assert!(whole.view([views, 32, -1]).equal(&joined), "shard r of the global batch must be its r-th slice, with identical views");
    }
    let labels = Tensor::cat(&[halves[0].labels.as_ref().unwrap(), halves[1].labels.as_ref().unwrap()], 0);
    assert!(whole.labels.unwrap().equal(&labels));
    let err = Loader::new(ds.train.clone(), crop.clone(), LoaderConfig { batch_size: 16, shard: (2, 2), batches_per_epoch: 1, seed: 0, start: (0, 0), workers: 1, prefetch: 1 });
    assert!(err.is_err());
}

#[test]
fn elpv_has_its_published_label_counts_and_a_stratified_split() {
    let Ok(ds) = open("elpv", &OpenOptions::default()) else {
        panic!("ELPV is not installed: scripts/test runs scripts/setup --elpv");
    };
    assert_eq!(ds.train.len() + ds.test.len(), 2624);
    let all: Vec<i64> = ds.train.labels.clone().unwrap().into_iter().chain(ds.test.labels.clone().unwrap()).collect();
    // labels.csv: defect probability 0 / 1/3 / 2/3 / 1 → 1,508 / 295 / 106 / 715 cells.
    assert_eq!(counts(&all, 4), vec![1508, 295, 106, 715]);
    let test = counts(ds.test.labels.as_ref().unwrap(), 4);
    for (t, a) in test.iter().zip(counts(&all, 4)) {
        assert!((*t as f64 - a as f64 * 0.25).abs() <= 2.0, "test split of a class: {t} of {a}");
    }
    assert_eq!((ds.train.dimensions(0), ds.channels), ((300, 300), 1));
    let binary = open("elpv-binary", &OpenOptions::default()).unwrap();
    assert_eq!(counts(binary.test.labels.as_ref().unwrap(), 2).iter().sum::<usize>(), ds.test.len());
    assert_eq!(binary.test.labels.as_ref().unwrap().iter().filter(|&&l| l == 0).count(), test[0]);
}

#[test]
fn a_validation_split_is_carved_from_train_stratified_and_fixed() {
    let plain = open("digits", &OpenOptions::default()).unwrap();
    let with_val = open("digits", &OpenOptions { val_fraction: 0.2, ..Default::default() }).unwrap();
    assert_eq!(with_val.test.labels, plain.test.labels, "the test split does not move");
    assert_eq!(with_val.train.len() + with_val.val.len(), plain.train.len());
    let val = counts(with_val.val.labels.as_ref().unwrap(), 10);
    for (v, t) in val.iter().zip(counts(plain.train.labels.as_ref().unwrap(), 10)) {
        assert_eq!(*v, (t as f64 * 0.2).round() as usize);
    }
    let again = open("digits", &OpenOptions { val_fraction: 0.2, ..Default::default() }).unwrap();
    assert_eq!(again.val.image(3).unwrap().pixels, with_val.val.image(3).unwrap().pixels);
}
