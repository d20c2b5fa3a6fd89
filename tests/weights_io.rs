//! Checkpoint I/O: save -> load is bit-identical and in HF's layout; every kind of bad
//! input gives an error that names the problem, never a panic.

mod common;

use std::io::Write;
use std::path::Path;

use common::fixture;
use igpt::model::tensors::{read_model_dir, write_safetensors};
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
        let shapes = |m: &igpt::model::tensors::TensorMap| {
            m.iter().map(|(k, (t, _))| (k.clone(), t.shape.clone())).collect::<Vec<_>>()
        };
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
