//! The paper's published numbers (Gheini et al. 2022), shipped as `data/paper/*.csv` and
//! embedded in the binary so that every report can be compared with them.

use crate::report::ReportError;
use std::collections::BTreeMap;

/// Label used wherever the paper's numbers are shown.
pub const PAPER_LABEL: &str = "paper (Gheini et al. 2022)";

const TABLE1_CSV: &str = include_str!("../../data/paper/table1.csv");
const FIGURE4_CSV: &str = include_str!("../../data/paper/figure4.csv");

/// One row of the paper's Table 1.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperRow {
    /// Row label as printed in the paper, e.g. "4/Meta Priming → AT".
    pub label: String,
    /// The paper's category ("Without Priming" / "With Priming").
    pub group: String,
    /// Percentage of parameters trained and stored.
    pub trained_percent: f64,
    /// Test F1 ×100 per language code.
    pub f1: BTreeMap<String, f64>,
}

/// The paper's Table 1 and Figure 4.
#[derive(Debug, Clone, PartialEq)]
pub struct PaperNumbers {
    /// Language codes in the paper's column order.
    pub languages: Vec<String>,
    pub table1: Vec<PaperRow>,
    /// Figure 4: `[inner loop PE, Full][fine-tuning PE, Full]`, F1 ×100 averaged over the
    /// six languages.
    pub figure4: [[f64; 2]; 2],
}

/// Canonical form of a row label for matching: whitespace removed, "->" read as "→", case
/// folded, so "4/Meta Priming→AT" and "4/Meta Priming -> AT" name the same row.
pub fn normalize_label(label: &str) -> String {
    label
        .replace("->", "→")
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

impl PaperNumbers {
    /// The embedded numbers (parsed once per call; the files are tiny).
    pub fn embedded() -> Result<Self, ReportError> {
        Self::parse(TABLE1_CSV, FIGURE4_CSV)
    }

    /// Parses the two CSV files (see `data/paper/README.md` for their columns).
    pub fn parse(table1_csv: &str, figure4_csv: &str) -> Result<Self, ReportError> {
        let t1 = "data/paper/table1.csv";
        let bad = |file: &str, line: usize, message: String| ReportError::PaperData {
            file: file.to_string(),
            line,
            message,
        };
        let mut lines = table1_csv
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines
            .next()
            .ok_or_else(|| bad(t1, 1, "empty file".into()))?;
        let header: Vec<&str> = header.split(',').map(str::trim).collect();
        if header.len() < 4 || header[..3] != ["row", "group", "trained_percent"] {
            return Err(bad(
                t1,
                1,
                "header must start with row,group,trained_percent followed by language codes"
                    .into(),
            ));
        }
        let languages: Vec<String> = header[3..].iter().map(|s| s.to_string()).collect();
        let mut table1 = Vec::new();
        for (i, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                return Err(bad(
                    t1,
                    i + 1,
                    format!("{} fields, the header has {}", fields.len(), header.len()),
                ));
            }
            let num = |s: &str| {
                s.parse::<f64>()
                    .map_err(|_| bad(t1, i + 1, format!("{s:?} is not a number")))
            };
            let mut f1 = BTreeMap::new();
            for (lang, v) in languages.iter().zip(&fields[3..]) {
                f1.insert(lang.clone(), num(v)?);
            }
            table1.push(PaperRow {
                label: fields[0].to_string(),
                group: fields[1].to_string(),
                trained_percent: num(fields[2])?,
                f1,
            });
        }

        let f4 = "data/paper/figure4.csv";
        let mut figure4 = [[f64::NAN; 2]; 2];
        for (i, line) in figure4_csv.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let idx = |s: &str| match s {
                "pe" => Ok(0),
                "full" => Ok(1),
                other => Err(bad(f4, i + 1, format!("{other:?} is neither pe nor full"))),
            };
            if fields.len() != 3 {
                return Err(bad(f4, i + 1, "expected inner_loop,finetune,avg_f1".into()));
            }
            let v = fields[2]
                .parse::<f64>()
                .map_err(|_| bad(f4, i + 1, format!("{:?} is not a number", fields[2])))?;
            figure4[idx(fields[0])?][idx(fields[1])?] = v;
        }
        if figure4.iter().flatten().any(|v| v.is_nan()) {
            return Err(bad(
                f4,
                1,
                "all four (inner_loop, finetune) cells are needed".into(),
            ));
        }
        Ok(Self {
            languages,
            table1,
            figure4,
        })
    }

    /// The Table 1 row with this label (matched with [`normalize_label`]).
    pub fn row(&self, label: &str) -> Option<&PaperRow> {
        let key = normalize_label(label);
        self.table1
            .iter()
            .find(|r| normalize_label(&r.label) == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_numbers_parse_and_figure4_matches_table1_averages() {
        let p = PaperNumbers::embedded().unwrap();
        assert_eq!(p.languages, ["hi", "af", "az", "lt", "et", "nl"]);
        assert_eq!(p.table1.len(), 7);
        let avg = |label: &str| {
            let r = p.row(label).unwrap();
            r.f1.values().sum::<f64>() / r.f1.len() as f64
        };
        // The paper's Figure 4 PE-FT column is the average of Table 1 rows 4 and 6.
        assert!((avg("4/Meta Priming->AT") - p.figure4[0][0]).abs() < 0.005);
        assert!((avg("6/MP [MAML Loop] → AT") - p.figure4[1][0]).abs() < 0.005);
        assert_eq!(p.row("1/Full FT").unwrap().f1["hi"], 86.73);
        assert_eq!(p.row("2/HT").unwrap().trained_percent, 3e-3);
        assert!(p.row("8/Nothing").is_none());
    }

    #[test]
    fn malformed_paper_data_names_file_and_line() {
        let err = PaperNumbers::parse(
            "row,group,trained_percent,hi\nA,g,1,80\nB,g,1,eighty\n",
            "inner_loop,finetune,avg_f1\npe,pe,1\npe,full,1\nfull,pe,1\nfull,full,1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("table1.csv") && err.contains("line 3"),
            "{err}"
        );
    }
}
