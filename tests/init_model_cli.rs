//! `primer init-model` end to end: the folder it writes loads as a tagger and is seeded.

use std::process::Command;

#[test]
fn init_model_writes_a_loadable_seeded_folder() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    let vocab: String = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world"]
        .iter()
        .map(|w| format!("{w}\n"))
        .collect();
    std::fs::write(tok.join("vocab.txt"), vocab).unwrap();
    let run = |out: &str, seed: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_primer"))
            .args(["init-model", "--out"])
            .arg(dir.path().join(out))
            .arg("--tokenizer-from")
            .arg(&tok)
            .args([
                "--hidden",
                "16",
                "--layers",
                "1",
                "--heads",
                "2",
                "--intermediate",
                "32",
                "--seed",
                seed,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(dir.path().join(out).join("model.safetensors")).unwrap()
    };
    let a = run("a", "7");
    let b = run("b", "7");
    let c = run("c", "8");
    assert_eq!(a, b, "same seed, same weights");
    assert_ne!(a, c);
    let t =
        primer::model::Tagger::from_pretrained(&dir.path().join("a"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(t.config.vocab_size, 6);
    assert_eq!(t.config.hidden_size, 16);
    assert!(dir.path().join("a/vocab.txt").is_file());

    // A missing tokenizer folder is a clear error naming the path.
    let o = Command::new(env!("CARGO_BIN_EXE_primer"))
        .args(["init-model", "--out"])
        .arg(dir.path().join("d"))
        .arg("--tokenizer-from")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope") && err.contains("vocab.txt"), "{err}");
    // The io error is printed once, not once per level of the error chain.
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert!(!dir.path().join("d").exists());
}

#[test]
fn init_model_refuses_to_replace_a_folder_holding_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    std::fs::create_dir_all(&tok).unwrap();
    std::fs::write(tok.join("vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n").unwrap();
    let out = dir.path().join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "precious").unwrap();
    let init = || {
        Command::new(env!("CARGO_BIN_EXE_primer"))
            .args(["init-model", "--out"])
            .arg(&out)
            .arg("--tokenizer-from")
            .arg(&tok)
            .args(["--hidden", "16", "--layers", "1", "--heads", "2"])
            .args(["--intermediate", "32"])
            .output()
            .unwrap()
    };
    let o = init();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("notes.txt") && err.contains("choose another output folder"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "precious"
    );

    // An earlier random BERT is replaced as before.
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    for _ in 0..2 {
        let o = init();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(out.join("model.safetensors").is_file());
    let marker = std::fs::read_to_string(out.join("init-model.json")).unwrap();
    assert!(marker.contains("\"hidden\": 16"), "{marker}");

    // A model folder with the very same file names that init-model did not write (a
    // downloaded checkpoint) is refused, not replaced.
    std::fs::remove_file(out.join("init-model.json")).unwrap();
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let o = init();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("model.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        weights
    );
}
