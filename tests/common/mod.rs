//! Helpers shared by the integration tests: locating /work/shared, loading the PyTorch golden
//! dumps (`<dir>/dump.safetensors` + `meta.json`), and comparing tensors with the tolerances of
//! shared/golden/README.md.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use primer::model::{EncoderInputs, ParamSet};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The shared read-only material: `$PRIMER_SHARED_DIR`, else `../shared` next to the crate.
pub fn shared_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PRIMER_SHARED_DIR") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
    };
    p.is_dir().then_some(p)
}

/// The golden dumps: `$PRIMER_GOLDEN_DIR`, else `<shared>/golden`.
pub fn golden_dir() -> Option<PathBuf> {
    let p = match std::env::var_os("PRIMER_GOLDEN_DIR") {
        Some(p) => PathBuf::from(p),
        None => shared_dir()?.join("golden"),
    };
    p.is_dir().then_some(p)
}

/// One step dump made by `torch_ref.py --dump`.
pub struct GoldenDump {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

impl GoldenDump {
    pub fn load(dir: &Path) -> Self {
        let meta_path = dir.join("meta.json");
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
        let tensors = candle_core::safetensors::load(dir.join("dump.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self {
            dir: dir.to_path_buf(),
            meta,
            tensors,
        }
    }

    /// The dump's name (its directory).
    pub fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    pub fn mode(&self) -> &str {
        self.meta["mode"].as_str().expect("meta.json: mode")
    }

    pub fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: dump has no tensor '{name}'", self.dir.display()))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All tensors named `<prefix><rest>`, as (rest, tensor), sorted by name.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|r| (r.to_string(), t.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// New Vars from the tensors under `prefix` (e.g. "init.adapter.").
    pub fn param_set(&self, prefix: &str) -> ParamSet {
        let pairs = self.with_prefix(prefix);
        assert!(
            !pairs.is_empty(),
            "{}: no tensors under '{prefix}'",
            self.dir.display()
        );
        ParamSet::from_tensors(pairs).unwrap()
    }

    /// The batch stored under `prefix` (e.g. "batch." or "batch.t0.query.").
    pub fn batch(&self, prefix: &str) -> GoldenBatch {
        GoldenBatch {
            input_ids: self.tensor(&format!("{prefix}input_ids")).clone(),
            attention_mask: self.tensor(&format!("{prefix}attention_mask")).clone(),
            token_type_ids: self.tensor(&format!("{prefix}token_type_ids")).clone(),
            labels: self.tensor(&format!("{prefix}labels")).clone(),
        }
    }

    /// A float setting from meta.json by JSON pointer (e.g. "/outer_opt/lr").
    pub fn f64_at(&self, pointer: &str) -> f64 {
        self.meta
            .pointer(pointer)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| {
                panic!(
                    "{}: meta.json has no number at {pointer}",
                    self.dir.display()
                )
            })
    }

    /// The dump's optimiser (`outer_opt` in meta.json: torch AdamW, weight decay on every
    /// trained tensor unless `wd_on_all_params` says otherwise).
    pub fn adamw(&self) -> primer::train::optim::AdamWConfig {
        primer::train::optim::AdamWConfig {
            lr: self.f64_at("/outer_opt/lr"),
            beta1: self.f64_at("/outer_opt/betas/0"),
            beta2: self.f64_at("/outer_opt/betas/1"),
            eps: self.f64_at("/outer_opt/eps"),
            weight_decay: self.f64_at("/outer_opt/weight_decay"),
            decay_bias_and_norm: self.meta["outer_opt"]["wd_on_all_params"]
                .as_bool()
                .unwrap_or(true),
        }
    }

    /// Number of heads/tasks the dump carries.
    pub fn num_heads(&self) -> usize {
        (0..)
            .take_while(|i| self.has(&format!("init.head.{i}.weight")))
            .count()
    }
}

/// int64 tensors of one batch, as stored in a dump.
pub struct GoldenBatch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
    pub labels: Tensor,
}

impl GoldenBatch {
    pub fn inputs(&self) -> EncoderInputs<'_> {
        EncoderInputs {
            input_ids: &self.input_ids,
            attention_mask: &self.attention_mask,
            token_type_ids: Some(&self.token_type_ids),
        }
    }
}

/// Every dump directory under the golden dir (sorted), or None (after printing SKIP) when the
/// golden material is absent.
pub fn all_dumps(test: &str) -> Option<Vec<PathBuf>> {
    let Some(root) = golden_dir() else {
        eprintln!(
            "SKIP {test}: golden dumps not found (set PRIMER_GOLDEN_DIR or provide ../shared/golden)"
        );
        return None;
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("dump.safetensors").is_file() && p.join("meta.json").is_file())
        .collect();
    v.sort();
    Some(v)
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max |a| of a tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    to_f64(t).into_iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// Checks `|got − want| ≤ rel·max|want| + abs` element-wise; Err describes the worst element.
pub fn check_rel(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    rel: f64,
    abs: f64,
) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!(
            "{name}: shape {:?} vs expected {:?}",
            got.dims(),
            want.dims()
        ));
    }
    let g = to_f64(got);
    let w = to_f64(want);
    let scale = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let tol = rel * scale + abs;
    let (i, d) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f64), |acc, (i, d)| {
            if d > acc.1 || d.is_nan() { (i, d) } else { acc }
        });
    if d > tol || d.is_nan() {
        return Err(format!(
            "{name}: max |diff| {d:.3e} at {i} (got {}, want {}) > tol {tol:.3e} (max|want| {scale:.3e})",
            g[i], w[i]
        ));
    }
    Ok(())
}

/// A tensor after the first AdamW step from the dump's start, against the dump's `final.*`.
///
/// golden/README.md: the first step is about `lr·g/(|g|+eps)`, so where `g` is ~0 rounding
/// can move a value by up to ±lr — every value must agree to 2·lr. Where the gradient is
/// clearly non-zero (≥ 1e-3 of the tensor's largest and > 1e-6) the step is ~lr·sign(g) and
/// must agree to 2% of lr, so that a wrong learning rate, schedule or moment update shows.
pub fn check_first_adamw_step(
    name: &str,
    got: &Tensor,
    want: &Tensor,
    grad: &Tensor,
    lr: f64,
) -> Result<(), String> {
    check_rel(name, got, want, 0.0, 2.0 * lr + 1e-7)?;
    let g = to_f64(grad);
    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let (a, b) = (to_f64(got), to_f64(want));
    let bad = (0..g.len()).find(|&i| {
        g[i].abs() >= 1e-3 * gmax
            && g[i].abs() > 1e-6
            && (a[i] - b[i]).abs() > 0.02 * lr + 1e-6 * b[i].abs()
    });
    match bad {
        Some(i) => Err(format!(
            "{name}[{i}]: {} vs {} after the step (grad {}): more than 2% of lr {lr:e} apart",
            a[i], b[i], g[i]
        )),
        None => Ok(()),
    }
}

/// Collects failures so a test reports every mismatching tensor at once.
#[derive(Default)]
pub struct Failures(pub Vec<String>);

impl Failures {
    pub fn check(&mut self, r: Result<(), String>) {
        if let Err(e) = r {
            self.0.push(e);
        }
    }

    pub fn push(&mut self, e: String) {
        self.0.push(e);
    }

    pub fn assert_none(&self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}
