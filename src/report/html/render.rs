//! The page's HTML, written with maud: every value spliced in with `(…)` is escaped, so
//! setting names, paths, errors and log lines from the store cannot become markup. The only
//! unescaped text is the page's own CSS and JavaScript.

use super::chart::{LineChart, Series};
use super::{PageData, PrimingDetail, RunDetail, RunRow, ShownState, config_lines};
use crate::metric::Scores;
use crate::report::bootstrap::{DeltaEstimate, Verdict};
use crate::report::compare::{LangDelta, PairComparison};
use crate::report::paper::PAPER_LABEL;
use crate::report::table::{CellStat, INCOMPLETE_MARK, MISSING, format_cell, format_percent};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::collections::HashSet;

const CSS: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// An element id made of `prefix` and `raw` that is safe in a `#fragment` link: ASCII letters,
/// digits and `_` are kept, every other byte becomes `-xx` (hex), so distinct names never
/// share an id.
pub fn anchor(prefix: &str, raw: &str) -> String {
    let mut id = prefix.to_string();
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            id.push(b as char);
        } else {
            id.push_str(&format!("-{b:02x}"));
        }
    }
    id
}

/// The id of a fine-tuning run's detail.
pub fn run_anchor(run_id: &str) -> String {
    anchor("run-", run_id)
}

/// The id of a priming run's detail.
pub fn priming_anchor(run_id: &str) -> String {
    anchor("prime-", run_id)
}

/// An SVG file as a `data:` URL for an `<img>`: self-contained, and an image cannot run
/// scripts whatever the file holds. Only the characters that end or break a URL are
/// percent-encoded; maud escapes the rest for the attribute.
pub fn svg_data_url(svg: &str) -> String {
    let mut url = String::with_capacity(svg.len() + 32);
    url.push_str("data:image/svg+xml;charset=utf-8,");
    for c in svg.chars() {
        match c {
            '%' => url.push_str("%25"),
            '#' => url.push_str("%23"),
            '\n' => url.push_str("%0A"),
            '\r' => url.push_str("%0D"),
            '\t' => url.push_str("%09"),
            c => url.push(c),
        }
    }
    url
}

fn f2(v: Option<f64>) -> String {
    v.map_or(MISSING.to_string(), |v| format!("{v:.2}"))
}

fn signed(v: Option<f64>) -> String {
    v.map_or(MISSING.to_string(), |v| format!("{v:+.2}"))
}

fn duration(seconds: f64) -> String {
    if seconds < 9.95 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// `text` linking to the run table filtered to the runs `keys` (row keys); plain text when
/// no run is behind it.
fn runs_link(keys: &[usize], label: &str, text: &str) -> Markup {
    if keys.is_empty() {
        return html! { (text) };
    }
    let list = keys
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let title = format!(
        "{} run{} behind this number: show {}",
        keys.len(),
        if keys.len() == 1 { "" } else { "s" },
        if keys.len() == 1 { "it" } else { "them" }
    );
    html! {
        a.runs href="#runs" data-runs=(list) data-label=(label) title=(title) { (text) }
    }
}

fn verdict_class(v: &Verdict) -> &'static str {
    match v {
        Verdict::Better => "verdict better",
        Verdict::Worse => "verdict worse",
        Verdict::NoDetectableDifference => "verdict nodiff",
        Verdict::Inconclusive { .. } => "verdict inconclusive",
    }
}

fn ci(e: Option<&DeltaEstimate>) -> String {
    e.map_or(MISSING.to_string(), |e| {
        format!("[{:+.2}, {:+.2}]", e.ci_low, e.ci_high)
    })
}

/// The whole page.
pub fn render(p: &PageData<'_>) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sweep " (p.sweep_name) (super::TITLE_SUFFIX) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (header(p))
                main {
                    (table1(p))
                    (comparisons(p))
                    (figures(p))
                    (run_table(p))
                    (priming_table(p))
                    (run_details(p))
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    page.into_string()
}

fn header(p: &PageData<'_>) -> Markup {
    let h = &p.header;
    let counts: Vec<String> = ShownState::ALL
        .iter()
        .filter_map(|s| h.counts.get(s).map(|n| format!("{n} {}", s.as_str())))
        .collect();
    let run_time: f64 = h.kinds.iter().map(|k| k.seconds).sum();
    html! {
        header {
            h1 { "Sweep " span.name { (p.sweep_name) } }
            dl.facts {
                dt { "Sweep file" }
                dd { @match &h.sweep_file {
                    Some(f) => code { (f.display().to_string()) },
                    None => { (MISSING) },
                } }
                dt { "primer commit" }
                dd { code { (h.commit) } }
                dt { "Device(s)" }
                dd { @if h.devices.is_empty() { (MISSING) } @else { (h.devices.join(", ")) } }
                dt { "Runs" }
                dd #run-counts { (if counts.is_empty() { "none".to_string() } else { counts.join(" · ") }) }
                dt { "Wall time" }
                dd { (h.wall_time_s.map_or(MISSING.to_string(), |s| duration(s as f64)))
                     span.note { " (first start to last end of a run)" } }
                dt { "Run time" }
                dd { (duration(run_time)) span.note { " (summed over finished runs)" } }
            }
            @if !h.warnings.is_empty() {
                ul.warnings { @for w in &h.warnings { li { strong { "Warning: " } (w) } } }
            }
            @if !h.kinds.is_empty() {
                table.data.kinds {
                    thead { tr { th { "Runs" } th.num { "Done" } th.num { "Run time" }
                                 th.num { "Mean per run" } } }
                    tbody { @for k in &h.kinds {
                        tr {
                            td { (k.kind) }
                            td.num { (k.done) "/" (k.runs) }
                            td.num { (duration(k.seconds)) }
                            td.num { (if k.timed > 0 { duration(k.seconds / k.timed as f64) } else { MISSING.to_string() }) }
                        }
                    } }
                }
            }
            nav {
                a href="#table1" { "Table 1" }
                a href="#comparisons" { "Comparisons" }
                a href="#figures" { "Figures" }
                a href="#runs" { "Runs" }
                @if !p.priming.is_empty() { a href="#priming" { "Priming runs" } }
                a href="#details" { "Run details" }
            }
        }
    }
}

fn cell_text(c: &Option<CellStat>, full_n: usize) -> String {
    c.as_ref()
        .map_or(MISSING.to_string(), |c| format_cell(c, full_n))
}

fn table1(p: &PageData<'_>) -> Markup {
    let t = p.table1;
    let full_n = t.max_seeds();
    let multi_group = t.groups.len() > 1;
    let langs: Vec<&str> = t.languages.iter().map(String::as_str).collect();
    let any_incomplete = t
        .rows
        .iter()
        .any(|r| r.average.is_some() && !r.average_complete());
    html! {
        section #table1 {
            h2 { "Table 1" }
            @if t.rows.is_empty() {
                p.note { "No setting to show." }
            } @else {
                table.data #table1-table {
                    thead { tr {
                        @if multi_group { th.num { "Group" } }
                        th { "Setting" } th.num { "% params" }
                        @for l in &t.languages { th.num { (l) } }
                        th.num { "Avg" }
                    } }
                    tbody { @for r in &t.rows {
                        tr {
                            @if multi_group { td.num { (r.group + 1) } }
                            td { (r.setting) }
                            td.num { (runs_link(&p.runs_of(&r.setting, &langs),
                                &format!("{} (all languages)", r.setting),
                                &r.trained_percent.map_or(MISSING.to_string(), format_percent))) }
                            @for ((c, b), l) in r.cells.iter().zip(&r.bold).zip(&t.languages) {
                                @let text = cell_text(c, full_n);
                                // "(n=k)" in small print beside the linked number.
                                @let (number, seeds) = text.split_once(" (n=").map_or((text.as_str(), None), |(a, b)| (a, Some(b)));
                                td.num.best[*b] {
                                    (runs_link(&p.runs_of(&r.setting, &[l]), &format!("{} · {l}", r.setting), number))
                                    @if let Some(n) = seeds { span.seeds { " (n=" (n) } }
                                }
                            }
                            td.num.best[r.bold_average] {
                                (runs_link(&p.runs_of(&r.setting, &langs),
                                    &format!("{} (average)", r.setting), &cell_text(&r.average, full_n)))
                                @if r.average.is_some() && !r.average_complete() { (INCOMPLETE_MARK) }
                            }
                        }
                    } }
                }
                p.legend {
                    "Test entity-level micro F1 ×100"
                    @if full_n > 1 { ", mean ± sd over " (full_n) " seeds ((n=k): k seeds behind the cell)" }
                    ". Bold: highest mean in its group and column, not a test: the comparisons say which differences are detectable. " (MISSING) ": no finished run. "
                    @if any_incomplete { (INCOMPLETE_MARK) ": average over the languages present only. " }
                    "Each number links to the runs it averages."
                }
            }
        }
    }
}

/// Row keys of the runs behind one language (or the average) of a compared pair.
fn pair_runs(p: &PageData<'_>, pair: &PairComparison, d: &LangDelta) -> Vec<usize> {
    let seeds: Vec<u64> = d.per_seed.iter().map(|(s, _)| *s).collect();
    let langs: Vec<&str> = if pair.per_lang.iter().any(|l| l.lang == d.lang) {
        vec![d.lang.as_str()]
    } else {
        pair.per_lang.iter().map(|l| l.lang.as_str()).collect()
    };
    let mut keys: Vec<usize> = langs
        .iter()
        .flat_map(|l| {
            let mut k = p.runs_with_seeds(&pair.a, l, &seeds);
            k.extend(p.runs_with_seeds(&pair.b, l, &seeds));
            k
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn comparisons(p: &PageData<'_>) -> Markup {
    let c = p.comparison;
    let langs: Vec<&str> = c.languages.iter().map(String::as_str).collect();
    html! {
        @let family = c.pairs.iter().find_map(|pair| pair.family());
        section #comparisons {
            h2 { "Comparisons" }
            @if c.pairs.is_empty() {
                p.note { "No pair of settings compared." }
            } @else {
                h3 { "Is a better than b? (test F1 ×100, a − b)" }
                p.legend {
                    "Each seed is one unit: its priming run and the fine-tuning runs that start from it. "
                    "The 95% interval is a hierarchical bootstrap (" (p.bootstrap_samples)
                    " resamples) over seeds, then test sentences; the verdict rests on it: "
                    span.verdict.better { "better" } " / " span.verdict.worse { "worse" }
                    " when it excludes 0, " span.verdict.nodiff { "no detectable difference" }
                    " when it does not, " span.verdict.inconclusive { "inconclusive" }
                    " with too few seeds. Scoring noise only resamples sentences: how precisely these runs were scored."
                    @if let Some(m) = family {
                        " The family's interval widens each headline interval so that all " (m)
                        " hold together (Bonferroni); read its verdict when reading the pairs as a whole."
                    }
                }
                table.data #pairs-table {
                    thead { tr { th { "a" } th { "b" } th { "Why" } th { "Over" } th.num { "Seeds" }
                                 th.num { "Δ" } th.num { "95% CI" } th { "Verdict" }
                                 @if let Some(m) = family {
                                     th.num { "95% CI, family of " (m) } th { "Family-wise verdict" }
                                 } } }
                    tbody { @for pair in &c.pairs {
                        @let summary = pair.headline();
                        tr {
                            td { (pair.a) } td { (pair.b) } td.wrap { (pair.why) }
                            @match summary {
                                Some((over, d)) => {
                                    td { (over) }
                                    td.num { (d.seeds()) }
                                    td.num { (runs_link(&pair_runs(p, pair, d),
                                        &format!("{} vs {} · {over}", pair.a, pair.b),
                                        &format!("{:+.2}", d.delta()))) }
                                    td.num { (ci(d.seed_aware.as_ref())) }
                                    td { span class=(verdict_class(&d.verdict)) { (d.verdict.to_string()) } }
                                    @if family.is_some() {
                                        @match &d.family_wise {
                                            Some(f) => {
                                                td.num { (ci(Some(&f.estimate))) }
                                                td { span class=(verdict_class(&f.verdict)) { (f.verdict.to_string()) } }
                                            },
                                            None => { td.num { (MISSING) } td { (MISSING) } },
                                        }
                                    }
                                },
                                None => {
                                    td { (MISSING) } td.num { "0" } td.num { (MISSING) }
                                    td.num { (MISSING) } td { (MISSING) }
                                    @if family.is_some() { td.num { (MISSING) } td { (MISSING) } }
                                },
                            }
                        }
                    } }
                }
                @for pair in &c.pairs {
                    details.pair {
                        summary { (pair.a) " − " (pair.b) span.note { " (" (pair.why) ")" } }
                        @if pair.per_lang.is_empty() {
                            p.note { "No language has a seed that both settings finished." }
                        } @else {
                            table.data {
                                thead { tr { th { "Lang" } th.num { "Seeds" } th { "Δ per seed" }
                                    th.num { "Mean Δ" } th.num { "95% CI, seeds + sentences" }
                                    th { "Verdict" } th.num { "95% CI, scoring noise only" }
                                    th.num { "Sentences" } } }
                                tbody { @for d in pair.per_lang.iter().chain(&pair.average) {
                                    tr {
                                        td { (d.lang) }
                                        td.num { (d.seeds()) }
                                        td { (d.per_seed.iter().map(|(s, v)| format!("{s}: {v:+.2}")).collect::<Vec<_>>().join(", ")) }
                                        td.num { (runs_link(&pair_runs(p, pair, d),
                                            &format!("{} vs {} · {}", pair.a, pair.b, d.lang),
                                            &format!("{:+.2}", d.delta()))) }
                                        td.num { (ci(d.seed_aware.as_ref())) }
                                        td { span class=(verdict_class(&d.verdict)) { (d.verdict.to_string()) } }
                                        td.num { (ci(Some(&d.scoring_noise))) }
                                        td.num { (d.sentences.map_or(String::new(), |n| n.to_string())) }
                                    }
                                } }
                            }
                        }
                        @if !pair.notes.is_empty() {
                            ul.notes { @for n in &pair.notes { li { (n) } } }
                        }
                    }
                }
            }
            h3 #paper { "Ours and the paper" }
            @if c.paper_rows.is_empty() {
                p.note { "No setting is mapped to a paper row ([report] paper_rows is empty)." }
            } @else {
                table.data #paper-table {
                    thead { tr { th { "Setting" } th { "Source" } th.num { "% params" }
                        @for l in &c.languages { th.num { (l) } } th.num { "Avg" } } }
                    tbody { @for r in &c.paper_rows {
                        @let both: Vec<&str> = langs.iter().zip(r.ours.iter().zip(&r.paper))
                            .filter(|(_, (o, t))| o.is_some() && t.is_some())
                            .map(|(l, _)| *l).collect();
                        tr.ours {
                            td { (r.setting) } td { "ours" }
                            td.num { (r.ours_percent.map_or(MISSING.to_string(), format_percent)) }
                            @for (v, l) in r.ours.iter().zip(&c.languages) {
                                td.num { (runs_link(&p.runs_of(&r.setting, &[l]),
                                    &format!("{} · {l}", r.setting), &f2(*v))) }
                            }
                            td.num { (runs_link(&p.runs_of(&r.setting, &both),
                                &format!("{} (average)", r.setting), &f2(r.ours_avg))) }
                        }
                        tr.paper {
                            td { "↳ " (r.paper_label) } td { (PAPER_LABEL) }
                            td.num { (format_percent(r.paper_percent)) }
                            @for v in &r.paper { td.num { (f2(*v)) } }
                            td.num { (f2(r.paper_avg)) }
                        }
                        tr.delta {
                            td {} td { "Δ ours − paper" } td {}
                            @for (o, t) in r.ours.iter().zip(&r.paper) {
                                td.num { (signed(o.zip(*t).map(|(o, t)| o - t))) }
                            }
                            td.num { (signed(r.ours_avg.zip(r.paper_avg).map(|(o, t)| o - t))) }
                        }
                    } }
                }
            }
            @if !c.figure4.is_empty() {
                h3 { "Figure 4 (average over languages)" }
                table.data #figure4-table {
                    thead { tr { th { "Inner loop" } th { "Fine-tuning" } th { "Setting" }
                        th.num { "ours" } th.num { (PAPER_LABEL) } th.num { "Δ" } } }
                    tbody { @for f in &c.figure4 {
                        tr {
                            td { (f.inner_loop) } td { (f.finetune) } td { (f.setting) }
                            td.num {
                                (runs_link(&p.runs_of(&f.setting, &langs),
                                    &format!("{} (average)", f.setting), &f2(f.ours)))
                                @if f.ours.is_some() && f.ours_languages < c.languages.len() {
                                    span.note { " (" (f.ours_languages) "/" (c.languages.len()) " langs)" }
                                }
                            }
                            td.num { (format!("{:.2}", f.paper)) }
                            td.num { (signed(f.ours.map(|o| o - f.paper))) }
                        }
                    } }
                }
            }
            @if !c.evaluation_sets.is_empty() {
                h3 { "Test sets" }
                ul.test-sets { @for e in &c.evaluation_sets {
                    li {
                        strong { (e.lang) } ": "
                        @if e.test_sets.is_empty() { "no finished run" }
                        @for (i, (n, f)) in e.test_sets.iter().enumerate() {
                            @if i > 0 { "; " }
                            (n) " sentences"
                            @if f.is_empty() { " (no fingerprint recorded)" } @else { ", fingerprint " code { (f) } }
                        }
                        @if e.test_sets.len() > 1 { strong.warn { " — runs were scored on different test sets" } }
                        @if !e.drawn_by.is_empty() { span.note { " (" (e.drawn_by.join(", ")) ")" } }
                    }
                } }
            }
        }
    }
}

fn figures(p: &PageData<'_>) -> Markup {
    html! {
        section #figures {
            h2 { "Figures" }
            @if p.figures.is_empty() { p.note { "No figure was drawn." } }
            @for f in &p.figures {
                figure {
                    img src=(svg_data_url(&f.svg)) alt=(format!("{} of sweep {}", f.file, p.sweep_name));
                    figcaption { (f.file) }
                }
            }
            @if !p.skipped.is_empty() {
                ul.notes { @for s in p.skipped { li { (s) } } }
            }
        }
    }
}

/// Swept keys shown as their own run-table columns (those the fixed columns do not show).
fn axis_columns(p: &PageData<'_>) -> Vec<String> {
    let fixed = ["finetune.lr", "finetune.method", "seed", "seeds", "targets"];
    let mut keys: Vec<String> = Vec::new();
    for r in &p.rows {
        for (k, _) in &r.record.meta.axes {
            if !fixed.contains(&k.as_str()) && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

fn num_cell(v: Option<f64>, text: String) -> Markup {
    html! { td.num data-v=(v.map_or(String::new(), |v| v.to_string())) { (text) } }
}

fn priming_text(row: &RunRow<'_>) -> String {
    let m = &row.record.meta;
    match (m.priming, m.inner_loop) {
        (None, _) => "none".to_string(),
        (Some(method), None) => format!("{method:?}").to_lowercase(),
        (Some(method), Some(inner)) => format!("{method:?}, {inner:?} inner loop").to_lowercase(),
    }
}

fn run_table(p: &PageData<'_>) -> Markup {
    let axes = axis_columns(p);
    let mut settings: Vec<&str> = Vec::new();
    let mut langs: Vec<&str> = Vec::new();
    for r in &p.rows {
        if !settings.contains(&r.record.meta.setting.as_str()) {
            settings.push(&r.record.meta.setting);
        }
        if !langs.contains(&r.record.meta.lang.as_str()) {
            langs.push(&r.record.meta.lang);
        }
    }
    html! {
        section #runs {
            h2 { "Runs" }
            p.legend { "Every fine-tuning run of the sweep (a run that several settings share has a row per setting). "
                "Click a column to sort, a row to open its detail." }
            div.filters {
                input #f-text type="search" placeholder="Filter: word starts in any column" aria-label="Filter runs";
                select #f-setting aria-label="Setting" {
                    option value="" { "every setting" }
                    @for s in &settings { option value=(s) { (s) } }
                }
                select #f-lang aria-label="Language" {
                    option value="" { "every language" }
                    @for l in &langs { option value=(l) { (l) } }
                }
                select #f-status aria-label="Status" {
                    option value="" { "every status" }
                    @for s in ShownState::ALL { option value=(s.as_str()) { (s.as_str()) } }
                }
                span #f-runs hidden { span #f-runs-label {} " " button #f-runs-clear type="button" { "show every run" } }
                span #f-count.note { (p.rows.len()) " runs" }
            }
            table.data.runs #run-table data-shown=(p.rows.len()) {
                thead { tr {
                    th data-type="text" { "Run" }
                    th data-type="text" { "Setting" }
                    th data-type="text" { "Lang" }
                    th.num data-type="num" { "Seed" }
                    th data-type="text" { "Method" }
                    th.num data-type="num" { "LR" }
                    th data-type="text" { "Priming" }
                    @for a in &axes { th data-type="text" { (a) } }
                    @if p.selecting { th data-type="text" title="Used by Table 1 ([report] select)" { "Used" } }
                    th.num data-type="num" { "Dev F1" }
                    th.num data-type="num" { "Test F1" }
                    th.num data-type="num" { "Steps" }
                    th.num data-type="num" { "Wall (s)" }
                    th data-type="text" { "Status" }
                } }
                tbody { @for r in &p.rows {
                    @let m = &r.record.meta;
                    @let metrics = r.record.metrics.as_ref();
                    tr data-key=(r.key) data-setting=(m.setting) data-lang=(m.lang) data-status=(r.state.as_str()) {
                        td { a href={ "#" (run_anchor(&m.run_id)) } { code { (m.run_id.get(..8).unwrap_or(&m.run_id)) } } }
                        td { (m.setting) }
                        td { (m.lang) }
                        (num_cell(Some(m.seed as f64), m.seed.to_string()))
                        td { (m.ft_method.as_str()) }
                        (num_cell(Some(m.ft_lr), format!("{:e}", m.ft_lr)))
                        td { (priming_text(r)) }
                        @for a in &axes {
                            td { (m.axes.iter().find(|(k, _)| k == a).map_or(String::new(), |(_, v)| v.clone())) }
                        }
                        @if p.selecting { td { @if r.used { "✓" } } }
                        (num_cell(metrics.map(|x| x.dev.f1 * 100.0), f2(metrics.map(|x| x.dev.f1 * 100.0))))
                        (num_cell(metrics.map(|x| x.test.f1 * 100.0), f2(metrics.map(|x| x.test.f1 * 100.0))))
                        (num_cell(metrics.map(|x| x.steps as f64), metrics.map_or(MISSING.to_string(), |x| x.steps.to_string())))
                        (num_cell(metrics.map(|x| x.wall_time_s), metrics.map_or(MISSING.to_string(), |x| format!("{:.1}", x.wall_time_s))))
                        td { span class={ "status " (r.state.as_str()) } { (r.state.as_str()) } }
                    }
                } }
            }
        }
    }
}

fn priming_method(p: &PrimingDetail) -> String {
    let Some(c) = &p.facts.config else {
        return MISSING.to_string();
    };
    let method = c.get("method").and_then(|v| v.as_str()).unwrap_or("?");
    match c.get("inner_loop").and_then(|v| v.as_str()) {
        Some(inner) if method == "meta" => format!("meta, {inner} inner loop"),
        _ => method.to_string(),
    }
}

fn priming_table(p: &PageData<'_>) -> Markup {
    if p.priming.is_empty() {
        return html! {};
    }
    html! {
        section #priming {
            h2 { "Priming runs" }
            table.data #priming-table {
                thead { tr { th { "Run" } th { "Settings" } th { "Method" } th.num { "Outer steps" }
                    th.num { "Fine-tuning runs from it" } th { "Status" } } }
                tbody { @for r in &p.priming {
                    tr {
                        td { a href={ "#" (priming_anchor(&r.run_id)) } { code { (r.run_id.get(..8).unwrap_or(&r.run_id)) } } }
                        td { (r.settings.join(", ")) }
                        td { (priming_method(r)) }
                        td.num { (r.curves.as_ref().map_or(MISSING.to_string(), |c| c.steps.len().to_string())) }
                        td.num { (r.dependents.len()) }
                        td { span class={ "status " (r.state.as_str()) } { (r.state.as_str()) } }
                    }
                } }
            }
        }
    }
}

/// A run's resolved configuration; `shared`: lines left out because every fine-tuning run has
/// them (shown once, in `#shared-config`).
fn config_block(config: Option<&serde_json::Value>, shared: Option<&HashSet<&str>>) -> Markup {
    html! {
        @match config {
            Some(c) => {
                @let lines: Vec<String> = config_lines(c)
                    .into_iter()
                    .filter(|l| !shared.is_some_and(|s| s.contains(l.as_str())))
                    .collect();
                details.config {
                    summary { "Resolved configuration"
                        @if shared.is_some() { " (" a href="#shared-config" { "the shared keys" } " and these)" } }
                    pre { (lines.join("\n")) }
                }
            },
            None => p.note { "No spec.json yet: the run has not been prepared." },
        }
    }
}

fn failure_block(facts: &super::StoreFacts, state: ShownState) -> Markup {
    let error = facts.status.as_ref().and_then(|s| s.error.as_deref());
    html! {
        @if let Some(e) = error.filter(|_| state != ShownState::Done) {
            p { strong { "Error: " } span.error { (e) } }
        }
        @if !facts.log_tail.is_empty() {
            p.note { "Last " (facts.log_tail.len()) " lines of log.txt:" }
            pre.log { (facts.log_tail.join("\n")) }
        }
    }
}

fn type_scores(dev: &Scores, test: &Scores) -> Markup {
    let mut types: Vec<&String> = test.per_type.keys().chain(dev.per_type.keys()).collect();
    types.sort();
    types.dedup();
    let pct = |v: Option<f64>| f2(v.map(|v| v * 100.0));
    html! {
        table.data.types {
            thead { tr { th { "Type" } th { "Dev F1" } th { "Test P" } th { "Test R" } th { "Test F1" } th { "Gold (test)" } } }
            tbody {
                @for t in &types {
                    @let s = test.per_type.get(*t);
                    tr {
                        td { (t) }
                        td { (pct(dev.per_type.get(*t).map(|x| x.f1))) }
                        td { (pct(s.map(|x| x.precision))) } td { (pct(s.map(|x| x.recall))) } td { (pct(s.map(|x| x.f1))) }
                        td { (s.map_or(MISSING.to_string(), |x| x.support.to_string())) }
                    }
                }
                tr.total {
                    td { "all" } td { (pct(Some(dev.f1))) }
                    td { (pct(Some(test.precision))) } td { (pct(Some(test.recall))) } td { (pct(Some(test.f1))) }
                    td {}
                }
            }
        }
    }
}

fn run_detail(d: &RunDetail<'_>, shared: &HashSet<&str>) -> Markup {
    let m = &d.record.meta;
    let status = d.facts.status.as_ref();
    html! {
        details.run id=(run_anchor(&d.run_id)) {
            summary {
                code { (d.run_id) } " · " (d.settings.join(", ")) " · " (m.lang) " · seed " (m.seed) " · "
                span class={ "status " (d.state.as_str()) } { (d.state.as_str()) }
            }
            dl.facts {
                dt { "Settings" } dd { (d.settings.join(", ")) }
                dt { "Fine-tuning" } dd { (m.ft_method.as_str()) ", lr " (format!("{:e}", m.ft_lr)) }
                @if let Some(prime) = &m.priming_run {
                    dt { "Primed by" } dd { a href={ "#" (priming_anchor(prime)) } { code { (prime) } } }
                }
                dt { "Store directory" } dd { code { (m.run_dir.display().to_string()) } }
                @if let Some(s) = status {
                    dt { "Attempts" } dd { (s.attempts) @if let Some(slot) = &s.slot { " (last on " (slot) ")" } }
                }
            }
            @if let Some(x) = &d.record.metrics {
                p {
                    "Test F1 " strong { (format!("{:.2}", x.test.f1 * 100.0)) }
                    ", dev F1 " (format!("{:.2}", x.dev.f1 * 100.0)) " at epoch " (x.best_epoch)
                    " of " (x.epochs.len()) "; " (x.steps) " steps in " (format!("{:.1}", x.wall_time_s)) " s; "
                    (x.trained_params) " of " (x.total_params) " parameters trained ("
                    (format_percent(x.trained_percent)) "%)."
                }
                div.charts {
                    (LineChart {
                        title: "Training loss per step".into(),
                        x_label: "step".into(),
                        y_label: "loss".into(),
                        series: vec![Series {
                            label: "train loss".into(),
                            points: x.loss_curve.iter().enumerate().map(|(i, v)| ((i + 1) as f64, f64::from(*v))).collect(),
                        }],
                        mark: None,
                    }.to_svg())
                    (LineChart {
                        title: "Dev F1 per epoch".into(),
                        x_label: "epoch".into(),
                        y_label: "dev F1 ×100".into(),
                        series: vec![Series {
                            label: "dev F1 (circled: the epoch kept)".into(),
                            points: x.epochs.iter().map(|e| (e.epoch as f64, e.dev.f1 * 100.0)).collect(),
                        }],
                        mark: x.epochs.iter().find(|e| e.epoch == x.best_epoch).map(|e| (e.epoch as f64, e.dev.f1 * 100.0)),
                    }.to_svg())
                }
                (type_scores(&x.dev, &x.test))
            }
            (failure_block(&d.facts, d.state))
            (config_block(d.facts.config.as_ref(), Some(shared)))
        }
    }
}

/// The mean over a step's tasks of the values present.
fn step_mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn priming_charts(curves: &crate::prime::PrimeCurves) -> Markup {
    let series_of = |label: &str, f: &dyn Fn(&crate::prime::TaskLosses) -> Option<f64>| Series {
        label: label.to_string(),
        points: curves
            .steps
            .iter()
            .filter_map(|s| step_mean(s.tasks.iter().map(f)).map(|v| (s.step as f64, v)))
            .collect(),
    };
    let losses: Vec<Series> = [
        series_of("outer (query) loss", &|t| Some(t.query)),
        series_of("inner loss before adaptation", &|t| t.inner_before),
        series_of("inner loss at the last inner step", &|t| t.inner_after),
    ]
    .into_iter()
    .filter(|s| !s.points.is_empty())
    .collect();
    let dev_f1 = (!curves.dev.is_empty()).then(|| Series {
        label: "mean dev F1 over sources".into(),
        points: curves
            .dev
            .iter()
            .map(|d| (d.step as f64, d.mean_f1() * 100.0))
            .collect(),
    });
    html! {
        div.charts {
            (LineChart {
                title: "Priming losses (mean over tasks)".into(),
                x_label: "outer step".into(),
                y_label: "loss".into(),
                series: losses,
                mark: None,
            }.to_svg())
            @if let Some(s) = dev_f1 {
                (LineChart {
                    title: "Sources' dev F1 after adaptation".into(),
                    x_label: "outer step".into(),
                    y_label: "dev F1 ×100".into(),
                    series: vec![s],
                    mark: None,
                }.to_svg())
            }
        }
    }
}

fn priming_detail(r: &PrimingDetail) -> Markup {
    html! {
        details.run.priming id=(priming_anchor(&r.run_id)) {
            summary {
                "priming " code { (r.run_id) } " · " (r.settings.join(", ")) " · "
                span class={ "status " (r.state.as_str()) } { (r.state.as_str()) }
            }
            @match &r.curves {
                Some(c) => (priming_charts(c)),
                None => p.note { "No curves.json: the run has not finished." },
            }
            p { (r.dependents.len()) " fine-tuning run(s) start from it"
                @if !r.dependents.is_empty() { ":" } }
            @if !r.dependents.is_empty() {
                ul.dependents { @for id in &r.dependents {
                    li { a href={ "#" (run_anchor(id)) } { code { (id.get(..8).unwrap_or(id)) } } }
                } }
            }
            (failure_block(&r.facts, r.state))
            (config_block(r.facts.config.as_ref(), None))
        }
    }
}

fn run_details(p: &PageData<'_>) -> Markup {
    html! {
        section #details {
            h2 { "Run details" }
            p.legend { "Open a run for its configuration, curves and per-type scores, or its error and last log lines." }
            @let shared: HashSet<&str> = p.shared_config.iter().map(String::as_str).collect();
            @if !p.shared_config.is_empty() {
                details.config #shared-config {
                    summary { "Configuration shared by every fine-tuning run" }
                    pre { (p.shared_config.join("\n")) }
                }
            }
            @for r in &p.priming { (priming_detail(r)) }
            @for d in &p.details { (run_detail(d, &shared)) }
        }
    }
}
