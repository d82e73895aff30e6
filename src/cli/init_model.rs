//! `primer init-model`: write a small, seeded, randomly initialised BERT folder.

use anyhow::Context;
use primer::model::{RandomBertSpec, write_random_bert};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InitModelArgs {
    /// Folder to create (an earlier random BERT there is replaced atomically; a folder holding
    /// other files is refused).
    #[arg(long)]
    pub out: PathBuf,
    /// Folder whose tokenizer files (tokenizer.json, vocab.txt, ...) are copied; its
    /// vocabulary size sets the model's.
    #[arg(long)]
    pub tokenizer_from: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    #[arg(long, default_value_t = 256)]
    pub intermediate: usize,
    /// Maximum sequence length the position embeddings cover.
    #[arg(long, default_value_t = 512)]
    pub max_position: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: InitModelArgs) -> anyhow::Result<ExitCode> {
    let spec = RandomBertSpec {
        hidden: args.hidden,
        layers: args.layers,
        heads: args.heads,
        intermediate: args.intermediate,
        max_position: args.max_position,
        seed: args.seed,
    };
    let dir = write_random_bert(&args.out, &args.tokenizer_from, &spec)
        .with_context(|| format!("cannot write a random BERT to {}", args.out.display()))?;
    println!("{}", dir.display());
    Ok(ExitCode::SUCCESS)
}
