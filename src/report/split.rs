//! Rows per value of a plotted key. A key that a `[[report.figure]]` plots may vary within a
//! setting without `[report] select` (the figure draws every value); Table 1 and the
//! comparisons hold one run per setting × language × seed, so there each value is a row of its
//! own, named `<setting> · <key>=<value>` ([`split_name`]). `primer compare --key` builds its
//! rows the same way, so its numbers are the report's.

use crate::report::{ReportInput, RunRecord};
use crate::spec::report::ComparePair;

/// A row of a split setting.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRow {
    /// [`split_name`] of the setting and the values.
    pub name: String,
    /// The setting it belongs to.
    pub setting: String,
    /// The values of the keys that vary within the setting, in the order of the keys.
    pub values: Vec<(String, String)>,
}

/// What precedes each `key=value` of a row name.
const VALUE_SEPARATOR: &str = " · ";

/// The row name of a setting's runs with these key values.
pub fn split_name(setting: &str, values: &[(String, String)]) -> String {
    let mut name = setting.to_string();
    for (key, value) in values {
        name += &format!("{VALUE_SEPARATOR}{key}={value}");
    }
    name
}

/// Whether `row` is `setting` itself or one of its rows ([`split_name`]).
pub fn is_row_of(row: &str, setting: &str) -> bool {
    row == setting
        || row
            .strip_prefix(setting)
            .is_some_and(|rest| rest.starts_with(VALUE_SEPARATOR))
}

/// A swept value as the report shows it: JSON, without the quotes of a string.
pub fn shown_value(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::String(s)) => s,
        _ => json.to_string(),
    }
}

/// The run's value of a swept key (as shown), if the key is one of its axes.
pub fn axis_value(run: &RunRecord, key: &str) -> Option<String> {
    run.meta
        .axes
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| shown_value(v))
}

/// The run's values of those of `keys` that are its axes, in `keys` order.
pub fn key_values(run: &RunRecord, keys: &[String]) -> Vec<(String, String)> {
    keys.iter()
        .filter_map(|k| axis_value(run, k).map(|v| (k.clone(), v)))
        .collect()
}

/// `input` with every setting whose runs take several values of `keys` split into one setting
/// per combination of the values (the keys that vary within it, in `keys` order), in the order
/// the runs list them; `[report] table1_rows` and `table1_groups` name the split rows in place
/// of the setting. Settings that do not vary the keys keep their names. Returns the input and
/// the rows split off.
pub fn split_settings(input: &ReportInput, keys: &[String]) -> (ReportInput, Vec<SplitRow>) {
    let mut out = input.clone();
    let mut origin: Vec<SplitRow> = Vec::new();
    if keys.is_empty() {
        return (out, origin);
    }
    // Per setting: its split names in run order (a setting that does not vary keeps its name).
    let mut names_of: Vec<(String, Vec<String>)> = Vec::new();
    for setting in &input.settings {
        let runs: Vec<&RunRecord> = input
            .runs
            .iter()
            .filter(|r| &r.meta.setting == setting)
            .collect();
        let varying: Vec<String> = keys
            .iter()
            .filter(|k| {
                let mut seen: Vec<Option<String>> = Vec::new();
                for r in &runs {
                    let v = axis_value(r, k);
                    if !seen.contains(&v) {
                        seen.push(v);
                    }
                }
                seen.len() > 1
            })
            .cloned()
            .collect();
        let mut names: Vec<String> = Vec::new();
        if varying.is_empty() {
            names.push(setting.clone());
        } else {
            for r in &runs {
                let values = key_values(r, &varying);
                let name = split_name(setting, &values);
                if !names.contains(&name) {
                    names.push(name.clone());
                    origin.push(SplitRow {
                        name,
                        setting: setting.clone(),
                        values,
                    });
                }
            }
            for r in out.runs.iter_mut().filter(|r| &r.meta.setting == setting) {
                r.meta.setting = split_name(setting, &key_values(r, &varying));
            }
            for p in out
                .priming_runs
                .iter_mut()
                .filter(|p| &p.setting == setting)
            {
                // Learning curves stay per priming run; they are listed under the first row.
                p.setting = names[0].clone();
            }
        }
        names_of.push((setting.clone(), names));
    }
    let expand = |list: &[String]| -> Vec<String> {
        list.iter()
            .flat_map(|s| {
                names_of
                    .iter()
                    .find(|(base, _)| base == s)
                    .map_or_else(|| vec![s.clone()], |(_, names)| names.clone())
            })
            .collect()
    };
    out.settings = expand(&input.settings);
    out.spec.table1_rows = expand(&input.spec.table1_rows);
    out.spec.table1_groups = input.spec.table1_groups.iter().map(|g| expand(g)).collect();
    out.spec.compare = expand_pairs(&input.spec.compare, &names_of, &origin);
    (out, origin)
}

/// `[report] compare` over split rows: a pair naming a split setting compares its rows with
/// the other side's rows of the same values (meta priming at 50 sentences with FT priming at
/// 50), as the default pairs do; a key only one side varies does not keep rows apart.
fn expand_pairs(
    pairs: &[ComparePair],
    names_of: &[(String, Vec<String>)],
    origin: &[SplitRow],
) -> Vec<ComparePair> {
    // A name is a setting (all its rows) or one row of a split setting; a row carries the
    // values it was split by (none for a setting that is not split).
    let rows = |name: &str| -> Vec<(String, Vec<(String, String)>)> {
        let names = names_of
            .iter()
            .find(|(base, _)| base == name)
            .map_or_else(|| vec![name.to_string()], |(_, rows)| rows.clone());
        names
            .into_iter()
            .map(|n| {
                let values = origin
                    .iter()
                    .find(|r| r.name == n)
                    .map_or_else(Vec::new, |r| r.values.clone());
                (n, values)
            })
            .collect()
    };
    let agree = |x: &[(String, String)], y: &[(String, String)]| {
        x.iter()
            .all(|(k, v)| y.iter().all(|(k2, v2)| k != k2 || v == v2))
    };
    let is_split = |name: &str| {
        names_of
            .iter()
            .any(|(base, rows)| base == name && rows[0] != *base)
    };
    let mut out = Vec::new();
    for p in pairs {
        // Two rows named as such are compared as named, whatever their values.
        if !is_split(&p.a) && !is_split(&p.b) {
            out.push(p.clone());
            continue;
        }
        let before = out.len();
        for (a, va) in rows(&p.a) {
            for (b, vb) in rows(&p.b) {
                if agree(&va, &vb) {
                    out.push(ComparePair {
                        why: p.why.clone(),
                        ..ComparePair::new(a.clone(), b)
                    });
                }
            }
        }
        // No rows of equal values: the pair stays as declared, so that the comparison
        // refuses it by name (`compare::compared_pairs`) instead of dropping it unseen.
        if out.len() == before {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testutil::{input, run};
    use crate::spec::ReportSpec;

    fn with_axis(mut r: RunRecord, key: &str, value: &str) -> RunRecord {
        r.meta.axes.push((key.to_string(), value.to_string()));
        r.meta.run_id += &format!("-{value}");
        r
    }

    #[test]
    fn settings_that_vary_a_plotted_key_get_one_row_per_value() {
        let key = "finetune.data.train_limit";
        let mut runs = Vec::new();
        for n in ["50", "100"] {
            runs.push(with_axis(run("AT", "hi", 1, Some(0.5)), key, n));
        }
        runs.push(run("Full", "hi", 1, Some(0.6)));
        let spec = ReportSpec {
            table1_rows: vec!["Full".into(), "AT".into()],
            ..Default::default()
        };
        let inp = input(&["AT", "Full"], &["hi"], runs, spec);
        let (out, origin) = split_settings(&inp, &[key.to_string()]);
        let at50 = format!("AT · {key}=50");
        let at100 = format!("AT · {key}=100");
        assert_eq!(
            out.settings,
            vec![at50.clone(), at100.clone(), "Full".into()]
        );
        assert_eq!(
            out.spec.table1_rows,
            vec!["Full".to_string(), at50.clone(), at100]
        );
        assert_eq!(out.runs[0].meta.setting, at50);
        assert_eq!(out.runs[2].meta.setting, "Full");
        assert_eq!(origin[0].name, at50);
        assert_eq!(origin[0].setting, "AT");
        assert_eq!(origin[0].values, vec![(key.to_string(), "50".to_string())]);
        assert_eq!(origin.len(), 2);
        // Without plotted keys nothing changes.
        assert_eq!(split_settings(&inp, &[]).0, inp);
    }

    #[test]
    fn a_declared_pair_of_split_settings_compares_the_rows_of_equal_values() {
        let key = "finetune.data.train_limit";
        let mut runs = Vec::new();
        for setting in ["Meta", "FT"] {
            for n in ["50", "100"] {
                runs.push(with_axis(run(setting, "hi", 1, Some(0.5)), key, n));
            }
        }
        runs.push(run("Full", "hi", 1, Some(0.6)));
        let pair = |a: &str, b: &str| ComparePair::new(a, b);
        let spec = ReportSpec {
            compare: vec![pair("Meta", "FT"), pair("Meta", "Full")],
            ..Default::default()
        };
        let inp = input(&["Meta", "FT", "Full"], &["hi"], runs, spec);
        let (out, _) = split_settings(&inp, &[key.to_string()]);
        let row = |s: &str, n: &str| format!("{s} · {key}={n}");
        assert_eq!(
            out.spec.compare,
            vec![
                pair(&row("Meta", "50"), &row("FT", "50")),
                pair(&row("Meta", "100"), &row("FT", "100")),
                // Full does not vary the key: every row of the other side pairs with it.
                pair(&row("Meta", "50"), "Full"),
                pair(&row("Meta", "100"), "Full"),
            ]
        );
        // What the same runs' split makes of other declared pairs.
        let expanded = |compare: Vec<ComparePair>| {
            let spec = ReportSpec {
                compare,
                ..Default::default()
            };
            let declared = ReportInput {
                spec,
                ..inp.clone()
            };
            split_settings(&declared, &[key.to_string()]).0.spec.compare
        };
        // Two named rows are compared as named, even at different values.
        let named = vec![pair(&row("Meta", "50"), &row("FT", "100"))];
        assert_eq!(expanded(named.clone()), named);
        // A named row pairs with the other side's row of its value only.
        assert_eq!(
            expanded(vec![pair(&row("Meta", "100"), "FT")]),
            vec![pair(&row("Meta", "100"), &row("FT", "100"))]
        );
    }

    #[test]
    fn a_declared_pair_whose_rows_share_no_values_is_refused_by_name() {
        let key = "finetune.data.train_limit";
        let mut runs = Vec::new();
        for (setting, n) in [
            ("Meta", "50"),
            ("Meta", "100"),
            ("FT", "200"),
            ("FT", "500"),
        ] {
            runs.push(with_axis(run(setting, "hi", 1, Some(0.5)), key, n));
        }
        let spec = ReportSpec {
            compare: vec![ComparePair::new("Meta", "FT")],
            ..Default::default()
        };
        let inp = input(&["Meta", "FT"], &["hi"], runs, spec);
        let (out, _) = split_settings(&inp, &[key.to_string()]);
        // Kept as declared rather than dropped (which fell back to the default pairs unseen).
        assert_eq!(out.spec.compare, vec![ComparePair::new("Meta", "FT")]);
        let err = crate::report::compare::compared_pairs(&out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"Meta\" and \"FT\" have no rows of equal values")
                && err.contains(&format!("\"Meta · {key}=100\""))
                && err.contains(&format!("\"FT · {key}=500\"")),
            "{err}"
        );
    }
}
