//! What the admin client commands print: `--output table` for people (like
//! `kubectl get`: upper-case headers, columns two spaces apart) or
//! `--output json` for scripts (the admin API's answer as it came).

use clap::ValueEnum;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// The admin API's JSON, for scripts.
    Json,
}

/// Rows printed together, each column as wide as its widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header and the rows, one a line, without a final newline.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                (self.rows.iter())
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        (self.rows.iter())
            .map(|r| line(r, &widths))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One line of cells, each padded to its column's width and two spaces
/// apart; the last is not padded, so no line ends in spaces. Also for
/// tables printed a row at a time (`flashgate events --follow`), whose
/// widths are fixed up front.
pub fn line<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = cell.as_ref();
        if i > 0 {
            out.push_str("  ");
        }
        out.push_str(cell);
        if i + 1 < cells.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            out.push_str(&" ".repeat(pad));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(&["NAME", "DEPTH", "PHASE"]);
        t.row(vec!["checkout".into(), "12".into(), "open".into()]);
        t.row(vec!["tickets".into(), "12345678".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "NAME      DEPTH     PHASE\n\
             checkout  12        open\n\
             tickets   12345678  -"
        );
        assert_eq!(line(&["a", "b", "c"], &[3, 1]), "a    b  c");
    }
}
