//! Nothing lost under faults: `igpt train` killed with SIGKILL at 20 moments (checkpoint
//! writes included) always leaves a latest checkpoint and a `best/` that load, and `--resume`
//! then reproduces the uninterrupted run bit for bit; a stale `best/` and the leftovers of
//! interrupted writes are repaired on the next start; `prepare` into an existing folder is
//! all or nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use igpt::data::prepare::{PrepareConfig, Quiet, prepare};
use igpt::data::spec::DataSpec;
use igpt::model::{ModelKind, load_model};
use igpt::train::checkpoint::{list, step_of};
use igpt::train::{NoObserver, TrainConfig, TrainObserver, run};

/// 40 colourful 12x12 images in two classes.
fn images(tmp: &Path) -> PathBuf {
    let imgs = tmp.join("imgs");
    common::two_class_images(&imgs);
    imgs
}

fn prepared(tmp: &Path) -> PathBuf {
    let out = tmp.join("data");
    let src = DataSpec::Folder(images(tmp)).load(&|| {}).unwrap();
    prepare(src, &out, &PrepareConfig { size: 8, colors: 16, val_fraction: 0.2, ..Default::default() }, &Quiet)
        .unwrap();
    out
}

/// A small deterministic generator for the kill times.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn train_args(data: &Path, out: &Path) -> Vec<String> {
    let s = |x: &str| x.to_string();
    vec![
        s("train"),
        s("--data"),
        data.display().to_string(),
        s("--out"),
        out.display().to_string(),
        s("--preset"),
        s("tiny"),
        s("--batch"),
        s("4"),
        s("--steps"),
        s("400"),
        s("--warmup"),
        s("4"),
        s("--eval-every"),
        s("1"),
        s("--eval-batches"),
        s("1"),
        s("--log-every"),
        s("1"),
        s("--keep"),
        s("2"),
        s("--seed"),
        s("3"),
        s("--threads"),
        s("1"),
        s("--json"),
    ]
}

fn igpt() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_igpt"));
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// (step, loss) of every train line and (step, val loss) of every eval line, as text, so
/// that equality is bit for bit.
fn metrics(run: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {} {}", v["kind"], v["step"], v["loss"], v["val_loss"])
        })
        .collect()
}

/// After a kill: the newest step checkpoint and best/ both load (if any checkpoint exists).
fn check_loadable(run: &Path, moment: usize) {
    let Some((step, latest)) = list(run).pop() else {
        assert!(!run.join("best").exists() || load_model(&run.join("best")).is_ok(), "kill {moment}: bad best/");
        return;
    };
    let m = load_model(&latest).unwrap_or_else(|e| panic!("kill {moment}: step-{step} does not load: {e}"));
    assert_eq!(m.kind, ModelKind::CausalLm);
    let b = load_model(&run.join("best")).unwrap_or_else(|e| panic!("kill {moment}: best/ does not load: {e}"));
    assert_eq!(b.params.len(), m.params.len());
}

#[test]
fn sigkill_at_20_moments_loses_nothing_and_resume_reproduces_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let clean = tmp.path().join("clean");
    let t0 = Instant::now();
    let out = igpt().args(train_args(&data, &clean)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full = t0.elapsed().as_secs_f64();

    let killed = tmp.path().join("killed");
    let mut rng = Lcg(17);
    let (mut kills, mut mid_write) = (0, 0);
    // at least 20 kills, and on until three of them have landed in the middle of a write
    for moment in 0..150 {
        if kills >= 20 && mid_write >= 3 {
            break;
        }
        let mut args = train_args(&data, &killed);
        if !list(&killed).is_empty() {
            args.push("--resume".into());
        }
        // what earlier kills left (the new process cleans it up at its start)
        let before: std::collections::HashSet<String> = leftovers(&killed).into_iter().collect();
        // a checkpoint write of this start in progress (not the small files' atomic writes)
        let fresh = || {
            leftovers(&killed)
                .into_iter()
                .any(|n| !before.contains(&n) && (n.starts_with(".step-") || n.starts_with(".best.")))
        };
        let mut child = igpt().args(&args).spawn().unwrap();
        if moment % 3 == 0 {
            // every third kill: the moment a checkpoint write is seen in progress
            let t0 = Instant::now();
            while !fresh() && t0.elapsed().as_secs_f64() < full && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_micros(50));
            }
        } else {
            // up to a 24th of a whole run after this start: over the starts the kills land
            // at moments spread over the run (start-up, steps, evaluations, checkpoint writes)
            std::thread::sleep(Duration::from_secs_f64(rng.next() * full / 24.0));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            break; // finished before the kill came
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_none(), "kill {moment}: igpt failed by itself: {err}");
        mid_write += fresh() as usize;
        check_loadable(&killed, moment);
    }
    eprintln!("{kills} kills, {mid_write} in the middle of a write; a whole run takes {full:.2} s");
    assert!(mid_write >= 1, "no kill landed in a checkpoint write");
    assert!(kills >= 18, "only {kills} of the runs were killed (the run takes {full:.2} s)");
    let mut args = train_args(&data, &killed);
    if !list(&killed).is_empty() {
        args.push("--resume".into());
    }
    let out = igpt().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(metrics(&killed), metrics(&clean), "the resumed run's losses differ from the uninterrupted run's");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (a, b) = (clean.join("checkpoints/step-400").join(f), killed.join("checkpoints/step-400").join(f));
        assert!(std::fs::read(a).unwrap() == std::fs::read(b).unwrap(), "{f} differs");
    }
    assert_eq!(step_of(&killed.join("best")), step_of(&clean.join("best")));
    // nothing left from the interrupted writes
    assert!(leftovers(&killed).is_empty(), "leftovers {:?}", leftovers(&killed));
}

/// What interrupted writes left in a run folder and its checkpoints folder.
fn leftovers(run: &Path) -> Vec<String> {
    [run.to_path_buf(), run.join("checkpoints")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-") || n.contains(".del-"))
        .collect()
}

#[derive(Default)]
struct Notes(Vec<String>);
impl TrainObserver for Notes {
    fn note(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

#[test]
fn resume_repairs_a_missing_or_stale_best_and_removes_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = prepared(tmp.path());
    let out = tmp.path().join("run");
    let cfg = TrainConfig {
        data: data.clone(),
        out: out.clone(),
        batch: 4,
        steps: Some(6),
        warmup: 1,
        lr: 1e-3,
        eval_every: 2,
        eval_batches: 1,
        keep: 3,
        seed: 1,
        ..Default::default()
    };
    run(&cfg, false, &mut NoObserver).unwrap();
    let best_step = step_of(&out.join("best")).unwrap();
    assert_eq!(list(&out).len(), 3);
    // --resume on a fresh folder is refused, naming the flag
    let err = run(&TrainConfig { out: tmp.path().join("empty"), ..cfg.clone() }, true, &mut NoObserver).unwrap_err();
    assert!(err.to_string().contains("--resume") && err.to_string().contains("no checkpoint"), "{err}");

    for broken in ["missing", "stale"] {
        let best = out.join("best");
        std::fs::remove_dir_all(&best).unwrap();
        if broken == "stale" {
            // an older model in best/ (a kill after the step checkpoint, before best/)
            let (_, oldest) =
                list(&out).into_iter().find(|(s, _)| *s < best_step).unwrap_or_else(|| list(&out)[0].clone());
            std::fs::create_dir(&best).unwrap();
            for f in std::fs::read_dir(&oldest).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, best.join(f.file_name().unwrap())).unwrap();
            }
        }
        std::fs::create_dir_all(out.join(".best.tmp-4194399")).unwrap();
        std::fs::create_dir_all(out.join("checkpoints/.step-2.del-4194399")).unwrap();
        std::fs::write(out.join("metrics.jsonl.tmp-4194399"), "half a li").unwrap();
        let mut notes = Notes::default();
        run(&cfg, true, &mut notes).unwrap();
        assert_eq!(step_of(&best), Some(best_step), "{broken}: best/ was not repaired");
        load_model(&best).unwrap();
        assert!(notes.0.iter().any(|n| n.contains("restored") && n.contains("best")), "{broken}: {:?}", notes.0);
        assert_eq!(notes.0.iter().filter(|n| n.contains("removed")).count(), 3, "{:?}", notes.0);
        assert!(!out.join(".best.tmp-4194399").exists() && !out.join("metrics.jsonl.tmp-4194399").exists());
    }
}

/// The files of a prepared folder except prepare.json (it records timings).
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "prepare.json")
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn prepare_into_an_existing_folder_is_all_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = images(tmp.path());
    let prep = |out: &Path, colors: &str| {
        let src = format!("folder:{}", imgs.display());
        let args = ["prepare", "--data", &src, "--out", out.to_str().unwrap(), "--size", "8"];
        let mut c = igpt();
        c.args(args).args(["--colors", colors, "--val-fraction", "0.2"]);
        c
    };
    // reference folders: 16 colours (the one in place) and 8 colours (the new one)
    let (old_ref, new_ref) = (tmp.path().join("old"), tmp.path().join("new"));
    assert!(prep(&old_ref, "16").status().unwrap().success());
    let t0 = Instant::now();
    assert!(prep(&new_ref, "8").status().unwrap().success());
    let full = t0.elapsed().as_secs_f64();
    let (old, new) = (contents(&old_ref), contents(&new_ref));
    assert_ne!(old, new);

    let target = tmp.path().join("data");
    let mut rng = Lcg(5);
    let (mut saw_old, mut saw_new) = (0, 0);
    for _ in 0..12 {
        std::fs::remove_dir_all(&target).ok();
        assert!(prep(&target, "16").status().unwrap().success());
        let mut child = prep(&target, "8").spawn().unwrap();
        std::thread::sleep(Duration::from_secs_f64(rng.next() * full * 0.9));
        let _ = child.kill();
        child.wait().unwrap();
        let now = contents(&target);
        if now == old {
            saw_old += 1;
        } else if now == new {
            saw_new += 1;
        } else {
            panic!("a kill left a mixed folder: {:?}", now.iter().map(|f| &f.0).collect::<Vec<_>>());
        }
    }
    assert!(saw_old > 0, "no kill landed before the swap ({saw_new} new)");
    // the next prepare cleans what the killed ones left beside the folder
    assert!(prep(&target, "8").status().unwrap().success());
    assert_eq!(contents(&target), new);
    let beside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".data."))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // a folder with files prepare did not write is refused, and left as it was
    std::fs::write(target.join("notes.txt"), "mine").unwrap();
    let out = prep(&target, "16").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("notes.txt") && err.contains("--out"), "{err}");
    assert_eq!(std::fs::read_to_string(target.join("notes.txt")).unwrap(), "mine");
}
