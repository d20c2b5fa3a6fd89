//! Data readers, splits and `prepare` end to end, on the bundled emoji32 set and on files
//! the tests write; bad files give clear errors.

use std::path::Path;

use igpt::data::prepare::{PrepareConfig, Quiet, prepare, stratified_split};
use igpt::data::spec::DataSpec;
use igpt::data::tokens::TokenFile;
use igpt::data::{cifar, folder, idx};
use igpt::tokenizer::{ImageProcessorConfig, RgbImage};

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn counts(labels: impl Iterator<Item = u16>, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    labels.for_each(|l| c[l as usize] += 1);
    c
}

#[test]
fn emoji32_is_bundled_with_its_readme_counts() {
    let src = DataSpec::Emoji32.load(&|| {}).unwrap();
    assert_eq!(src.train.items.len(), 2752);
    let test = src.test.unwrap();
    assert_eq!(test.items.len(), 489);
    assert_eq!(src.train.classes[0], "Smileys & Emotion");
    assert_eq!(src.train.classes.len(), 8);
    assert_eq!(
        counts(src.train.items.iter().map(|i| i.label.unwrap()), 8),
        vec![288, 630, 270, 222, 370, 144, 448, 380]
    );
    assert_eq!(counts(test.items.iter().map(|i| i.label.unwrap()), 8), vec![50, 111, 48, 40, 66, 26, 80, 68]);
    // CIFAR planes are de-interleaved into RGB: the images are drawn on white, so pure
    // white dominates (a plane mix-up would make it rare).
    let px: Vec<&[u8]> = src.train.items[..100].iter().flat_map(|i| i.image.data.chunks_exact(3)).collect();
    let white = px.iter().filter(|p| **p == [255, 255, 255]).count() as f64 / px.len() as f64;
    assert!(white > 0.3, "{white}");
}

#[test]
fn cifar_files_round_trip_and_truncation_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs: Vec<RgbImage> = (0..3)
        .map(|k| RgbImage::new(32, 32, (0..32 * 32 * 3).map(|i| ((i * (k + 1)) % 251) as u8).collect()))
        .collect();
    let recs = cifar::write_records(&[(4, &imgs[0]), (0, &imgs[1]), (9, &imgs[2])]);
    let p = tmp.path().join("data_batch_1.bin");
    std::fs::write(&p, &recs).unwrap();
    let items = cifar::read(&p, None).unwrap();
    assert_eq!(items.iter().map(|i| i.label.unwrap()).collect::<Vec<_>>(), vec![4, 0, 9]);
    assert_eq!(items[2].image, imgs[2]);
    // gzipped, through the --data spec, with a test file
    std::fs::write(tmp.path().join("train.bin.gz"), gz(&recs)).unwrap();
    std::fs::write(tmp.path().join("test_batch.bin"), &recs[..3073]).unwrap();
    let spec: DataSpec =
        format!("cifar:{},{}", tmp.path().join("train.bin.gz").display(), tmp.path().join("test_batch.bin").display())
            .parse()
            .unwrap();
    let src = spec.load(&|| {}).unwrap();
    assert_eq!((src.train.items.len(), src.test.unwrap().items.len()), (3, 1));
    // CIFAR-100: two label bytes (coarse, fine); the fine label is used.
    let mut c100 = vec![7u8, 42];
    c100.extend(&recs[1..3073]);
    assert_eq!(cifar::parse(&c100, 2, Path::new("x")).unwrap()[0].label, Some(42));
    // Truncated
    std::fs::write(&p, &recs[..3073 * 2 + 100]).unwrap();
    let err = cifar::read(&p, Some(1)).err().unwrap().to_string();
    assert!(err.contains("data_batch_1.bin") && err.contains("truncated"), "{err}");
}

#[test]
fn idx_files_read_raw_and_gzipped_and_bad_magic_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let images: Vec<Vec<u8>> = (0..4).map(|k| (0..28 * 28).map(|i| ((i + k * 50) % 256) as u8).collect()).collect();
    let (ib, lb) = idx::write(&images, 28, 28, &[3, 1, 4, 1]);
    let (pi, pl) = (tmp.path().join("imgs-idx3-ubyte.gz"), tmp.path().join("labels-idx1-ubyte"));
    std::fs::write(&pi, gz(&ib)).unwrap();
    std::fs::write(&pl, &lb).unwrap();
    let items = idx::read(&pi, Some(&pl)).unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[2].label, Some(4));
    assert_eq!((items[1].image.width, items[1].image.height), (28, 28));
    // grey replicated into RGB
    assert_eq!(&items[1].image.data[..6], &[50, 50, 50, 51, 51, 51]);
    let spec: DataSpec = format!("idx:{},{}", pi.display(), pl.display()).parse().unwrap();
    assert_eq!(spec.load(&|| {}).unwrap().train.items.len(), 4);
    // labels file given as images: bad magic, named
    let err = idx::read(&pl, None).err().unwrap().to_string();
    assert!(err.contains("bad IDX magic 0x00000801") && err.contains("labels-idx1-ubyte"), "{err}");
}

#[test]
fn folders_label_by_subfolder_and_reject_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, n) in [("zebra", 2), ("apple", 3)] {
        let d = tmp.path().join(class).join("nested");
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            RgbImage::new(5, 7, vec![(i * 40) as u8; 5 * 7 * 3]).save_png(&d.join(format!("{i}.png"))).unwrap();
        }
    }
    let split = folder::read(tmp.path(), None, &|| {}).unwrap();
    assert_eq!(split.classes, vec!["apple", "zebra"]);
    assert_eq!(counts(split.items.iter().map(|i| i.label.unwrap()), 2), vec![3, 2]);
    // corrupt PNG: named in the error
    std::fs::write(tmp.path().join("apple/broken.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
    let err = folder::read(tmp.path(), None, &|| {}).err().unwrap().to_string();
    assert!(err.contains("broken.png"), "{err}");
    // empty folder
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = folder::read(&empty, None, &|| {}).err().unwrap().to_string();
    assert!(err.contains("no PNG or JPEG images"), "{err}");
    assert!("folderx:abc".parse::<DataSpec>().is_err());
    assert!("nope".parse::<DataSpec>().unwrap_err().to_string().contains("emoji32"));
}

#[test]
fn stratified_split_keeps_class_proportions() {
    let labels: Vec<Option<u16>> = (0..1000).map(|i| Some(if i < 800 { 0 } else { 1 })).collect();
    let (tr, va) = stratified_split(&labels, 0.1, 7);
    assert_eq!((tr.len(), va.len()), (900, 100));
    assert_eq!(va.iter().filter(|&&i| i >= 800).count(), 20);
    assert_eq!(stratified_split(&labels, 0.1, 7), (tr.clone(), va.clone()));
    assert_ne!(stratified_split(&labels, 0.1, 8).1, va);
}

#[test]
fn prepare_writes_palette_tokens_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("imgs");
    // Two classes of 12 grey-level images, 16x12, resized to 8x8.
    for (class, base) in [("dark", 20u8), ("light", 200u8)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..12u8 {
            let px: Vec<u8> = (0..16 * 12)
                .flat_map(|j| {
                    let v = base.wrapping_add(i * 3 + (j % 7) as u8);
                    [v, v, v]
                })
                .collect();
            RgbImage::new(16, 12, px).save_png(&data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let out = tmp.path().join("prep");
    let src = DataSpec::Folder(data).load(&|| {}).unwrap();
    let cfg = PrepareConfig { size: 8, colors: 512, val_fraction: 0.25, ..Default::default() };
    let rep = prepare(src, &out, &cfg, &Quiet).unwrap();
    // k is capped at the number of distinct colours of a grey set
    assert!(rep.colors < 256 && rep.colors > 10, "{}", rep.colors);
    assert_eq!((rep.counts.train, rep.counts.val, rep.counts.test), (18, 6, 0));
    assert_eq!(rep.class_counts_train, vec![9, 9]);
    for f in ["preprocessor_config.json", "train.tokens", "val.tokens", "labels.txt", "prepare.json", "preview.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let proc = ImageProcessorConfig::from_file(&out.join("preprocessor_config.json")).unwrap();
    assert_eq!((proc.hw(), proc.n_clusters()), ((8, 8), rep.colors));
    let tf = TokenFile::open(&out.join("train.tokens")).unwrap();
    assert_eq!((tf.count, tf.height, tf.colors), (18, 8, rep.colors));
    assert!(tf.image(0).iter().all(|&t| (t as usize) < rep.colors));
    // The tokens are exactly what HF's processor gives for the resized image.
    assert!(rep.psnr_db > 40.0, "grey palette of this size is near lossless: {}", rep.psnr_db);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("prepare.json")).unwrap()).unwrap();
    for k in ["palette_fit_s", "palette_inertia_per_pixel", "images_per_s"] {
        assert!(json[k].as_f64().is_some(), "{k}");
    }
}

fn png_bytes(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}
use image::ImageEncoder;

#[test]
fn parquet_files_as_the_hub_stores_them() {
    use igpt::data::parquet;
    let tmp = tempfile::tempdir().unwrap();
    // 7 training images of two sizes in 3 row groups, 2 test images; labels 0..2.
    let imgs: Vec<RgbImage> = (0..9)
        .map(|k| {
            let s = if k % 2 == 0 { 20 } else { 12 };
            RgbImage::new(s, s, (0..s * s * 3).map(|i| ((i * 7 + k * 31) % 256) as u8).collect())
        })
        .collect();
    let pngs: Vec<Vec<u8>> = imgs.iter().map(png_bytes).collect();
    let labels: Vec<i64> = (0..9).map(|k| k % 3).collect();
    let names = ["cat", "dog", "eel"];
    let train = tmp.path().join("train-00000-of-00001.parquet");
    let test_dir = tmp.path().join("test");
    std::fs::create_dir(&test_dir).unwrap();
    let test = test_dir.join("0000.parquet");
    parquet::write(&train, &pngs[..7], &labels[..7], &names, 3).unwrap();
    parquet::write(&test, &pngs[7..], &labels[7..], &names, 10).unwrap();

    let read = parquet::read(&train, &Default::default(), None, &|| {}).unwrap();
    assert_eq!(read.items.len(), 7);
    assert_eq!(read.class_names.as_deref(), Some(&["cat".to_string(), "dog".into(), "eel".into()][..]));
    for (k, it) in read.items.iter().enumerate() {
        assert_eq!(it.image, imgs[k], "image {k} decoded from the bytes column");
        assert_eq!(it.label, Some(labels[k] as u16));
    }

    let spec: DataSpec = format!("parquet:{},{}", train.display(), test.display()).parse().unwrap();
    let src = spec.load(&|| {}).unwrap();
    assert_eq!(src.train.items.len(), 7);
    let t = src.test.unwrap();
    assert_eq!(t.items.len(), 2);
    assert_eq!(t.items[1].image, imgs[8]);
    assert_eq!(src.train.classes, vec!["cat", "dog", "eel"]);

    // Column names are configurable; a wrong one names the file's columns.
    let cols = parquet::Columns { image: Some("picture".into()), label: None };
    let err = parquet::read(&train, &cols, None, &|| {}).err().unwrap().to_string();
    assert!(
        err.contains("train-00000-of-00001.parquet") && err.contains("picture") && err.contains("image, label"),
        "{err}"
    );
    let cols = parquet::Columns { image: Some("image".into()), label: Some("label".into()) };
    assert_eq!(parquet::read(&train, &cols, None, &|| {}).unwrap().items.len(), 7);

    // A file that is not parquet, and a corrupt image cell.
    let bad = tmp.path().join("bad.parquet");
    std::fs::write(&bad, b"PAR1 not really").unwrap();
    let err = parquet::read(&bad, &Default::default(), None, &|| {}).err().unwrap().to_string();
    assert!(err.contains("bad.parquet") && err.contains("parquet"), "{err}");
    let corrupt = tmp.path().join("corrupt.parquet");
    parquet::write(&corrupt, &[b"not a png".to_vec()], &[0], &names, 10).unwrap();
    let err = parquet::read(&corrupt, &Default::default(), None, &|| {}).err().unwrap().to_string();
    assert!(err.contains("corrupt.parquet") && err.contains("row 0"), "{err}");

    // prepare end to end through the CLI.
    let out = tmp.path().join("prep");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_igpt"))
        .args(["prepare", "--data", &format!("parquet:{},{}", train.display(), test.display())])
        .args(["--out", out.to_str().unwrap(), "--size", "8", "--colors", "16", "--val-fraction", "0.3", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["counts"]["test"], 2);
    assert_eq!(rep["counts"]["train"].as_u64().unwrap() + rep["counts"]["val"].as_u64().unwrap(), 7);
    assert_eq!(std::fs::read_to_string(out.join("labels.txt")).unwrap().lines().collect::<Vec<_>>(), names);
}
