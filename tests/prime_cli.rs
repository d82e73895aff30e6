//! End-to-end tests of `primer prime` on the committed WikiAnn slices with a tiny random BERT.

use primer::model::RandomBertSpec;
use primer::prime::PrimingInfo;
use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny random BERT and the data root, or None (with a SKIP line) when inputs are missing.
fn setup(tmp: &Path) -> Option<(PathBuf, PathBuf)> {
    let tok = crate_dir().join("data/tokenizer/bert-base-multilingual-cased");
    let data = crate_dir().join("data/wikiann");
    if !tok.exists() || !data.join("en").exists() || !data.join("es").exists() {
        println!(
            "SKIP: tokenizer or WikiAnn slices (en, es) not found under {}",
            crate_dir().display()
        );
        return None;
    }
    let spec = RandomBertSpec {
        hidden: 32,
        layers: 1,
        heads: 2,
        intermediate: 64,
        max_position: 64,
        seed: 2,
    };
    let model = primer::model::write_random_bert(&tmp.join("tiny"), &tok, &spec).unwrap();
    Some((model, data))
}

fn primer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_primer"));
    c.env("RUST_LOG", "warn");
    c
}

fn small_run_args(model: &Path, data: &Path) -> Vec<String> {
    [
        "prime",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--sources",
        "en,es",
        "--train-limit",
        "40",
        "--support-batch-size",
        "4",
        "--query-batch-size",
        "4",
        "--max-len",
        "32",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn maml_loop_from_flags_writes_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("primed");
    let o = primer()
        .args(small_run_args(&model, &data))
        .args([
            "--method",
            "maml",
            "--inner-steps",
            "1",
            "--support",
            "distinct",
            "--steps",
            "2",
            "--seed",
            "4",
            "--precision",
            "bf16",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("maml priming on en,es: 2 steps"),
        "{stdout}"
    );
    assert!(stdout.contains("primed checkpoint written"), "{stdout}");
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!(info.method, "maml");
    assert_eq!(
        (info.config.inner_steps, info.config.seed, info.steps),
        (1, 4, 2)
    );
    // The flag is part of the configuration (the run's identity) and what ran is recorded.
    let bf16 = primer::config::PrecisionChoice::Bf16;
    assert_eq!(info.config.precision, bf16);
    let precision = info.precision.expect("recorded");
    assert_eq!(
        (precision.requested, precision.effective),
        (bf16, primer::config::Precision::Bf16)
    );
    assert!(out.join("adapter.safetensors").exists() && out.join("model.safetensors").exists());
}

#[test]
fn config_file_with_flag_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let cfg = tmp.path().join("prime.json");
    let doc = serde_json::json!({
        "model": model,
        "data": {"root": data, "train_limit": 40, "max_len": 32},
        "sources": ["en", "es"],
        "method": "ft",
        "steps": 5,
        "support_batch_size": 4,
        "query_batch_size": 4,
        "ft_lr": 1e-3
    });
    std::fs::write(&cfg, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let out = tmp.path().join("ft");
    let o = primer()
        .args([
            "prime",
            "--config",
            cfg.to_str().unwrap(),
            "--steps",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: PrimingInfo = primer::fsutil::read_json(&out.join("priming.json")).unwrap();
    assert_eq!(
        (info.method.as_str(), info.steps, info.config.ft_lr),
        ("ft", 1, 1e-3)
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("never");
    let mut args = small_run_args(&model, &data);
    let i = args.iter().position(|a| a == "en,es").unwrap();
    args[i] = "en,zz".into();
    let o = primer()
        .args(&args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("error:") && stderr.contains("zz"),
        "{stderr}"
    );
    assert!(!out.exists());

    let bad_cfg = tmp.path().join("bad.json");
    std::fs::write(&bad_cfg, r#"{"sources": ["en"], "inner_stepz": 3}"#).unwrap();
    let o = primer()
        .args([
            "prime",
            "--config",
            bad_cfg.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("bad.json") && stderr.contains("inner_stepz"),
        "{stderr}"
    );

    // A precision that does not exist, in a file (at its line) and as a flag (with the
    // valid values).
    let bad_toml = tmp.path().join("bad.toml");
    std::fs::write(&bad_toml, "sources = [\"en\"]\nprecision = \"fp16\"\n").unwrap();
    for args in [
        vec!["--config", bad_toml.to_str().unwrap()],
        vec!["--precision", "fp16"],
    ] {
        let o = primer()
            .arg("prime")
            .args(&args)
            .args(["--model", model.to_str().unwrap(), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains("fp16") && stderr.contains("bf16") && stderr.contains("tf32"),
            "{args:?}: {stderr}"
        );
        if args[0] == "--config" {
            assert!(stderr.contains("line 2"), "{stderr}");
        }
    }
    assert!(!out.exists());
}

/// A value out of range in `--config FILE` is named at its line in the file, as a sweep
/// file's would be, before anything runs; the same value from a flag is named as its key.
#[test]
fn out_of_range_config_values_name_their_line() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("never");
    let toml = tmp.path().join("prime.toml");
    std::fs::write(
        &toml,
        "sources = [\"en\"]\nsteps = 2\n[data]\nmax_len = 32\ntrain_limit = 0\n",
    )
    .unwrap();
    let json = tmp.path().join("prime.json");
    std::fs::write(&json, r#"{"sources": ["en"], "inner_steps": 0}"#).unwrap();
    let run = |args: &[&str]| {
        let o = primer()
            .arg("prime")
            .args(args)
            .args(["--model", model.to_str().unwrap()])
            .args(["--data", data.to_str().unwrap(), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run(&["--config", toml.to_str().unwrap()]);
    assert!(
        err.contains("prime.toml:5:1: data.train_limit: must be at least 1"),
        "{err}"
    );
    let err = run(&["--config", json.to_str().unwrap()]);
    assert!(
        err.contains("prime.json: inner_steps: must be at least 1"),
        "{err}"
    );
    // The file's value is fine; the flag's is not, and the message does not blame the file.
    let err = run(&[
        "--config",
        toml.to_str().unwrap(),
        "--train-limit",
        "5",
        "--steps",
        "0",
    ]);
    assert!(err.contains("\n  steps: must be at least 1"), "{err}");
    assert!(!err.contains("prime.toml:"), "{err}");
    assert!(!out.exists());

    let ft = tmp.path().join("ft.toml");
    std::fs::write(&ft, "lang = \"af\"\nepochs = 1\nbatch_size = 0\n").unwrap();
    let o = primer()
        .args(["finetune", "--config", ft.to_str().unwrap()])
        .args(["--model", model.to_str().unwrap()])
        .args(["--data", data.to_str().unwrap(), "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("ft.toml:3:1: batch_size: must be at least 1"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `--out` names a folder the run replaces whole; one holding anything but an earlier primed
/// checkpoint is refused before priming starts, and left as it was.
#[test]
fn out_folder_holding_other_files_is_refused_before_priming() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("experiments");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "precious").unwrap();
    let prime = || {
        primer()
            .args(small_run_args(&model, &data))
            .args(["--method", "ft", "--steps", "1", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = prime();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("notes.txt") && stderr.contains("choose another output folder"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );
    assert!(!out.join("priming.json").exists());

    // Without the user's file the checkpoint is written, and a second run replaces it.
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    for _ in 0..2 {
        let o = prime();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(out.join("priming.json").is_file());
}

/// Meta priming with a LoRA inner loop writes a LoRA checkpoint (its settings in the file's
/// header) and no adapter; `primer finetune --method lora --init` trains from it.
#[test]
fn lora_inner_loop_primes_a_lora_checkpoint_that_lora_tuning_starts_from() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("primed");
    let o = primer()
        .args(small_run_args(&model, &data))
        .args([
            "--method",
            "meta",
            "--inner-params",
            "lora",
            "--lora-r",
            "2",
            "--lora-targets",
            "query,value,output",
            "--inner-steps",
            "2",
            "--steps",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.join("lora.safetensors").exists());
    assert!(!out.join("adapter.safetensors").exists());
    let primed = primer::model::Tagger::load_primed(&out, &candle_core::Device::Cpu).unwrap();
    let m = primed.pe.as_ref().unwrap();
    assert_eq!(m.name(), "lora");
    // 1 layer × 3 targets × (A, B); B moved away from its zero start in priming.
    assert_eq!(m.params.len(), 6);
    let b = m.params.get("encoder.layer.0.output.dense.lora_B").unwrap();
    let moved = b.flatten_all().unwrap().abs().unwrap().sum_all().unwrap();
    assert!(
        moved.to_scalar::<f32>().unwrap() > 0.0,
        "the outer step trained LoRA's B"
    );

    let o = primer()
        .args(["finetune", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--init")
        .arg(&out)
        .args([
            "--lang",
            "en",
            "--method",
            "lora",
            "--lora-r",
            "2",
            "--lora-targets",
            "query,value,output",
            "--train-limit",
            "16",
            "--epochs",
            "1",
            "--max-len",
            "32",
        ])
        .args(["--precision", "tf32"])
        .arg("--out")
        .arg(tmp.path().join("ft"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // No TF32 on a CPU: the run says it ran fp32, and metrics.json keeps both.
    assert!(stdout.contains("fp32 products"), "{stdout}");
    let metrics: primer::train::FinetuneMetrics =
        primer::fsutil::read_json(&tmp.path().join("ft/metrics.json")).unwrap();
    let precision = metrics.precision.expect("recorded");
    assert_eq!(
        (precision.requested.as_str(), precision.effective.as_str()),
        ("tf32", "fp32")
    );
}

/// `--lora-dropout` in priming (the inner loop and outer step compute LoRA's branch in
/// activation space) and in fine-tuning from the primed LoRA checkpoint, which does not carry
/// the dropout: the run's own value applies, and a value outside [0, 1) is refused by name.
#[test]
fn lora_dropout_primes_and_tunes_from_the_primed_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((model, data)) = setup(tmp.path()) else {
        return;
    };
    let out = tmp.path().join("primed");
    let lora = ["--lora-r", "2", "--lora-targets", "query,output"];
    let o = primer()
        .args(small_run_args(&model, &data))
        .args(["--method", "meta", "--inner-params", "lora"])
        .args(lora)
        .args([
            "--lora-dropout",
            "0.2",
            "--inner-steps",
            "2",
            "--steps",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr:\n{stderr}");
    assert!(out.join("lora.safetensors").exists());

    let finetune = |dropout: &str, dir: &str| {
        primer()
            .args(["finetune", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--init")
            .arg(&out)
            .args(["--lang", "en", "--method", "lora"])
            .args(lora)
            .args(["--lora-dropout", dropout])
            .args(["--train-limit", "16", "--epochs", "1", "--max-len", "32"])
            .arg("--out")
            .arg(tmp.path().join(dir))
            .output()
            .unwrap()
    };
    let o = finetune("0.1", "ft");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stderr:\n{stderr}");
    assert!(tmp.path().join("ft/metrics.json").exists());
    let o = finetune("1.0", "ft-bad");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("lora_dropout") && stderr.contains("[0, 1)"),
        "{stderr}"
    );
}
