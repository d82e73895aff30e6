//! `primer bench --profile`: where the time of primer's full-FT step and meta-PE outer step
//! goes ([`crate::op_timing`]), beside `torch.profiler`'s breakdown of the reference's same
//! steps (`tools/torch_op_profile.py`), as one table per step.

use super::report::gflops;
use crate::op_timing::{OpKind, OpTable};
use std::collections::BTreeMap;
use std::fmt;

/// One (kind, shape) of a step, per step.
#[derive(Debug, Clone, PartialEq)]
pub struct OpLine {
    /// [`OpKind::label`] (the torch script uses the same labels).
    pub kind: String,
    /// `[m, k, n]` (or `[batch, m, k, n]`) for GEMMs, empty otherwise.
    pub shape: Vec<usize>,
    pub calls: f64,
    pub ms: f64,
    pub flops: f64,
}

/// One side's breakdown of one step: the step's wall time and its ops, averaged per step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBreakdown {
    pub step_ms: f64,
    pub steps: usize,
    pub ops: Vec<OpLine>,
}

impl StepBreakdown {
    /// From primer's recording over `times_ms` (one entry per recorded step). Only GEMMs keep
    /// their shape; the other kinds are summed per kind.
    pub fn from_table(table: &OpTable, times_ms: &[f64]) -> Self {
        let n = times_ms.len().max(1) as f64;
        let mut lines: BTreeMap<(String, Vec<usize>), OpLine> = BTreeMap::new();
        for ((kind, shape), total) in table {
            let shape = if *kind == OpKind::Gemm {
                shape.clone()
            } else {
                Vec::new()
            };
            let key = (kind.label().to_string(), shape.clone());
            let line = lines.entry(key).or_insert_with(|| OpLine {
                kind: kind.label().to_string(),
                shape,
                calls: 0.0,
                ms: 0.0,
                flops: 0.0,
            });
            line.calls += total.calls as f64 / n;
            line.ms += total.time.as_secs_f64() * 1e3 / n;
            line.flops += total.flops / n;
        }
        StepBreakdown {
            step_ms: times_ms.iter().sum::<f64>() / n,
            steps: times_ms.len(),
            ops: lines.into_values().collect(),
        }
    }

    /// From the JSON object `tools/torch_op_profile.py` prints.
    pub fn from_torch_json(v: &serde_json::Value) -> Result<Self, String> {
        let num = |v: &serde_json::Value, key: &str| {
            v[key]
                .as_f64()
                .ok_or_else(|| format!("\"{key}\" is not a number in {v}"))
        };
        let ops = v["ops"]
            .as_array()
            .ok_or("no \"ops\" list")?
            .iter()
            .map(|o| {
                Ok(OpLine {
                    kind: o["kind"]
                        .as_str()
                        .ok_or("an op without \"kind\"")?
                        .to_string(),
                    shape: o["shape"]
                        .as_array()
                        .map(|s| {
                            s.iter()
                                .filter_map(|d| d.as_u64())
                                .map(|d| d as usize)
                                .collect()
                        })
                        .unwrap_or_default(),
                    calls: num(o, "calls")?,
                    ms: num(o, "ms")?,
                    flops: num(o, "flops")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(StepBreakdown {
            step_ms: num(v, "step_ms")?,
            steps: num(v, "steps")? as usize,
            ops,
        })
    }

    fn line(&self, key: &(String, Vec<usize>)) -> Option<&OpLine> {
        self.ops
            .iter()
            .find(|o| o.kind == key.0 && o.shape == key.1)
    }

    fn accounted_ms(&self) -> f64 {
        self.ops.iter().map(|o| o.ms).sum()
    }
}

/// One profiled step on both sides.
#[derive(Debug, Clone, PartialEq)]
pub struct StepComparison {
    pub name: String,
    pub primer: StepBreakdown,
    /// PyTorch's, or why there is none.
    pub torch: Result<StepBreakdown, String>,
}

/// Everything `primer bench --profile` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileReport {
    pub cpu_model: String,
    pub threads: usize,
    /// What ran primer's GEMMs ([`crate::model::sgemm::GemmBackend::describe`]).
    pub gemm_backend: String,
    /// What the torch script said about itself (version, CPU capability), if it ran.
    pub torch_info: Option<String>,
    pub steps: Vec<StepComparison>,
}

/// The non-GEMM kinds in table order ("other" is the torch script's unclassified aten ops).
const KIND_ORDER: [&str; 9] = [
    "attention core",
    "layer norm",
    "GELU",
    "softmax",
    "cross-entropy loss",
    "embeddings",
    "optimiser (AdamW)",
    "inner SGD update",
    "other",
];

/// `m×k · k×n` (or `b × m×k · k×n`).
fn gemm_label(shape: &[usize]) -> String {
    match shape {
        [m, k, n] => format!("GEMM {m}×{k} · {k}×{n}"),
        [b, m, k, n] => format!("GEMM {b} × {m}×{k} · {k}×{n}"),
        _ => "GEMM".into(),
    }
}

/// GEMM shapes below this share of their step on both sides share one table row.
const SMALL_GEMM_SHARE: f64 = 0.005;

/// One table row: a label and the (kind, shape) entries it sums on each side.
#[derive(Debug, Clone, PartialEq)]
struct TableRow {
    label: String,
    members: Vec<(String, Vec<usize>)>,
}

/// Table rows: GEMMs by shape, slowest first (by the slower side), the shapes that take under
/// [`SMALL_GEMM_SHARE`] of the step on both sides folded into one row, then the other kinds.
fn table_rows(c: &StepComparison) -> Vec<TableRow> {
    let gemm = OpKind::Gemm.label();
    // Per GEMM shape: its larger share of a step over the two sides.
    let mut gemms: BTreeMap<Vec<usize>, f64> = BTreeMap::new();
    let mut kinds = Vec::new();
    let sides = std::iter::once(&c.primer).chain(c.torch.as_ref().ok());
    for side in sides {
        for o in &side.ops {
            if o.kind == gemm {
                let e = gemms.entry(o.shape.clone()).or_default();
                *e = e.max(o.ms / side.step_ms);
            } else if !kinds.contains(&o.kind) {
                kinds.push(o.kind.clone());
            }
        }
    }
    let mut gemms: Vec<_> = gemms.into_iter().collect();
    gemms.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (large, small): (Vec<_>, Vec<_>) = gemms
        .into_iter()
        .partition(|(_, share)| *share >= SMALL_GEMM_SHARE);
    kinds.sort_by_key(|k| {
        KIND_ORDER
            .iter()
            .position(|o| o == k)
            .unwrap_or(KIND_ORDER.len())
    });
    let mut rows: Vec<TableRow> = large
        .into_iter()
        .map(|(shape, _)| TableRow {
            label: gemm_label(&shape),
            members: vec![(gemm.to_string(), shape)],
        })
        .collect();
    if !small.is_empty() {
        rows.push(TableRow {
            label: format!(
                "GEMM, {} smaller shapes (<{}% each)",
                small.len(),
                SMALL_GEMM_SHARE * 100.0
            ),
            members: small
                .into_iter()
                .map(|(s, _)| (gemm.to_string(), s))
                .collect(),
        });
    }
    rows.extend(kinds.into_iter().map(|k| TableRow {
        label: k.clone(),
        members: vec![(k, Vec::new())],
    }));
    rows
}

/// The summed (ms, FLOPs) of `row`'s entries on one side; `None` when it has none of them.
fn row_cell(side: Option<&StepBreakdown>, row: &TableRow) -> Option<(f64, f64)> {
    let side = side?;
    let found: Vec<&OpLine> = row.members.iter().filter_map(|k| side.line(k)).collect();
    (!found.is_empty()).then(|| {
        found
            .iter()
            .fold((0.0, 0.0), |(ms, fl), o| (ms + o.ms, fl + o.flops))
    })
}

fn cells(line: Option<(f64, f64)>, step_ms: f64) -> String {
    match line {
        None => format!("{:>9} {:>6} {:>8}", "-", "", ""),
        Some((ms, flops)) => {
            let rate = if flops > 0.0 && ms > 0.0 {
                format!("{:.0}", gflops(flops, ms))
            } else {
                String::new()
            };
            format!("{ms:>9.1} {:>5.1}% {rate:>8}", 100.0 * ms / step_ms)
        }
    }
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "CPU: {} · {} threads", self.cpu_model, self.threads)?;
        writeln!(out, "primer's GEMM backend: {}", self.gemm_backend)?;
        if let Some(info) = &self.torch_info {
            writeln!(out, "PyTorch: {info}")?;
        }
        for c in &self.steps {
            writeln!(out)?;
            let torch = c.torch.as_ref().ok();
            writeln!(
                out,
                "{}: primer {:.1} ms per step, PyTorch {} (mean of the profiled steps, \
                 profilers on)",
                c.name,
                c.primer.step_ms,
                torch.map_or("-".to_string(), |t| format!("{:.1} ms", t.step_ms))
            )?;
            if let Err(e) = &c.torch {
                writeln!(out, "  (PyTorch side skipped: {e})")?;
            }
            writeln!(
                out,
                "{:<36} {:>9} {:>6} {:>8}   {:>9} {:>6} {:>8}",
                "op (per step)", "primer ms", "%", "GFLOP/s", "torch ms", "%", "GFLOP/s"
            )?;
            for row in table_rows(c) {
                writeln!(
                    out,
                    "{:<36} {}   {}",
                    row.label,
                    cells(row_cell(Some(&c.primer), &row), c.primer.step_ms),
                    cells(row_cell(torch, &row), torch.map_or(f64::NAN, |t| t.step_ms))
                )?;
            }
            let all_gemms = |s: &StepBreakdown| {
                let g = s.ops.iter().filter(|o| o.kind == OpKind::Gemm.label());
                g.fold((0.0, 0.0), |(ms, fl), o| (ms + o.ms, fl + o.flops))
            };
            writeln!(
                out,
                "{:<36} {}   {}",
                "all GEMMs",
                cells(Some(all_gemms(&c.primer)), c.primer.step_ms),
                cells(torch.map(all_gemms), torch.map_or(f64::NAN, |t| t.step_ms))
            )?;
            let rest = |s: &StepBreakdown| (s.step_ms - s.accounted_ms(), 0.0);
            writeln!(
                out,
                "{:<36} {}   {}",
                "rest of the step",
                cells(Some(rest(&c.primer)), c.primer.step_ms),
                cells(torch.map(rest), torch.map_or(f64::NAN, |t| t.step_ms))
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "primer: wall time of the outermost instrumented op (the attention core holds its \
             per-head GEMMs and softmax); rest = candle ops, autograd bookkeeping, copies. \
             PyTorch: self CPU time of aten ops (sdpa's fused attention holds its softmax); \
             \"other\" = unclassified aten ops; rest = Python, the autograd engine and the \
             profiler itself. The inner loop's SGD update is in PyTorch's \"other\"."
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op_timing::OpTotal;
    use std::time::Duration;

    fn total(ms: u64, calls: u64, flops: f64) -> OpTotal {
        OpTotal {
            calls,
            time: Duration::from_millis(ms),
            flops,
        }
    }

    fn total_us(us: u64, flops: f64) -> OpTotal {
        OpTotal {
            calls: 1,
            time: Duration::from_micros(us),
            flops,
        }
    }

    #[test]
    fn primer_tables_average_per_step_and_keep_shapes_only_for_gemms() {
        let mut t = OpTable::new();
        t.insert((OpKind::Gemm, vec![4, 8, 2]), total(40, 4, 400.0));
        t.insert((OpKind::LayerNorm, vec![8, 4]), total(10, 2, 0.0));
        t.insert((OpKind::LayerNorm, vec![16, 4]), total(6, 2, 0.0));
        let b = StepBreakdown::from_table(&t, &[100.0, 300.0]);
        assert_eq!((b.step_ms, b.steps), (200.0, 2));
        assert_eq!(b.ops.len(), 2);
        let gemm = b.line(&("GEMM".into(), vec![4, 8, 2])).unwrap();
        assert_eq!((gemm.calls, gemm.ms, gemm.flops), (2.0, 20.0, 200.0));
        let ln = b.line(&("layer norm".into(), vec![])).unwrap();
        assert_eq!((ln.calls, ln.ms), (2.0, 8.0));
        assert_eq!(b.accounted_ms(), 28.0);
    }

    #[test]
    fn torch_json_is_read_and_both_sides_share_one_table() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"step": "full", "step_ms": 400.0, "steps": 3, "ops": [
                {"kind": "GEMM", "shape": [1024, 384, 1536], "calls": 1, "ms": 30.0, "flops": 1.2e9},
                {"kind": "attention core", "shape": [], "calls": 6, "ms": 20.0, "flops": 0},
                {"kind": "other", "shape": [], "calls": 900, "ms": 50.0, "flops": 0}]}"#,
        )
        .unwrap();
        let torch = StepBreakdown::from_torch_json(&v).unwrap();
        assert_eq!((torch.step_ms, torch.steps, torch.ops.len()), (400.0, 3, 3));
        assert!(StepBreakdown::from_torch_json(&serde_json::json!({"step_ms": 1.0})).is_err());

        let mut t = OpTable::new();
        t.insert((OpKind::Gemm, vec![1024, 384, 1536]), total(20, 1, 1.2e9));
        t.insert((OpKind::Optimiser, vec![10]), total(5, 1, 0.0));
        t.insert((OpKind::Gemm, vec![7, 64, 384]), total_us(200, 1e6));
        t.insert((OpKind::Gemm, vec![64, 7, 384]), total_us(300, 1e6));
        let report = ProfileReport {
            cpu_model: "Test CPU".into(),
            threads: 2,
            gemm_backend: "test backend".into(),
            torch_info: None,
            steps: vec![StepComparison {
                name: "full-FT step".into(),
                primer: StepBreakdown::from_table(&t, &[100.0]),
                torch: Ok(torch),
            }],
        };
        let rows = table_rows(&report.steps[0]);
        let names: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            names,
            [
                "GEMM 1024×384 · 384×1536",
                "GEMM, 2 smaller shapes (<0.5% each)",
                "attention core",
                "optimiser (AdamW)",
                "other"
            ]
        );
        // The two small shapes' 0.2 ms and 0.3 ms are summed on primer's side (PyTorch has
        // neither).
        assert_eq!(
            row_cell(Some(&report.steps[0].primer), &rows[1]),
            Some((0.5, 2e6))
        );
        assert_eq!(
            row_cell(report.steps[0].torch.as_ref().ok(), &rows[1]),
            None
        );
        let text = report.to_string();
        // primer's GEMM: 20 ms of 100, 1.2 GFLOP in 20 ms = 60 GFLOP/s; PyTorch's 30 of 400.
        let gemm_line = text
            .lines()
            .find(|l| l.starts_with("GEMM 1024×384 · 384×1536"))
            .unwrap();
        assert!(gemm_line.contains("20.0  20.0%       60"), "{gemm_line}");
        assert!(gemm_line.contains("30.0   7.5%       40"), "{gemm_line}");
        let rest = text
            .lines()
            .find(|l| l.starts_with("rest of the step"))
            .unwrap();
        assert!(rest.contains("74.5"), "{rest}");
    }
}
