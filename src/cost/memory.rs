//! The device memory of one run, estimated from its configuration and its model's
//! `config.json` before it starts: what `primer run --per-device auto` packs runs by.
//!
//! One function per run kind ([`finetune_memory`], [`prime_memory`]) sums, in fp32:
//! * the weights — θp, the PE module (its size is what [`crate::model::pe::PeMethod::param_shapes`] declares, so a
//!   new method needs nothing here), one head per language;
//! * the gradients and AdamW's two moments of what trains;
//! * priming's inner-loop copies: fast weights and their gradients (θa and θh in the PE loop,
//!   θp too in the MAML loop), and the outer gradient summed over tasks;
//! * activations at the configured batch size, every sequence padded to `data.max_len` (an
//!   upper bound: batches are length-bucketed): every layer's saved tensors where the backward
//!   pass goes through the encoder, one layer's working set where the encoder runs graph-free;
//! * the tensors a PE method's encoder overrides make (LoRA's merged weights:
//!   [`crate::model::pe::PeMethod::override_floats`]);
//! * the encoder-output cache of head/adapter tuning (one row of H floats per word of train
//!   and dev, words beyond `max_len` cut);
//! * under bf16 (or `auto`, bf16 on CUDA), the bf16 copies the products keep for the backward
//!   pass ([`bf16_graph_extra`]).
//!
//! The activation coefficients count the tensors this implementation keeps per layer
//! (Q, K, V and their head-major copies, scores, softmax and dropout, the residual branches,
//! layer-norm intermediates, the feed-forward pair and GELU's); they are meant to err high.
//! The per-process runtime (CUDA context, cuBLAS workspace) is the packer's, not a run's.

use super::CostError;
use crate::config::{FinetuneConfig, FinetuneMethod, PrimeConfig, PrimedAdapter, PrimingMethod};
use crate::config::{InnerLoop, PrecisionChoice};
use crate::model::bert::encoder_param_shapes;
use crate::model::pe::encoder_output_is_constant;
use crate::model::tagger::head_param_shapes;
use crate::model::{BertConfig, DEFAULT_NUM_LABELS, PeSpec};
use crate::spec::plan::{Plan, RunSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bytes of one fp32 value.
const F32: u64 = 4;
/// Tensors of H floats per token that one encoder layer keeps for its backward pass.
const SAVED_H_PER_TOKEN: u64 = 24;
/// Tensors of `intermediate_size` floats per token (feed-forward input, GELU and its parts).
const SAVED_I_PER_TOKEN: u64 = 4;
/// Attention-score-sized tensors (`heads × seq` floats per token): scores, scaled and masked
/// scores, softmax, dropout mask and output.
const SAVED_SCORES_PER_TOKEN: u64 = 6;
/// Under bf16 (`crate::model::ops::matmul` casts both inputs of every product to bf16 and
/// the graph keeps the casts for the backward pass), what one layer keeps besides its f32
/// tensors, per token, in floats' worth (a bf16 value is half a float): the products' inputs of
/// H floats (the layer input, cast once for each of the Q, K and V projections; Q, K, V; the
/// context, which the output projection reads; the feed-forward's input: 8), of `intermediate_size` floats (the second feed-forward
/// product's input: 1) and of attention-score size (the probabilities: 1), each halved.
const BF16_SAVED_H_PER_TOKEN: u64 = 8;
const BF16_SAVED_I_PER_TOKEN: u64 = 1;
const BF16_SAVED_SCORES_PER_TOKEN: u64 = 1;
/// Padded tokens of one graph-free inference batch on a GPU (`Batcher::for_inference`; the
/// CPU's is smaller, so this bounds both).
const INFERENCE_TOKENS: u64 = 8192;

/// Estimated bytes of one run, by what holds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's first and second moments.
    pub optimizer: u64,
    /// Priming's fast weights and their gradients.
    pub inner_copies: u64,
    pub activations: u64,
    pub encoder_cache: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.inner_copies
            + self.activations
            + self.encoder_cache
    }
}

fn count(shapes: &[(String, Vec<usize>)]) -> u64 {
    shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() as u64)
        .sum()
}

/// Parameters of θp (no pooler: the tagger has none).
pub fn encoder_params(model: &BertConfig) -> u64 {
    count(&encoder_param_shapes(model))
}

/// Parameters of a PE module, as its method declares them.
pub fn pe_params(spec: &PeSpec, model: &BertConfig) -> u64 {
    count(&spec.method().param_shapes(model))
}

/// Parameters of one language's head (WikiAnn's 7 tags).
pub fn head_params(model: &BertConfig) -> u64 {
    count(&head_param_shapes(model.hidden_size, DEFAULT_NUM_LABELS))
}

/// Floats one encoder layer keeps per token at padded length `seq`.
fn layer_floats_per_token(model: &BertConfig, seq: u64) -> u64 {
    SAVED_H_PER_TOKEN * model.hidden_size as u64
        + SAVED_I_PER_TOKEN * model.intermediate_size as u64
        + SAVED_SCORES_PER_TOKEN * model.num_attention_heads as u64 * seq
}

/// Activations of a forward whose backward goes through the encoder: every layer's saved
/// tensors, the embeddings', and about two layers' worth of gradients in flight.
pub fn graph_activations(model: &BertConfig, batch: usize, seq: usize) -> u64 {
    let (b, t) = (batch as u64, seq as u64);
    let per_token = (model.num_hidden_layers as u64 + 2) * layer_floats_per_token(model, t)
        + 4 * model.hidden_size as u64;
    b * t * per_token * F32
}

/// What a PE method's training-time linear branches (LoRA with dropout) keep besides
/// [`graph_activations`], for a batch of `batch` sequences padded to `seq`
/// ([`crate::model::pe::PeMethod::branch_floats_per_token`]).
fn branch_activations(pe: Option<&PeSpec>, model: &BertConfig, batch: usize, seq: usize) -> u64 {
    pe.map_or(0, |spec| {
        batch as u64 * seq as u64 * spec.method().branch_floats_per_token(model) * F32
    })
}

/// The tensors a PE method's encoder overrides make (LoRA's merged weights), in bytes
/// ([`crate::model::pe::PeMethod::override_floats`]).
fn override_bytes(pe: Option<&PeSpec>, model: &BertConfig, training: bool) -> u64 {
    pe.map_or(0, |spec| {
        spec.method().override_floats(model, training) * F32
    })
}

/// What bf16 adds to [`graph_activations`]: every layer's bf16 copies of its products' inputs
/// (see [`BF16_SAVED_H_PER_TOKEN`]) and of its weight matrices, kept for the backward pass.
/// Charged whenever a run may resolve to bf16 (`precision = "bf16"`, or `"auto"`, which is
/// bf16 on CUDA): on a CPU `auto` runs fp32 and the estimate errs high, as it is meant to.
pub fn bf16_graph_extra(model: &BertConfig, batch: usize, seq: usize) -> u64 {
    let (b, t) = (batch as u64, seq as u64);
    let (h, i) = (model.hidden_size as u64, model.intermediate_size as u64);
    let per_token = BF16_SAVED_H_PER_TOKEN * h
        + BF16_SAVED_I_PER_TOKEN * i
        + BF16_SAVED_SCORES_PER_TOKEN * model.num_attention_heads as u64 * t;
    let layers = model.num_hidden_layers as u64;
    // Q, K, V and output projections (H x H) and the feed-forward pair (H x I, I x H).
    let layer_weights = 4 * h * h + 2 * h * i;
    (layers * b * t * per_token + layers * layer_weights) * F32 / 2
}

/// [`bf16_graph_extra`] for a run with this precision setting: charged where the run may run
/// its products in bf16 (`bf16`, or `auto`, which is bf16 on CUDA), else nothing.
fn bf16_extra_for(choice: PrecisionChoice, model: &BertConfig, batch: usize, seq: usize) -> u64 {
    match choice {
        PrecisionChoice::Bf16 | PrecisionChoice::Auto => bf16_graph_extra(model, batch, seq),
        PrecisionChoice::Fp32 | PrecisionChoice::Tf32 => 0,
    }
}

/// Activations of a graph-free forward over `tokens` padded tokens of length `seq`: the
/// layer being computed and its input.
pub fn graph_free_activations(model: &BertConfig, tokens: u64, seq: usize) -> u64 {
    2 * tokens * layer_floats_per_token(model, seq as u64) * F32
}

/// The encoder-cache rows of a fine-tuning run's data: one per word of train and dev, words
/// beyond `max_len - 2` cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheRows {
    pub train: u64,
    pub dev: u64,
}

/// What a fine-tuning run trains and carries: (PE module, θp trains, PE module trains).
fn finetune_groups(
    cfg: &FinetuneConfig,
    primed_pe: Option<&PeSpec>,
) -> (Option<PeSpec>, bool, bool) {
    let carried = match (cfg.init.is_some(), cfg.primed_adapter) {
        (true, PrimedAdapter::Train) => primed_pe.cloned(),
        _ => None,
    };
    let pe = cfg.pe_spec().or(carried);
    let encoder_trained = cfg.method == FinetuneMethod::Full;
    let pe_trained = pe.is_some() && cfg.method != FinetuneMethod::Head;
    (pe, encoder_trained, pe_trained)
}

/// Whether a fine-tuning run encodes its data once into the encoder cache (the rule of
/// `crate::train::finetune`: asked for, and nothing that shapes the encoder's outputs trains).
pub fn finetune_uses_cache(cfg: &FinetuneConfig, primed_pe: Option<&PeSpec>) -> bool {
    let (pe, encoder_trained, pe_trained) = finetune_groups(cfg, primed_pe);
    let method = pe.as_ref().map(PeSpec::method);
    cfg.cache_encoder && encoder_output_is_constant(encoder_trained, method.as_deref(), pe_trained)
}

/// A fine-tuning run's memory. `primed_pe`: the PE module of the priming run it starts from
/// (kept under `primed_adapter = "train"`); `cache_rows`: its data's cache rows (used only when
/// the run caches).
pub fn finetune_memory(
    cfg: &FinetuneConfig,
    primed_pe: Option<&PeSpec>,
    model: &BertConfig,
    cache_rows: CacheRows,
) -> MemoryEstimate {
    let (pe, encoder_trained, pe_trained) = finetune_groups(cfg, primed_pe);
    let method = pe.as_ref().map(PeSpec::method);
    let through_encoder =
        !encoder_output_is_constant(encoder_trained, method.as_deref(), pe_trained);
    let (enc, head) = (encoder_params(model), head_params(model));
    let pe_n = pe.as_ref().map_or(0, |s| pe_params(s, model));
    let trained = if encoder_trained { enc } else { 0 } + if pe_trained { pe_n } else { 0 } + head;
    let seq = cfg.data.max_len;
    let activations = if through_encoder {
        graph_activations(model, cfg.batch_size, seq)
            + bf16_extra_for(cfg.precision, model, cfg.batch_size, seq)
            + branch_activations(
                pe.as_ref().filter(|_| pe_trained),
                model,
                cfg.batch_size,
                seq,
            )
    } else {
        let tokens = (cfg.batch_size as u64 * seq as u64).max(INFERENCE_TOKENS);
        graph_free_activations(model, tokens, seq)
    };
    let activations = activations + override_bytes(pe.as_ref(), model, pe_trained);
    let encoder_cache = if finetune_uses_cache(cfg, primed_pe) {
        (cache_rows.train + cache_rows.dev) * model.hidden_size as u64 * F32
    } else {
        0
    };
    MemoryEstimate {
        weights: (enc + pe_n + head) * F32,
        gradients: trained * F32,
        optimizer: 2 * trained * F32,
        inner_copies: 0,
        activations,
        encoder_cache,
    }
}

/// A priming run's memory.
pub fn prime_memory(cfg: &PrimeConfig, model: &BertConfig) -> MemoryEstimate {
    let (enc, head) = (encoder_params(model), head_params(model));
    let pe = cfg.pe_spec();
    let pe_n = pe_params(&pe, model);
    let heads = cfg.sources.len() as u64 * head;
    let seq = cfg.data.max_len;
    let is_ft = cfg.method == PrimingMethod::Ft;
    // The outer update: θp and θa (FT priming updates the heads with them).
    let outer = enc + pe_n + if is_ft { heads } else { 0 };
    let full_loop = cfg.effective_inner_loop() == InnerLoop::Full;
    // Both the support and the query forwards train: bf16's copies and the PE method's
    // branches are charged on each.
    let graph_extra = |batch: usize| {
        bf16_extra_for(cfg.precision, model, batch, seq)
            + branch_activations(Some(&pe), model, batch, seq)
    };
    let (inner_copies, activations) = if is_ft {
        let sizes = crate::prime::sampler::DrawSizes::new(
            cfg.support,
            cfg.inner_steps,
            cfg.support_batch_size,
            cfg.query_batch_size,
        );
        let n = sizes.sentences_per_task();
        (0, graph_activations(model, n, seq) + graph_extra(n))
    } else {
        let fast = if full_loop {
            enc + pe_n + head
        } else {
            pe_n + head
        };
        let pe_inside = pe.method().acts_inside_encoder();
        let support = if full_loop || pe_inside {
            graph_activations(model, cfg.support_batch_size, seq)
                + graph_extra(cfg.support_batch_size)
        } else {
            graph_free_activations(model, (cfg.support_batch_size * seq) as u64, seq)
        };
        let query =
            graph_activations(model, cfg.query_batch_size, seq) + graph_extra(cfg.query_batch_size);
        // Fast weights and their gradients.
        (2 * fast * F32, support.max(query))
    };
    // The PE module trains in both loops: its overrides are made per forward, one set alive.
    let activations = activations + override_bytes(Some(&pe), model, true);
    MemoryEstimate {
        weights: (enc + pe_n + heads) * F32,
        // One task's gradients and their sum over the step's tasks.
        gradients: 2 * outer * F32,
        optimizer: 2 * outer * F32,
        inner_copies,
        activations,
        encoder_cache: 0,
    }
}

/// The estimate of each of `runs` (indices into `plan.runs`). Each model's config.json is read
/// once; the data of a fine-tuning run is read only when it caches encoder outputs.
pub fn plan_memory(plan: &Plan, runs: &[usize]) -> Result<Vec<MemoryEstimate>, CostError> {
    let mut models = ModelConfigs::default();
    let mut rows: HashMap<String, CacheRows> = HashMap::new();
    runs.iter()
        .map(|&r| match &plan.runs[r].spec {
            RunSpec::Prime { config } => Ok(prime_memory(config, models.get(&config.model)?)),
            RunSpec::Finetune { config, .. } => {
                let primed = primed_pe(plan, r);
                let model = models.get(&config.model)?;
                let cache = if finetune_uses_cache(config, primed.as_ref()) {
                    let key = format!(
                        "{}\u{1f}{}\u{1f}{}",
                        serde_json::to_string(&config.data).unwrap_or_default(),
                        config.lang,
                        config.data.train_seed.resolve(config.seed)
                    );
                    match rows.get(&key) {
                        Some(r) => *r,
                        None => {
                            let r = cache_rows(config)?;
                            rows.insert(key, r);
                            r
                        }
                    }
                } else {
                    CacheRows::default()
                };
                Ok(finetune_memory(config, primed.as_ref(), model, cache))
            }
        })
        .collect()
}

/// The PE module of the priming run that fine-tuning run `r` starts from, if any.
pub fn primed_pe(plan: &Plan, r: usize) -> Option<PeSpec> {
    plan.runs[r]
        .deps
        .iter()
        .find_map(|&d| match &plan.runs[d].spec {
            RunSpec::Prime { config } => Some(config.pe_spec()),
            RunSpec::Finetune { .. } => None,
        })
}

/// Model configs by folder, each read once.
#[derive(Default)]
pub struct ModelConfigs(HashMap<PathBuf, BertConfig>);

impl ModelConfigs {
    pub fn get(&mut self, dir: &Path) -> Result<&BertConfig, CostError> {
        if !self.0.contains_key(dir) {
            let cfg = BertConfig::from_file(&dir.join("config.json"))?;
            self.0.insert(dir.to_path_buf(), cfg);
        }
        Ok(&self.0[dir])
    }
}

/// The cache rows of a fine-tuning run's train and dev data (after its limits).
pub fn cache_rows(cfg: &FinetuneConfig) -> Result<CacheRows, CostError> {
    let data = super::load_data(cfg)?;
    let cap = cfg.data.max_len.saturating_sub(2) as u64;
    let rows =
        |s: &[crate::data::Sentence]| s.iter().map(|x| (x.words.len() as u64).min(cap)).sum();
    Ok(CacheRows {
        train: rows(&data.train),
        dev: rows(&data.dev),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InnerParamsChoice;

    fn minilm() -> BertConfig {
        BertConfig::new(30522, 384, 6, 12, 1536)
    }

    fn mbert() -> BertConfig {
        BertConfig::new(119547, 768, 12, 12, 3072)
    }

    const GIB: f64 = (1u64 << 30) as f64;

    /// The published sizes, less the pooler (H² + H) the tagger does not have:
    /// all-MiniLM-L6-v2 22,713,216 and bert-base-multilingual-cased 177,853,440.
    #[test]
    fn encoder_parameters_match_the_published_counts() {
        assert_eq!(encoder_params(&minilm()), 22_713_216 - (384 * 384 + 384));
        assert_eq!(encoder_params(&mbert()), 177_853_440 - (768 * 768 + 768));
        assert_eq!(head_params(&mbert()), 7 * 768 + 7);
        // The paper's adapter: down 768→64 and up 64→768 with biases.
        assert_eq!(
            pe_params(&PeSpec::adapter(64), &mbert()),
            2 * 64 * 768 + 64 + 768
        );
        // LoRA r = 8 on query and value of 12 layers: A [8, 768] and B [768, 8] each.
        let lora = FinetuneConfig {
            method: FinetuneMethod::Lora,
            ..FinetuneConfig::default()
        };
        assert_eq!(
            pe_params(&lora.pe_spec().unwrap(), &mbert()),
            12 * 2 * (8 * 768 + 768 * 8)
        );
    }

    #[test]
    fn bf16_copies_are_charged_where_a_run_may_run_bf16() {
        use crate::config::PrecisionChoice;
        let m = mbert();
        let with = |precision| {
            let cfg = FinetuneConfig {
                precision,
                ..finetune(FinetuneMethod::Full)
            };
            finetune_memory(&cfg, None, &m, CacheRows::default()).activations
        };
        let fp32 = with(PrecisionChoice::Fp32);
        assert_eq!(fp32, graph_activations(&m, 32, 128));
        assert_eq!(with(PrecisionChoice::Tf32), fp32);
        assert_eq!(with(PrecisionChoice::Bf16), with(PrecisionChoice::Auto));
        let extra = with(PrecisionChoice::Bf16) - fp32;
        assert_eq!(extra, bf16_graph_extra(&m, 32, 128));
        // mBERT at 32 x 128: 12 layers x 4096 tokens x (8·768 + 3072 + 12·128) / 2 floats, and
        // half of the layers' 85M matrix weights: about 0.74 GiB + 0.16 GiB, some 14% on top of
        // the f32 activations.
        let tokens = 32 * 128;
        let acts = 12 * tokens * (8 * 768 + 3072 + 12 * 128) * 4 / 2;
        let weights = 12 * (4 * 768 * 768 + 2 * 768 * 3072) * 4 / 2;
        assert_eq!(extra, acts + weights);
        let share = extra as f64 / fp32 as f64;
        assert!((0.05..0.25).contains(&share), "{share}");
        // Priming pays it in its graph-keeping passes too.
        let prime = |precision| {
            let cfg = PrimeConfig {
                precision,
                ..PrimeConfig::default()
            };
            prime_memory(&cfg, &m).activations
        };
        assert!(prime(PrecisionChoice::Bf16) > prime(PrecisionChoice::Fp32));
    }

    fn finetune(method: FinetuneMethod) -> FinetuneConfig {
        FinetuneConfig {
            method,
            batch_size: 32,
            ..FinetuneConfig::default()
        }
    }

    #[test]
    fn full_fine_tuning_pays_for_gradients_adam_and_every_layer() {
        let m = mbert();
        let rows = CacheRows {
            train: 100_000,
            dev: 50_000,
        };
        let full = finetune_memory(&finetune(FinetuneMethod::Full), None, &m, rows);
        let p = encoder_params(&m) + head_params(&m);
        assert_eq!(full.weights, p * 4);
        assert_eq!(full.gradients, p * 4);
        assert_eq!(full.optimizer, 2 * p * 4);
        assert_eq!(full.encoder_cache, 0, "full FT runs the encoder every step");
        // `precision = "auto"` may be bf16 (on CUDA): its copies are charged.
        assert_eq!(
            full.activations,
            graph_activations(&m, 32, 128) + bf16_graph_extra(&m, 32, 128)
        );
        // mBERT full FT at batch 32 × 128 in fp32: a few GiB of state plus activations
        // (PyTorch needs about 8-10 GiB for this).
        let total = full.total() as f64 / GIB;
        assert!((5.0..16.0).contains(&total), "{total} GiB");

        // Adapter tuning on the cache: weights, a small optimiser, the cache, no layer graph.
        let at = finetune_memory(&finetune(FinetuneMethod::Adapter), None, &m, rows);
        assert_eq!(at.encoder_cache, 150_000 * 768 * 4);
        let trained = pe_params(&PeSpec::adapter(64), &m) + head_params(&m);
        assert_eq!(at.optimizer, 2 * trained * 4);
        assert!(at.total() < full.total() / 2, "{at:?} vs {full:?}");
        // Without the cache the encoder still runs graph-free (nothing before the adapter trains).
        let uncached = FinetuneConfig {
            cache_encoder: false,
            ..finetune(FinetuneMethod::Adapter)
        };
        let at_nc = finetune_memory(&uncached, None, &m, rows);
        assert_eq!(at_nc.encoder_cache, 0);
        assert_eq!(at_nc.activations, graph_free_activations(&m, 8192, 128));
        assert!(at_nc.activations < full.activations / 3);
        // LoRA acts inside the encoder: no cache, and the backward pass crosses every layer.
        let lora = finetune_memory(&finetune(FinetuneMethod::Lora), None, &m, rows);
        assert_eq!(lora.encoder_cache, 0);
        // Besides, its merged query and value weights (and on the generic path B·A and its
        // scaled copy): 3 · 768 · 768 per adapted linear, 2 per layer.
        let merged = 12 * 2 * 3 * 768 * 768 * 4;
        assert_eq!(lora.activations, full.activations + merged);
        assert!(!finetune_uses_cache(&finetune(FinetuneMethod::Lora), None));
        // With dropout, LoRA's branches run in activation space and keep their own tensors
        // (nothing is merged in training): per adapted linear (query and value, 768 → 768,
        // r = 8) and token, 2·768 + 8 + 2·768.
        let dropped = FinetuneConfig {
            lora_dropout: Some(0.1),
            ..finetune(FinetuneMethod::Lora)
        };
        let lora_p = finetune_memory(&dropped, None, &m, rows);
        let per_token = 12 * 2 * (4 * 768 + 8);
        assert_eq!(
            lora_p.activations + merged - lora.activations,
            32 * 128 * per_token * 4
        );
        // Activations grow with the batch.
        let big = FinetuneConfig {
            batch_size: 64,
            ..finetune(FinetuneMethod::Full)
        };
        let full64 = finetune_memory(&big, None, &m, rows);
        assert_eq!(
            full64.activations,
            2 * graph_activations(&m, 32, 128) + bf16_graph_extra(&m, 64, 128)
        );
    }

    #[test]
    fn a_kept_primed_adapter_trains_with_full_fine_tuning() {
        let m = minilm();
        let primed = FinetuneConfig {
            init: Some("primed".into()),
            ..finetune(FinetuneMethod::Full)
        };
        let spec = PeSpec::adapter(64);
        let kept = finetune_memory(&primed, Some(&spec), &m, CacheRows::default());
        let dropped = finetune_memory(
            &FinetuneConfig {
                primed_adapter: PrimedAdapter::Drop,
                ..primed.clone()
            },
            Some(&spec),
            &m,
            CacheRows::default(),
        );
        let a = pe_params(&spec, &m) * 4;
        assert_eq!(kept.weights - dropped.weights, a);
        assert_eq!(kept.optimizer - dropped.optimizer, 2 * a);
    }

    #[test]
    fn the_maml_loop_copies_the_encoder_and_the_pe_loop_does_not() {
        let m = mbert();
        let pe_loop = PrimeConfig::default();
        let maml = PrimeConfig {
            inner_params: Some(InnerParamsChoice::Full),
            inner_loop: InnerLoop::Full,
            ..PrimeConfig::default()
        };
        let (a, b) = (prime_memory(&pe_loop, &m), prime_memory(&maml, &m));
        let enc = encoder_params(&m) * 4;
        assert_eq!(b.inner_copies - a.inner_copies, 2 * enc);
        assert_eq!(a.weights, b.weights);
        assert_eq!(
            a.weights,
            (encoder_params(&m) + pe_params(&PeSpec::adapter(64), &m) + 2 * head_params(&m)) * 4
        );
        // The query pass backpropagates through θp in both.
        assert_eq!(
            a.activations,
            graph_activations(&m, 16, 128) + bf16_graph_extra(&m, 16, 128)
        );
        // FT priming: one batch of a meta step's sentences per task (support + query).
        let ft = PrimeConfig {
            method: PrimingMethod::Ft,
            ..PrimeConfig::default()
        };
        let f = prime_memory(&ft, &m);
        assert_eq!(f.inner_copies, 0);
        assert_eq!(
            f.activations,
            graph_activations(&m, 32, 128) + bf16_graph_extra(&m, 32, 128)
        );
    }
}
