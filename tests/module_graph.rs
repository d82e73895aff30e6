//! The top-level modules of the library import each other without circles (issue 17): the
//! layout reads as the pipeline only while `spec` and `store` sit below `backend`, and
//! `backend` below `sweep`. A new `crate::x` import that closes a circle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `crate::<name>` references in the code (comment lines skipped) of every file under `dir`.
fn references(dir: &Path, out: &mut BTreeSet<String>) {
    let files: Vec<_> = if dir.is_dir() {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![dir.to_path_buf()]
    };
    for p in files {
        if p.is_dir() {
            references(&p, out);
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
}

#[test]
fn top_level_modules_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main", "cli"].contains(&name.as_str()) {
            continue;
        }
        let mut refs = BTreeSet::new();
        references(&p, &mut refs);
        refs.remove(&name);
        graph.entry(name).or_default().extend(refs);
    }
    assert!(graph.contains_key("sweep") && graph["sweep"].contains("backend"));
    // Depth-first search; a grey node met again closes a circle.
    fn visit<'g>(
        n: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'g str, bool>,
        path: &mut Vec<&'g str>,
    ) {
        match state.get(n) {
            Some(true) => return,
            Some(false) => {
                let from = path.iter().position(|m| *m == n).unwrap();
                panic!("import circle: {} -> {n}", path[from..].join(" -> "));
            }
            None => {}
        }
        state.insert(n, false);
        path.push(n);
        for m in graph.get(n).into_iter().flatten() {
            if graph.contains_key(m) {
                visit(m, graph, state, path);
            }
        }
        path.pop();
        state.insert(n, true);
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        visit(n, &graph, &mut state, &mut Vec::new());
    }
}
