//! # primer
//!
//! Run, sweep and report the experiments of *Know Where You're Going: Meta-Learning for
//! Parameter-Efficient Fine-Tuning* (Gheini, Ma, May 2022).
//!
//! The library reads like the pipeline it implements:
//!
//! * [`config`]   — the typed, serialisable settings of one fine-tuning or priming run;
//! * [`data`]     — WikiAnn readers (XTREME tsv, Rahimi `xx:token`, HF parquet), tokenisation
//!   with first-subword alignment, length-bucketed batching;
//! * [`model`]    — a trainable BERT encoder (θp), one bottleneck adapter (θa) and per-language
//!   linear heads (θh), built only from differentiable operations;
//! * [`train`]    — AdamW with a linear schedule and the three fine-tuning settings (full, head,
//!   adapter), with an encoder-output cache for the parameter-efficient ones;
//! * [`prime`]    — priming: first-order MAML (Algorithm 1) and its ablations;
//! * [`metric`]   — entity-level micro F1, identical to seqeval;
//! * [`op_timing`] — per-op wall time of a step (GEMMs by shape, attention, …) for the bench;
//! * [`parallel`] — graph-free batches spread over the CPU threads, one batch per thread;
//! * [`spec`]     — TOML sweep files → a plan of content-addressed runs, and the report section;
//! * [`store`]    — the run store: one directory per run, its files named once, the lock;
//! * [`cost`]     — what runs cost before they run: memory (to pack runs on a device) and
//!   device time (a sweep's estimate from a few timed steps);
//! * [`backend`]  — where runs execute: local device slots (scheduler + child processes) or
//!   Slurm job arrays, behind one trait (uses `spec` and `store`, never `sweep`);
//! * [`sweep`]    — orchestration: spec → plan → backend → store → report, and `primer exec`;
//! * [`slurm`]    — a Slurm client (sbatch, squeue, scontrol, scancel) knowing nothing of sweeps;
//! * [`signal`]   — SIGINT/SIGTERM (stop the orchestrator) and SIGUSR2 (stop a run) as flags;
//! * [`report`]   — polars tables and plotters figures (Table 1, Figures 3 and 4);
//! * [`verify`]   — the golden comparisons against the PyTorch dumps, on any device;
//! * [`mod@bench`] — `primer bench`: step speed against the PyTorch reference, the machine's
//!   FMA peak, and per-op breakdowns of both sides.
pub mod backend;
pub mod bench;
pub mod config;
pub mod cost;
pub mod data;
pub mod device;
pub mod fsutil;
pub mod metric;
pub mod model;
pub mod op_timing;
pub mod parallel;
pub mod prime;
pub mod progress;
pub mod report;
pub mod rng;
pub mod signal;
pub mod slurm;
pub mod spec;
pub mod store;
pub mod sweep;
pub mod train;
pub mod verify;
