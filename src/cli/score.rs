//! `primer score FILE [--mode default|strict] [--json]`: seqeval-identical entity scores of a
//! conlleval-format file.
//!
//! Input: one token per line, whitespace-separated columns of which the last two are the gold
//! and the predicted tag (every line must have the same number of columns, at least 2); blank
//! lines and `-DOCSTART-` lines separate sentences. `-` reads standard input.
//!
//! Output: conlleval's report (processed tokens and phrases, accuracy, precision / recall / FB1
//! in percent, one line per type ending with the number of predicted phrases), or with
//! `--json` the [`primer::metric::Scores`] as fractions in [0, 1].

use anyhow::{Context, bail};
use primer::data::TagScheme;
use primer::metric::{self, MetricError, Mode};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// conlleval-format file (`token ... GOLD PRED` per line, blank line between sentences); `-` for stdin.
    pub file: PathBuf,
    /// Chunking: seqeval's default (conlleval-compatible) or strict IOB2.
    #[arg(long, value_enum, default_value_t = Mode::Default)]
    pub mode: Mode,
    /// Print `{"precision","recall","f1","per_type":{TYPE:{...,"support"}}}` (fractions) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Gold and predicted tags per sentence, with each token's 1-based line number.
#[derive(Debug, Default)]
struct Conll {
    gold: Vec<Vec<String>>,
    pred: Vec<Vec<String>>,
    lines: Vec<Vec<usize>>,
}

fn parse(text: &str, name: &str) -> anyhow::Result<Conll> {
    let mut out = Conll::default();
    let (mut g, mut p, mut l) = (Vec::new(), Vec::new(), Vec::new());
    let mut columns: Option<(usize, usize)> = None;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() || cols[0] == "-DOCSTART-" {
            if !g.is_empty() {
                out.gold.push(std::mem::take(&mut g));
                out.pred.push(std::mem::take(&mut p));
                out.lines.push(std::mem::take(&mut l));
            }
            continue;
        }
        if cols.len() < 2 {
            bail!(
                "{name}:{line_no}: expected at least 2 columns (… GOLD PRED), found {}: `{}`",
                cols.len(),
                // Quoted as written: `{:?}` would escape combining marks (Devanagari, ...).
                line.trim()
            );
        }
        match columns {
            None => columns = Some((cols.len(), line_no)),
            Some((n, first)) if n != cols.len() => bail!(
                "{name}:{line_no}: {} columns, but line {first} has {n}; every token line needs the same columns \
                 (the last two are the gold and predicted tags)",
                cols.len()
            ),
            Some(_) => {}
        }
        g.push(cols[cols.len() - 2].to_string());
        p.push(cols[cols.len() - 1].to_string());
        l.push(line_no);
    }
    if !g.is_empty() {
        out.gold.push(g);
        out.pred.push(p);
        out.lines.push(l);
    }
    if out.gold.is_empty() {
        bail!("{name}: no token lines found (expected `token ... GOLD PRED` lines)");
    }
    Ok(out)
}

/// conlleval's report.
fn render_text(ev: &metric::Evaluation) -> String {
    let pct = |x: f64| 100.0 * x;
    let s = &ev.scores;
    let mut out = format!(
        "processed {} tokens with {} phrases; found: {} phrases; correct: {}.\n",
        ev.tokens, ev.total.gold, ev.total.predicted, ev.total.correct
    );
    let accuracy = if ev.tokens == 0 {
        0.0
    } else {
        ev.tokens_correct as f64 / ev.tokens as f64
    };
    out += &format!(
        "accuracy: {:6.2}%; precision: {:6.2}%; recall: {:6.2}%; FB1: {:6.2}\n",
        pct(accuracy),
        pct(s.precision),
        pct(s.recall),
        pct(s.f1)
    );
    for (kind, t) in &s.per_type {
        let found = ev.per_type.get(kind).map_or(0, |c| c.predicted);
        out += &format!(
            "{kind:>17}: precision: {:6.2}%; recall: {:6.2}%; FB1: {:6.2}  {found}\n",
            pct(t.precision),
            pct(t.recall),
            pct(t.f1)
        );
    }
    out
}

pub fn run(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display().to_string();
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input as UTF-8")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {name}"))?
    };
    let conll = parse(&text, &name)?;
    // The scheme's rules, as the data readers apply IOB2's: a tag of another scheme would be
    // scored as some entity (seqeval's default mode guesses), not refused.
    for (s, (gold, pred)) in conll.gold.iter().zip(&conll.pred).enumerate() {
        for (t, tag) in gold.iter().zip(pred).flat_map(|(g, p)| [g, p]).enumerate() {
            if !TagScheme::Iobes.accepts(tag) {
                bail!(
                    "{name}:{}: tag `{tag}` is not one of the {}; fix the file (gold and \
                     predicted tags are its last two columns)",
                    conll.lines[s][t / 2],
                    TagScheme::Iobes.describe()
                );
            }
        }
    }
    let ev = metric::evaluate(&conll.gold, &conll.pred, args.mode).map_err(|e| match &e {
        MetricError::InvalidStrictTag {
            sentence, token, ..
        }
        | MetricError::EmptyTag { sentence, token } => {
            anyhow::anyhow!("{name}:{}: {e}", conll.lines[*sentence][*token])
        }
        _ => anyhow::anyhow!("{name}: {e}"),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ev.scores)?);
    } else {
        print!("{}", render_text(&ev));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sentences_and_reports_like_conlleval() {
        let text = "-DOCSTART- -X- O O\n\nJan NNP B-PER B-PER\nSmuts NNP I-PER I-PER\nin IN O O\n\n\
                    Kaapstad NNP B-LOC B-ORG\n";
        let c = parse(text, "t").unwrap();
        assert_eq!(c.gold, [vec!["B-PER", "I-PER", "O"], vec!["B-LOC"]]);
        assert_eq!(c.lines, [vec![3, 4, 5], vec![7]]);
        let ev = metric::evaluate(&c.gold, &c.pred, Mode::Default).unwrap();
        let report = render_text(&ev);
        assert!(
            report
                .starts_with("processed 4 tokens with 2 phrases; found: 2 phrases; correct: 1.\n")
        );
        assert!(
            report
                .contains("accuracy:  75.00%; precision:  50.00%; recall:  50.00%; FB1:  50.00\n")
        );
        assert!(
            report.contains(
                "              ORG: precision:   0.00%; recall:   0.00%; FB1:   0.00  1\n"
            )
        );
        assert!(
            report.contains(
                "              PER: precision: 100.00%; recall: 100.00%; FB1: 100.00  1\n"
            )
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let e = parse("a O O\nb O\nc\n", "f.txt").unwrap_err().to_string();
        assert!(
            e.starts_with("f.txt:2:") && e.contains("line 1 has 3"),
            "{e}"
        );
        let e = parse("a O O\nb\n", "f.txt").unwrap_err().to_string();
        assert!(
            e.starts_with("f.txt:2:") && e.contains("at least 2 columns"),
            "{e}"
        );
        let e = parse("a O O\nकि\n", "f.txt").unwrap_err().to_string();
        assert!(e.ends_with("found 1: `कि`"), "{e}");
        let e = parse("\n\n", "f.txt").unwrap_err().to_string();
        assert!(e.contains("no token lines"), "{e}");
    }
}
