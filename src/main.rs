//! The `igpt` command line: parses arguments, calls the library, draws progress, prints
//! results (human-readable, or JSON on stdout with `--json`).

mod cli;

use clap::{Parser, Subcommand};

/// ImageGPT in Rust: HF-compatible models, tokenizer, and a fast CPU engine.
#[derive(Parser)]
#[command(name = "igpt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// parsed once per run: the size of the largest arguments does not matter
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on bundled emoji32 (prepare, train, sample, complete, probe,
    /// fine-tune) ending in report.html.
    Demo(cli::demo::DemoArgs),
    /// The engine (kernel set, CPU features, threads) and, with --model, a model directory's
    /// config summary, parameter count and palette size.
    Info(cli::info::InfoArgs),
    /// Palette token ids of images (HF image-processor semantics, no SOS).
    Encode(cli::encode::EncodeArgs),
    /// NLL of images under a model (nats per pixel token, and bits per token).
    Eval(cli::eval::EvalArgs),
    /// Turn an image collection into a palette and token files for training.
    Prepare(cli::prepare::PrepareArgs),
    /// Train a model on prepared data (GPT or BERT objective).
    Train(cli::train::TrainArgs),
    /// Linear probes of every layer's features (and a raw-pixel baseline).
    Probe(cli::probe::ProbeArgs),
    /// Fine-tune a pretrained model into a classifier (generative + classification loss).
    Finetune(cli::finetune::FinetuneArgs),
    /// Accuracy of a classifier on a prepared split.
    EvalCls(cli::finetune::EvalClsArgs),
    /// Sample images from a model ([SOS] -> full image), as a PNG grid.
    Sample(cli::sample::SampleArgs),
    /// Complete partial images (top rows kept, the rest sampled), as a PNG grid.
    Complete(cli::complete::CompleteArgs),
    /// Re-save a model directory as config.json + model.safetensors (HF layout).
    Convert(cli::convert::ConvertArgs),
    /// The architecture study's report from its runs (tools/architecture_study.sh): tables,
    /// architectures.json and charts.
    Study(cli::study::StudyArgs),
    /// Benchmarks of the engine (random weights).
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() {
    // a panic that the library turns into an error (a third-party reader on a corrupt file)
    // is not printed; any other is
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !igpt::error::containing_panics() {
            default_hook(info);
        }
    }));
    let cli = Cli::parse();
    // A kernel set the CPU lacks would crash (illegal instruction) mid-run: refuse it first.
    if let Err(msg) = igpt::backend::isa::requested() {
        eprintln!("error: {msg}");
        std::process::exit(2);
    }
    let result = match cli.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Encode(a) => cli::encode::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Prepare(a) => cli::prepare::run(a),
        Command::Train(a) => cli::train::run_cmd(a),
        Command::Probe(a) => cli::probe::run(a),
        Command::Finetune(a) => cli::finetune::run(a),
        Command::EvalCls(a) => cli::finetune::eval_cls(a),
        Command::Sample(a) => cli::sample::run(a),
        Command::Complete(a) => cli::complete::run(a),
        Command::Convert(a) => cli::convert::run(a),
        Command::Study(a) => cli::study::run(a),
        Command::Bench(b) => cli::bench::run(b),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
