//! A small GitHub-markdown table writer whose output is also aligned for the terminal.

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders a markdown table with every column padded to its widest cell (counted in
/// characters, so "–" and "±" do not break the alignment).
pub fn table(headers: &[String], aligns: &[Align], rows: &[Vec<String>]) -> String {
    let ncol = headers.len();
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h).max(3)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let align = |i: usize| aligns.get(i).copied().unwrap_or(Align::Left);
    let pad = |s: &str, i: usize| {
        let fill = " ".repeat(widths[i].saturating_sub(width(s)));
        match align(i) {
            Align::Left => format!("{s}{fill}"),
            Align::Right => format!("{fill}{s}"),
        }
    };
    let mut out = String::new();
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    out += &line((0..ncol).map(|i| pad(&headers[i], i)).collect());
    out += &line(
        (0..ncol)
            .map(|i| match align(i) {
                Align::Left => format!(":{}", "-".repeat(widths[i] - 1)),
                Align::Right => format!("{}:", "-".repeat(widths[i] - 1)),
            })
            .collect(),
    );
    for row in rows {
        out += &line(
            (0..ncol)
                .map(|i| pad(row.get(i).map(String::as_str).unwrap_or(""), i))
                .collect(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_by_characters() {
        let t = table(
            &["a".into(), "value".into()],
            &[Align::Left, Align::Right],
            &[
                vec!["x".into(), "–".into()],
                vec!["longer".into(), "1.00 ± 0.10".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{t}");
        assert!(lines[1].ends_with(": |"), "{t}");
        assert!(lines[2].contains("|           – |"), "{t}");
    }
}
