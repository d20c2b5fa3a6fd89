//! Checkpoint I/O: save -> load is bit-identical and in HF's layout; every kind of bad
//! input gives an error that names the problem, never a panic.

mod common;

use std::io::Write;
use std::path::Path;

use common::fixture;
use igpt::formats::{read_model_dir, write_safetensors};
use igpt::model::{ModelKind, load_model, load_model_as, save_model};
use igpt::{Error, ImageGptConfig};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn save_load_roundtrip_is_bit_identical_and_hf_shaped() {
    for name in ["tiny", "tiny-cls", "tiny-base", "small"] {
        let m = load_model(&fixture(name)).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        save_model(&m, tmp.path()).unwrap();
        let back = load_model(tmp.path()).unwrap();
        assert_eq!(back.kind, m.kind, "{name}");
        assert!(back.params == m.params, "{name}: weights changed in a save/load round trip");
        assert_eq!(back.config.n_layer, m.config.n_layer);
        // Same keys and shapes as the file transformers wrote.
        let ours = read_model_dir(tmp.path()).unwrap();
        let theirs = read_model_dir(&fixture(name)).unwrap();
        let shapes =
            |m: &igpt::formats::TensorMap| m.iter().map(|(k, (t, _))| (k.clone(), t.shape.clone())).collect::<Vec<_>>();
        assert_eq!(shapes(&ours), shapes(&theirs), "{name}: key set or shapes differ from HF's file");
        // No temporary files are left behind.
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["model_type"], "imagegpt");
        assert_eq!(cfg["architectures"][0], m.kind.hf_architecture());
    }
}

#[test]
fn causal_checkpoint_loads_as_base_model() {
    let base = load_model_as(&fixture("tiny"), Some(ModelKind::Base)).unwrap();
    assert!(base.layout.head.is_none());
    assert!(base.layout.find("h.0.ln_1.weight").is_some());
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let m = load_model(&fixture("tiny")).unwrap();
    let all: Vec<(String, Vec<usize>, &[f32])> =
        m.layout.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), &m.params[e.range.clone()])).collect();

    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny").join("config.json"), tmp.path().join("config.json")).unwrap();
    let without: Vec<_> = all.iter().filter(|(n, _, _)| n != "transformer.h.1.mlp.c_fc.bias").cloned().collect();
    write_safetensors(&tmp.path().join("model.safetensors"), &without).unwrap();
    let err = load_model(tmp.path()).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { name, .. } if name == "transformer.h.1.mlp.c_fc.bias"), "{err}");
    assert!(err.to_string().contains("transformer.h.1.mlp.c_fc.bias"));

    let mut wrong = all.clone();
    let i = wrong.iter().position(|(n, _, _)| n == "transformer.h.0.attn.c_attn.weight").unwrap();
    wrong[i].1 = vec![96, 32]; // transposed: nn.Linear orientation instead of Conv1D
    write_safetensors(&tmp.path().join("model.safetensors"), &wrong).unwrap();
    let err = load_model(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { name, expected, got, .. } if name == "transformer.h.0.attn.c_attn.weight" && expected == &vec![32, 96] && got == &vec![96, 32]),
        "{err}"
    );

    let extra_data = vec![0f32; 4];
    let mut extra = all.clone();
    extra.push(("transformer.h.7.ln_1.weight".into(), vec![4], &extra_data));
    write_safetensors(&tmp.path().join("model.safetensors"), &extra).unwrap();
    let err = load_model(tmp.path()).unwrap_err();
    assert!(matches!(&err, Error::UnexpectedTensor { name, .. } if name == "transformer.h.7.ln_1.weight"), "{err}");
}

#[test]
fn truncated_safetensors_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny"), tmp.path());
    std::fs::remove_file(tmp.path().join("pytorch_model.bin")).unwrap();
    let bytes = std::fs::read(tmp.path().join("model.safetensors")).unwrap();
    std::fs::write(tmp.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("truncated"), "{err}");
}

/// A torch.save-style zip whose data.pkl is `pkl`.
fn write_torch_zip(path: &Path, pkl: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    z.finish().unwrap();
}

#[test]
fn pickle_with_code_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny").join("config.json"), tmp.path().join("config.json")).unwrap();
    // The classic exploit: GLOBAL os.system, then REDUCE with a shell command.
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03.";
    write_torch_zip(&tmp.path().join("pytorch_model.bin"), evil);
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("refusing to load global `os.system`"), "{err}");
    // An opcode outside the state-dict subset (INST, 'i').
    write_torch_zip(&tmp.path().join("pytorch_model.bin"), b"\x80\x02(i__builtin__\nobject\n.");
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("opcode 0x69 is not allowed"), "{err}");
    // A pickle cut short.
    write_torch_zip(&tmp.path().join("pytorch_model.bin"), b"\x80\x02}q\x00(X\x05\x00");
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn inconsistent_config_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny"), tmp.path());
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).unwrap()).unwrap();
    cfg["n_head"] = 5.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("n_embd (32) must be a positive multiple of n_head (5)"),
        "{err}"
    );
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a valid ImageGPT config.json"), "{err}");
    assert!(load_model(&tmp.path().join("nope")).is_err());
    assert!(ImageGptConfig::from_file(&tmp.path().join("missing.json")).is_err());
}

#[test]
fn not_an_image_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("fake.png");
    std::fs::write(&p, b"this is not a png").unwrap();
    let err = igpt::tokenizer::RgbImage::open(&p).unwrap_err().to_string();
    assert!(err.contains("fake.png") && err.contains("not a readable image"), "{err}");
}

#[test]
fn sharded_safetensors_load_through_their_index() {
    let m = load_model(&fixture("tiny")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("tiny").join("config.json"), tmp.path().join("config.json")).unwrap();
    let all: Vec<(String, Vec<usize>, &[f32])> =
        m.layout.entries.iter().map(|e| (e.name.clone(), e.shape.clone(), &m.params[e.range.clone()])).collect();
    let (a, b) = all.split_at(all.len() / 2);
    write_safetensors(&tmp.path().join("model-00001-of-00002.safetensors"), a).unwrap();
    write_safetensors(&tmp.path().join("model-00002-of-00002.safetensors"), b).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.clone(), "model-00001-of-00002.safetensors".into()))
        .chain(b.iter().map(|t| (t.0.clone(), "model-00002-of-00002.safetensors".into())))
        .collect();
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let back = load_model(tmp.path()).unwrap();
    assert!(back.params == m.params);
    // An index naming a tensor that no shard has is an error naming it.
    let mut map2 = map.clone();
    map2.insert("transformer.h.9.ln_1.weight".into(), "model-00001-of-00002.safetensors".into());
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        serde_json::json!({"weight_map": map2}).to_string(),
    )
    .unwrap();
    let err = load_model(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("transformer.h.9.ln_1.weight"), "{err}");
}

#[test]
fn rgba_grey_and_palette_pngs_convert_as_pillow_rgb() {
    use image::ImageEncoder;
    let tmp = tempfile::tempdir().unwrap();
    let enc = |name: &str, data: &[u8], ct: image::ExtendedColorType| {
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf).write_image(data, 2, 1, ct).unwrap();
        let p = tmp.path().join(name);
        std::fs::write(&p, buf).unwrap();
        igpt::tokenizer::RgbImage::open(&p).unwrap().data
    };
    // RGBA: alpha dropped, not composited (Pillow convert("RGB")).
    assert_eq!(
        enc("a.png", &[10, 20, 30, 0, 200, 100, 50, 128], image::ExtendedColorType::Rgba8),
        vec![10, 20, 30, 200, 100, 50]
    );
    // Grey and grey+alpha: replicated.
    assert_eq!(enc("g.png", &[7, 250], image::ExtendedColorType::L8), vec![7, 7, 7, 250, 250, 250]);
    assert_eq!(enc("ga.png", &[9, 0, 99, 255], image::ExtendedColorType::La8), vec![9, 9, 9, 99, 99, 99]);
    // Palette PNG (hand-built: PLTE with two colours, 1-bit indices 0 then 1).
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |png: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend(data);
        png.extend(&c);
        png.extend(crc32(&c).to_be_bytes());
    };
    chunk(&mut png, b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 1, 8, 3, 0, 0, 0]);
    chunk(&mut png, b"PLTE", &[255, 0, 0, 0, 0, 255]);
    let raw = [0u8, 0, 1]; // filter byte, index 0, index 1
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, &raw).unwrap();
    chunk(&mut png, b"IDAT", &z.finish().unwrap());
    chunk(&mut png, b"IEND", &[]);
    let p = tmp.path().join("p.png");
    std::fs::write(&p, png).unwrap();
    assert_eq!(igpt::tokenizer::RgbImage::open(&p).unwrap().data, vec![255, 0, 0, 0, 0, 255]);
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}
