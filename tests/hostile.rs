//! A corpus of hostile inputs, one line each in `CASES`: every reader (safetensors, pickle,
//! config.json, preprocessor_config.json, token files, IDX, CIFAR, PNG, parquet, image
//! folders) and every class of numeric flag. Each case runs the `igpt` binary under a 4 GiB
//! address-space limit and a time limit, and must end with a non-zero exit (not a panic, not
//! an abort) and a message naming the file or flag (the `expect` strings).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use igpt::data::prepare::{PrepareConfig, Quiet, prepare};
use igpt::data::spec::DataSpec;
use igpt::tokenizer::RgbImage;

/// How a case makes its files in its own folder `d`.
type Make = fn(&Path);

/// (name, make, command line with `{d}` = the case's folder and `{data}` = a valid prepared
/// folder, strings the error must contain)
#[rustfmt::skip]
const CASES: &[(&str, Make, &str, &[&str])] = &[
    // safetensors
    ("st-header-length-huge", st_header_huge, "info --model {d}/m", &["model.safetensors"]),
    ("st-truncated", st_truncated, "info --model {d}/m", &["model.safetensors"]),
    ("st-offsets-past-end", st_offsets_past_end, "info --model {d}/m", &["model.safetensors"]),
    ("st-nan-weights", st_nan_weights, "info --model {d}/m", &["model.safetensors", "NaN", "transformer.wte.weight"]),
    ("st-not-safetensors", st_garbage, "info --model {d}/m", &["model.safetensors"]),
    // config.json
    ("cfg-huge-n_embd", |d| cfg_set(d, "n_embd", 4_000_000_000u64.into()), "info --model {d}/m", &["n_embd"]),
    ("cfg-huge-n_layer", |d| cfg_set(d, "n_layer", 1_000_000_000u64.into()), "info --model {d}/m", &["n_layer"]),
    ("cfg-huge-n_inner", |d| cfg_set(d, "n_inner", 1_000_000_000u64.into()), "info --model {d}/m", &["n_inner"]),
    ("cfg-larger-than-weights", |d| cfg_set(d, "n_layer", 900u64.into()), "info --model {d}/m", &["transformer.h.3", "does not match config.json"]),
    ("cfg-n_head-0", |d| cfg_set(d, "n_head", 0u64.into()), "info --model {d}/m", &["n_head"]),
    ("cfg-negative-size", |d| cfg_set(d, "n_embd", (-64i64).into()), "info --model {d}/m", &["config.json"]),
    ("cfg-not-json", |d| { model(d); std::fs::write(d.join("m/config.json"), "{\"n_embd\": 64,").unwrap() }, "info --model {d}/m", &["config.json"]),
    ("cfg-nan-epsilon", |d| cfg_set(d, "layer_norm_epsilon", (-1.0).into()), "info --model {d}/m", &["layer_norm_epsilon"]),
    ("cfg-dropout-1.5", |d| cfg_set(d, "attn_pdrop", 1.5.into()), "info --model {d}/m", &["attn_pdrop"]),
    // preprocessor_config.json
    ("proc-70000-colours", proc_70000, "encode --model {d}/m {d}/m/../img.png", &["preprocessor_config.json", "65535"]),
    ("proc-nan-colour", |d| { model(d); patch(d, "m/preprocessor_config.json", "[", "[[NaN, 0, 0], ") }, "encode --model {d}/m {d}/img.png", &["preprocessor_config.json"]),
    ("proc-size-0", |d| proc_set(d, "size", serde_json::json!({"height": 0, "width": 0})), "encode --model {d}/m {d}/img.png", &["preprocessor_config.json", "size"]),
    ("proc-no-resize-small-image", |d| proc_set(d, "do_resize", false.into()), "encode --model {d}/m {d}/img.png", &["img.png", "do_resize"]),
    // pytorch_model.bin pickles
    ("pickle-memo-doubling", |d| torch_bin(d, &memo_bomb(), &[]), "info --model {d}/m", &["pytorch_model.bin", "bomb"]),
    ("pickle-deep-nesting", |d| torch_bin(d, &deep_nesting(), &[]), "info --model {d}/m", &["pytorch_model.bin", "nested"]),
    ("pickle-stride-0", |d| torch_bin(d, &one_tensor(1 << 40, 0), &[("0", vec![0; 4], false)]), "info --model {d}/m", &["pytorch_model.bin", "overlapping strides"]),
    ("pickle-deflate-bomb", |d| torch_bin(d, &one_tensor(16 << 20, 1), &[("0", vec![0; 64 << 20], true)]), "info --model {d}/m", &["pytorch_model.bin", "zip bomb"]),
    ("pickle-os-system", |d| torch_bin(d, b"\x80\x02cos\nsystem\n.", &[]), "info --model {d}/m", &["pytorch_model.bin", "os.system"]),
    ("pickle-not-zip", |d| { model(d); std::fs::remove_file(d.join("m/model.safetensors")).unwrap(); std::fs::write(d.join("m/pytorch_model.bin"), b"PK\x03\x04garbage").unwrap() }, "info --model {d}/m", &["pytorch_model.bin"]),
    // token files
    ("tok-count-wraps", |d| tok_patch(d, 12, &(u64::MAX / 2 + 1).to_le_bytes()), "train --data {d}/data --out {d}/run --steps 1", &["train.tokens"]),
    ("tok-zero-images", |d| tok_patch(d, 12, &0u64.to_le_bytes()), "train --data {d}/data --out {d}/run --steps 1", &["train.tokens"]),
    ("tok-truncated", |d| { data(d); let p = d.join("data/train.tokens"); let b = std::fs::read(&p).unwrap(); std::fs::write(&p, &b[..b.len() - 3]).unwrap() }, "train --data {d}/data --out {d}/run --steps 1", &["train.tokens", "truncated"]),
    ("tok-id-past-palette", |d| tok_patch(d, 64, &[0xff, 0xff]), "train --data {d}/data --out {d}/run --steps 1", &["train.tokens", "not below"]),
    ("tok-colours-0", |d| tok_patch(d, 28, &0u32.to_le_bytes()), "train --data {d}/data --out {d}/run --steps 1", &["train.tokens"]),
    ("tok-bad-magic", |d| tok_patch(d, 0, b"NOTTOKEN"), "train --data {d}/data --out {d}/run --steps 1", &["train.tokens", "magic"]),
    // IDX
    ("idx-size-wraps", |d| idx_pair(d, idx_images(0x1000_0000, 0x1000_0000, 0x10, 16)), "prepare --data idx:{d}/i,{d}/l --out {d}/o", &["IDX"]),
    ("idx-gzip-bomb", idx_gzip_bomb, "prepare --data idx:{d}/i,{d}/l --out {d}/o", &["gzip bomb"]),
    ("idx-bad-magic", |d| idx_pair(d, vec![0u8; 64]), "prepare --data idx:{d}/i,{d}/l --out {d}/o", &["IDX magic"]),
    ("idx-label-count", |d| { idx_pair(d, idx_images(4, 2, 2, 16)); std::fs::write(d.join("l"), [0, 0, 8, 1, 0, 0, 0, 9]).unwrap() }, "prepare --data idx:{d}/i,{d}/l --out {d}/o", &["labels for 4 images"]),
    // CIFAR
    ("cifar-partial-record", |d| std::fs::write(d.join("c.bin"), vec![7u8; 3073 * 2 + 5]).unwrap(), "prepare --data cifar:{d}/c.bin --out {d}/o", &["c.bin", "CIFAR records"]),
    ("cifar-empty", |d| std::fs::write(d.join("c.bin"), b"").unwrap(), "prepare --data cifar:{d}/c.bin --out {d}/o", &["c.bin"]),
    // PNG and folders
    ("png-10000-square", |d| { std::fs::create_dir_all(d.join("f")).unwrap(); std::fs::write(d.join("f/big.png"), png_header_only(10_000, 10_000)).unwrap() }, "prepare --data folder:{d}/f --out {d}/o --size 8", &["big.png", "shrink it first"]),
    ("png-100000-wide", |d| { std::fs::create_dir_all(d.join("f")).unwrap(); std::fs::write(d.join("f/wide.png"), png_header_only(100_000, 1)).unwrap() }, "prepare --data folder:{d}/f --out {d}/o --size 8", &["wide.png"]),
    ("png-truncated", |d| { std::fs::create_dir_all(d.join("f")).unwrap(); let b = png(8); std::fs::write(d.join("f/t.png"), &b[..b.len() / 2]).unwrap() }, "prepare --data folder:{d}/f --out {d}/o --size 8", &["t.png"]),
    ("png-not-an-image", |d| { std::fs::create_dir_all(d.join("f")).unwrap(); std::fs::write(d.join("f/x.png"), "hello").unwrap() }, "prepare --data folder:{d}/f --out {d}/o --size 8", &["x.png"]),
    ("folder-empty", |d| std::fs::create_dir_all(d.join("f")).unwrap(), "prepare --data folder:{d}/f --out {d}/o --size 8", &["no PNG or JPEG"]),
    ("folder-out-has-user-files", |d| { images(d); std::fs::create_dir_all(d.join("o")).unwrap(); std::fs::write(d.join("o/thesis.tex"), "x").unwrap() }, "prepare --data folder:{d}/f --out {d}/o --size 8", &["thesis.tex", "--out"]),
    // parquet
    ("parquet-not-parquet", |d| std::fs::write(d.join("p.parquet"), b"PAR1 not really PAR1").unwrap(), "prepare --data parquet:{d}/p.parquet --out {d}/o --size 8", &["p.parquet"]),
    ("parquet-garbage-image", |d| igpt::data::parquet::write(&d.join("p.parquet"), &[b"not a png".to_vec()], &[0], &["a"], 1).unwrap(), "prepare --data parquet:{d}/p.parquet --out {d}/o --size 8", &["p.parquet", "row 0"]),
    ("parquet-label-huge", |d| igpt::data::parquet::write(&d.join("p.parquet"), &[png(4)], &[1 << 40], &["a"], 1).unwrap(), "prepare --data parquet:{d}/p.parquet --out {d}/o --size 8", &["p.parquet", "label"]),
    // flags: training
    ("train-steps-0", data, "train --data {d}/data --out {d}/run --steps 0", &["--steps"]),
    ("train-epochs-nan", data, "train --data {d}/data --out {d}/run --epochs nan", &["--epochs"]),
    ("train-lr-nan", data, "train --data {d}/data --out {d}/run --steps 1 --lr nan", &["--lr"]),
    ("train-lr-inf", data, "train --data {d}/data --out {d}/run --steps 1 --lr inf", &["--lr"]),
    ("train-lr-negative", data, "train --data {d}/data --out {d}/run --steps 1 --lr=-1", &["--lr"]),
    ("train-clip-nan", data, "train --data {d}/data --out {d}/run --steps 1 --clip nan", &["--clip"]),
    ("train-batch-0", data, "train --data {d}/data --out {d}/run --steps 1 --batch 0", &["--batch"]),
    ("train-mask-prob-2", data, "train --data {d}/data --out {d}/run --steps 1 --objective bert --mask-prob 2", &["--mask-prob"]),
    ("train-model-too-big", data, "train --data {d}/data --out {d}/run --steps 1 --n-layer 1024 --n-embd 65536 --n-head 64", &["GiB", "--n-layer"]),
    ("train-dropout-nan", data, "train --data {d}/data --out {d}/run --steps 1 --dropout nan", &["--embd-pdrop"]),
    ("train-linear-attention-dropout", data, "train --data {d}/data --out {d}/run --steps 1 --attention linear --dropout 0.1", &["--attn-pdrop"]),
    ("train-resume-empty", data, "train --data {d}/data --out {d}/run --steps 1 --resume", &["--resume", "no checkpoint"]),
    // flags: data
    ("prepare-colors-0", images, "prepare --data folder:{d}/f --out {d}/o --colors 0", &["--colors"]),
    ("prepare-colors-70000", images, "prepare --data folder:{d}/f --out {d}/o --colors 70000", &["--colors"]),
    ("prepare-val-fraction-2", images, "prepare --data folder:{d}/f --out {d}/o --val-fraction 2", &["--val-fraction"]),
    ("prepare-val-split-empty", images, "prepare --data folder:{d}/f --out {d}/o --size 8 --val-fraction 0.1", &["--val-fraction", "validation split empty"]),
    ("prepare-size-0", images, "prepare --data folder:{d}/f --out {d}/o --size 0", &["--size"]),
    ("prepare-size-huge", images, "prepare --data folder:{d}/f --out {d}/o --size 1000000", &["--size"]),
    // flags: sampling and evaluation
    ("sample-scale-huge", model, "sample --model {d}/m --num 1 --scale 1000000", &["--scale"]),
    ("sample-num-huge", model, "sample --model {d}/m --num 100000000000", &["--num"]),
    ("sample-temperature-0", model, "sample --model {d}/m --num 1 --temperature 0", &["--temperature"]),
    ("sample-top-p-2", model, "sample --model {d}/m --num 1 --top-p 2", &["--top-p"]),
    ("complete-keep-rows-past-image", model, "complete --model {d}/m --images {d}/img.png --keep-rows 99", &["--keep-rows"]),
    ("eval-mask-prob-0", model, "eval --model {d}/m {d}/img.png --mask-prob 0", &["--mask-prob"]),
    ("eval-batch-0", model, "eval --model {d}/m {d}/img.png --batch 0", &["--batch"]),
    // labels
    ("finetune-label-past-labels-txt", |d| { data(d); std::fs::write(d.join("data/labels.txt"), "a\n").unwrap() }, "finetune --model {data}/../model --data {d}/data --out {d}/ft --steps 1", &["labels.txt", "label 1"]),
    ("probe-label-65535", probe_label_65535, "probe --model {data}/../model --data {d}/data --out {d}/pr", &["65535", "classes"]),
    ("finetune-lr-nan", data, "finetune --model {data}/../model --data {d}/data --out {d}/ft --lr nan", &["--lr"]),
    ("probe-max-iter-0", data, "probe --model {data}/../model --data {d}/data --out {d}/pr --max-iter 0", &["--max-iter"]),
    ("probe-tol-nan", data, "probe --model {data}/../model --data {d}/data --out {d}/pr --tol nan", &["--tol"]),
    ("probe-tol-0", data, "probe --model {data}/../model --data {d}/data --out {d}/pr --tol 0", &["--tol"]),
    ("sample-device-cuda-9", data, "sample --model {data}/../model --device cuda:9", &["cuda:9", "--device cpu"]),
    ("train-device-bad", data, "train --data {d}/data --out {d}/t --device tpu", &["--device", "cpu, cuda or cuda:N"]),
];

// ---------------------------------------------------------------- shared inputs

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-imagegpt/small")
}

/// A valid prepared folder (16x16 images, the small fixture model's 512-colour palette) and,
/// beside it, `model/`: the fixture model, whose palette and size it shares.
fn shared() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("igpt-hostile-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let imgs = root.join("imgs");
        for (c, class) in ["a", "b"].iter().enumerate() {
            std::fs::create_dir_all(imgs.join(class)).unwrap();
            for i in 0..10usize {
                let px: Vec<u8> = (0..40 * 40)
                    .flat_map(|j| [(j % 40 * 6 + i * 9) as u8, (c * 120 + j / 40 * 5) as u8, (i * 20) as u8])
                    .collect();
                RgbImage::new(40, 40, px).save_png(&imgs.join(class).join(format!("{i}.png"))).unwrap();
            }
        }
        let src = DataSpec::Folder(imgs).load(&|| {}).unwrap();
        let cfg = PrepareConfig {
            size: 32,
            palette: Some(fixture().join("preprocessor_config.json")),
            val_fraction: 0.3,
            ..Default::default()
        };
        prepare(src, &root.join("data"), &cfg, &Quiet).unwrap();
        copy_model(&root.join("model"));
        root.join("data")
    })
}

fn copy_model(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(fixture().join(f), dst.join(f)).unwrap();
    }
}

/// `{d}/m`: a copy of the small fixture model; `{d}/img.png`: an image for it.
fn model(d: &Path) {
    copy_model(&d.join("m"));
    std::fs::copy(fixture().join("test_image_0.png"), d.join("img.png")).unwrap();
}

/// `{d}/data`: a copy of the shared prepared folder.
fn data(d: &Path) {
    std::fs::create_dir_all(d.join("data")).unwrap();
    for e in std::fs::read_dir(shared()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, d.join("data").join(p.file_name().unwrap())).unwrap();
    }
}

/// `{d}/f`: a folder of four small images.
fn images(d: &Path) {
    std::fs::create_dir_all(d.join("f")).unwrap();
    for i in 0..4 {
        std::fs::write(d.join("f").join(format!("{i}.png")), png(6 + i)).unwrap();
    }
}

fn png(side: usize) -> Vec<u8> {
    common::png_bytes(side)
}

fn patch(d: &Path, file: &str, from: &str, to: &str) {
    let p = d.join(file);
    let text = std::fs::read_to_string(&p).unwrap().replacen(from, to, 1);
    std::fs::write(p, text).unwrap();
}

fn cfg_set(d: &Path, key: &str, v: serde_json::Value) {
    model(d);
    json_set(&d.join("m/config.json"), key, v);
}

fn proc_set(d: &Path, key: &str, v: serde_json::Value) {
    model(d);
    json_set(&d.join("m/preprocessor_config.json"), key, v);
    // a 16x16 image, not the model's 32x32
    std::fs::write(d.join("img.png"), png(16)).unwrap();
}

fn json_set(p: &Path, key: &str, v: serde_json::Value) {
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    j[key] = v;
    std::fs::write(p, j.to_string()).unwrap();
}

// ---------------------------------------------------------------- safetensors

fn st_bytes(d: &Path) -> Vec<u8> {
    model(d);
    std::fs::read(d.join("m/model.safetensors")).unwrap()
}

fn st_header_huge(d: &Path) {
    let mut b = st_bytes(d);
    b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(d.join("m/model.safetensors"), b).unwrap();
}

fn st_truncated(d: &Path) {
    let b = st_bytes(d);
    std::fs::write(d.join("m/model.safetensors"), &b[..b.len() / 2]).unwrap();
}

fn st_garbage(d: &Path) {
    model(d);
    std::fs::write(d.join("m/model.safetensors"), b"this is not a safetensors file at all").unwrap();
}

fn st_offsets_past_end(d: &Path) {
    let header = br#"{"transformer.wte.weight":{"dtype":"F32","shape":[513,64],"data_offsets":[0,131328]}}"#;
    model(d);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.extend_from_slice(&[0u8; 64]);
    std::fs::write(d.join("m/model.safetensors"), b).unwrap();
}

fn st_nan_weights(d: &Path) {
    model(d);
    let p = d.join("m/model.safetensors");
    let mut map = igpt::formats::TensorMap::new();
    igpt::formats::read_safetensors(&p, &mut map).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        map.into_iter().map(|(k, (t, _))| (k, t.shape, t.data)).collect();
    for (k, _, data) in &mut tensors {
        if k == "transformer.wte.weight" {
            data[5] = f32::NAN;
        }
    }
    let views: Vec<(String, Vec<usize>, &[f32])> =
        tensors.iter().map(|(k, s, d)| (k.clone(), s.clone(), &d[..])).collect();
    igpt::formats::write_safetensors(&p, &views).unwrap();
}

// ---------------------------------------------------------------- pickles

/// `{d}/m` with `pytorch_model.bin` (a zip of `archive/data.pkl` and storages) instead of
/// model.safetensors.
fn torch_bin(d: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>, bool)]) {
    model(d);
    std::fs::remove_file(d.join("m/model.safetensors")).unwrap();
    let f = std::fs::File::create(d.join("m/pytorch_model.bin")).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    z.start_file("archive/data.pkl", stored).unwrap();
    z.write_all(pickle).unwrap();
    for (key, bytes, deflate) in storages {
        z.start_file(format!("archive/data/{key}"), if *deflate { deflated } else { stored }).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// 456 bytes that double a tuple at each of 64 steps (memo put, get, get, TUPLE2).
fn memo_bomb() -> Vec<u8> {
    let mut p = b"\x80\x02]q\x00".to_vec();
    for _ in 0..64 {
        p.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    p.extend_from_slice(b"0.");
    p
}

fn deep_nesting() -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b'(', 100_000));
    p.push(b')');
    p.extend(std::iter::repeat_n(b't', 100_000));
    p.push(b'.');
    p
}

/// A state dict with one float tensor of `n` elements and stride `stride` over storage "0".
fn one_tensor(n: u64, stride: u8) -> Vec<u8> {
    let mut p = b"\x80\x02}(X\x16\x00\x00\x00transformer.wte.weight".to_vec();
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend_from_slice(
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ",
    );
    p.extend_from_slice(b"K\x00");
    p.push(0x8a);
    p.push(8);
    p.extend_from_slice(&n.to_le_bytes());
    p.extend_from_slice(b"\x85K");
    p.push(stride);
    p.extend_from_slice(b"\x85\x89tRu.");
    p
}

// ---------------------------------------------------------------- token files, IDX, PNG

fn tok_patch(d: &Path, at: usize, bytes: &[u8]) {
    data(d);
    let p = d.join("data/train.tokens");
    let mut b = std::fs::read(&p).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, b).unwrap();
}

fn idx_images(n: u32, h: u32, w: u32, pixels: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, h, w] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.resize(16 + pixels, 9);
    b
}

fn idx_pair(d: &Path, images: Vec<u8>) {
    std::fs::write(d.join("i"), images).unwrap();
    std::fs::write(d.join("l"), [0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 0, 1]).unwrap();
}

/// A gzip file of 17 members of 64 MiB of zeros each: 1.06 GiB inflated from about 1 MB.
fn idx_gzip_bomb(d: &Path) {
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    member.write_all(&idx_images(1 << 16, 32, 32, 0)[..16]).unwrap();
    member.write_all(&vec![0u8; 64 << 20]).unwrap();
    let member = member.finish().unwrap();
    let mut f = std::fs::File::create(d.join("i")).unwrap();
    for _ in 0..17 {
        f.write_all(&member).unwrap();
    }
    std::fs::write(d.join("l"), [0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 0, 1]).unwrap();
}

/// A PNG whose header claims `w` x `h` pixels, with a few bytes of image data.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&[0u8; 1024]).unwrap();
    chunk(&mut out, b"IDAT", &z.finish().unwrap());
    chunk(&mut out, b"IEND", &[]);
    out
}

fn proc_70000(d: &Path) {
    model(d);
    let clusters: Vec<[f64; 3]> = (0..70_000).map(|i| [(i % 100) as f64 / 100.0, 0.0, 0.0]).collect();
    json_set(&d.join("m/preprocessor_config.json"), "clusters", serde_json::json!(clusters));
    std::fs::copy(fixture().join("test_image_0.png"), d.join("img.png")).unwrap();
}

fn probe_label_65535(d: &Path) {
    data(d);
    std::fs::write(d.join("data/labels.txt"), "").unwrap();
    let p = d.join("data/train.tokens");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 2..].copy_from_slice(&u16::MAX.to_le_bytes());
    std::fs::write(p, b).unwrap();
}

// ---------------------------------------------------------------- the runner

const ADDRESS_SPACE: u64 = 4 << 30;
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Runs one case; Err(why) when it does not end as it must.
fn run_case(name: &str, make: Make, cmd: &str, expect: &[&str]) -> Result<(), String> {
    let d = std::env::temp_dir().join(format!("igpt-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    make(&d);
    let line = cmd.replace("{d}", d.to_str().unwrap()).replace("{data}", shared().to_str().unwrap());
    let mut c = Command::new(env!("CARGO_BIN_EXE_igpt"));
    // few malloc arenas: each reserves 64 MiB of address space, which the limit counts
    c.args(line.split(' ')).env("MALLOC_ARENA_MAX", "2").stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: ADDRESS_SPACE, rlim_max: ADDRESS_SPACE };
            libc::setrlimit(libc::RLIMIT_AS, &lim);
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            return Err(format!("{name}: still running after {TIME_LIMIT:?} (a hang)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&d);
    let why = match out.status.code() {
        None => Some("killed by a signal (an abort: out of memory?)".to_string()),
        Some(0) => Some("exit 0: the bad input was accepted".into()),
        Some(101) => Some("a panic".into()),
        Some(_) if err.contains("panicked") => Some("a panic".into()),
        Some(_) => expect.iter().find(|e| !err.contains(*e)).map(|e| format!("the message does not name `{e}`")),
    };
    match why {
        Some(w) => Err(format!("{name}: {w}\n  igpt {line}\n  stderr: {}", err.trim())),
        None => Ok(()),
    }
}

#[test]
fn every_hostile_input_ends_with_a_clear_error_and_no_crash() {
    assert!(CASES.len() >= 40);
    shared();
    let failures: Vec<String> = std::thread::scope(|s| {
        let chunks: Vec<_> = CASES.chunks(CASES.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || chunk.iter().filter_map(|(n, m, c, e)| run_case(n, *m, c, e).err()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let _ = std::fs::remove_dir_all(shared().parent().unwrap());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// A folder that links back to itself (and a second link to the same images) is read once:
/// no image lands in both the training and the validation split.
#[test]
fn a_symlink_loop_reads_every_image_once() {
    let tmp = tempfile::tempdir().unwrap();
    images(tmp.path());
    let f = tmp.path().join("f");
    std::os::unix::fs::symlink(&f, f.join("loop")).unwrap();
    std::os::unix::fs::symlink(f.join("0.png"), f.join("again.png")).unwrap();
    let split = DataSpec::Folder(f).load(&|| {}).unwrap();
    assert_eq!(split.train.items.len(), 4);
}
