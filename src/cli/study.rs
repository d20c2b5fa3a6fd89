use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct StudyArgs {
    /// The study's run folder (tools/architecture_study.sh's OUT, e.g. runs/study).
    #[arg(long)]
    runs: PathBuf,
    /// Where architectures.md, architectures.json, the charts and the sample sheets go.
    #[arg(long, default_value = "docs/results")]
    out: PathBuf,
    /// The budget stated above the tables.
    #[arg(
        long,
        default_value = "Budget: every variant of a data set trains the same model for the same steps (the same training tokens) with seed 0; see tools/architecture_study.sh."
    )]
    budget: String,
    /// Print architectures.json on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: StudyArgs) -> Result<()> {
    let runs = igpt::study::collect(&a.runs)?;
    igpt::study::write_report(&runs, &a.out, &a.budget).with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        return super::print_json(&serde_json::json!({"runs": runs}));
    }
    let done = runs.iter().filter(|r| r.test_bits_per_token.is_some()).count();
    println!("{} runs ({done} trained and evaluated) -> {}", runs.len(), a.out.join("architectures.md").display());
    Ok(())
}
