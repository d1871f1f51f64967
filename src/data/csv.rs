//! Comma-separated tabular data with one integer label column.
//!
//! Rules: cells are separated by commas and trimmed; quoting is not
//! supported (a `"` in a cell is reported, not silently mis-split). The first
//! non-blank row is a header if any of its non-empty cells is not a number. Every row
//! must have as many cells as the first. Blank lines after the last row are
//! ignored; a blank line between rows is an error. Feature cells must be
//! finite numbers; the label cell must be a non-negative integer (`1` and
//! `1.0` are fine, `1.5`, `-1` and `abc` are not).

use std::path::Path;

use super::dataset::Dataset;
use super::error::DataError;
use super::file::{gunzip_if_needed, read_bytes};

/// Header names that mark the label column when none is given explicitly,
/// in order of preference (compared case-insensitively).
pub const LABEL_NAMES: [&str; 4] = ["label", "target", "y", "class"];

/// Which column holds the label.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// A header cell named `label`, `target`, `y` or `class` if present
    /// (in that order of preference), else the last column.
    #[default]
    Auto,
    /// The column at this 0-based index.
    Index(usize),
    /// The column whose header cell equals this name (needs a header row).
    Name(String),
}

/// Reads and parses a CSV file (gzip is decompressed transparently).
pub fn load(path: &Path, label: &LabelColumn) -> Result<Dataset, DataError> {
    let bytes = read_bytes(path)?;
    parse(&gunzip_if_needed(&bytes, path)?, path, label)
}

/// Parses CSV bytes into a dataset whose samples have shape `[columns - 1]`.
pub fn parse(bytes: &[u8], path: &Path, label: &LabelColumn) -> Result<Dataset, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let before = bytes.get(..offset).unwrap_or_default();
        DataError::NotUtf8 {
            path: path.to_path_buf(),
            line: before.iter().filter(|&&b| b == b'\n').count() + 1,
            offset,
        }
    })?;
    // Spreadsheet exports often start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    // (1-based line number, line without its line ending).
    let lines: Vec<(usize, &str)> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    let is_blank = |l: &str| l.trim().is_empty();
    let first = lines.iter().position(|(_, l)| !is_blank(l));
    let last = lines.iter().rposition(|(_, l)| !is_blank(l));
    let (Some(first), Some(last)) = (first, last) else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };
    let rows = lines.get(first..=last).unwrap_or_default();
    let Some(((first_line, first_text), rest)) = rows.split_first() else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };

    let first_cells = split_cells(first_text, *first_line, path)?;
    let width = first_cells.len();
    // Empty cells do not make a header (pandas writes an empty index name),
    // so a data row with a missing value is reported rather than skipped.
    let has_header = first_cells
        .iter()
        .any(|c| !c.is_empty() && c.parse::<f64>().is_err());
    let header = has_header.then_some(first_cells.as_slice());
    let label_col = resolve_label_column(label, header, width, path)?;

    let data_rows: &[(usize, &str)] = if has_header { rest } else { rows };
    // Each feature takes at least two bytes ("0,"), which bounds the
    // reservation even when the first row is much wider than the rest.
    let mut features = Vec::with_capacity(
        data_rows
            .len()
            .saturating_mul(width - 1)
            .min(bytes.len() / 2 + 1),
    );
    let mut labels = Vec::with_capacity(data_rows.len());
    for &(line, row) in data_rows {
        let cells = if is_blank(row) {
            Vec::new()
        } else {
            split_cells(row, line, path)?
        };
        if cells.len() != width {
            return Err(DataError::CsvRowWidth {
                path: path.to_path_buf(),
                line,
                expected: width,
                found: cells.len(),
            });
        }
        for (col, cell) in cells.iter().enumerate() {
            if col == label_col {
                labels.push(parse_label(cell, line, path)?);
            } else {
                features.push(parse_feature(cell, line, col + 1, path)?);
            }
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Dataset::new(
        features,
        vec![width - 1],
        labels,
        path.display().to_string(),
    )
}

/// Splits a row into trimmed cells, rejecting quotes.
fn split_cells<'a>(row: &'a str, line: usize, path: &Path) -> Result<Vec<&'a str>, DataError> {
    let cells: Vec<&str> = row.split(',').map(str::trim).collect();
    if let Some((col, cell)) = cells.iter().enumerate().find(|(_, c)| c.contains('"')) {
        return Err(DataError::CsvCell {
            path: path.to_path_buf(),
            line,
            column: col + 1,
            text: (*cell).to_string(),
            reason: "quoted fields are not supported",
        });
    }
    Ok(cells)
}

/// Picks the 0-based label column.
fn resolve_label_column(
    label: &LabelColumn,
    header: Option<&[&str]>,
    width: usize,
    path: &Path,
) -> Result<usize, DataError> {
    let fail = |message: String| DataError::CsvLabelColumn {
        path: path.to_path_buf(),
        message,
    };
    if width < 2 {
        return Err(fail(format!(
            "need at least 2 columns (features and a label), found {width}"
        )));
    }
    match label {
        LabelColumn::Index(i) if *i < width => Ok(*i),
        LabelColumn::Index(i) => Err(fail(format!(
            "label column index {i} is out of range for {width} columns (indices start at 0)"
        ))),
        LabelColumn::Name(name) => {
            let Some(header) = header else {
                return Err(fail(format!(
                    "label column {name:?} was given by name, but the file has no header row"
                )));
            };
            header.iter().position(|h| h == name).ok_or_else(|| {
                fail(format!(
                    "no column named {name:?}; header: {}",
                    header.join(",")
                ))
            })
        }
        LabelColumn::Auto => Ok(header
            .and_then(|h| {
                LABEL_NAMES
                    .iter()
                    .find_map(|want| h.iter().position(|c| c.eq_ignore_ascii_case(want)))
            })
            .unwrap_or(width - 1)),
    }
}

fn parse_feature(cell: &str, line: usize, column: usize, path: &Path) -> Result<f32, DataError> {
    let reason = match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => return Ok(v),
        Ok(_) => "not a finite f32 number",
        Err(_) if cell.is_empty() => "empty cell",
        Err(_) => "not a number",
    };
    Err(DataError::CsvCell {
        path: path.to_path_buf(),
        line,
        column,
        text: cell.to_string(),
        reason,
    })
}

fn parse_label(cell: &str, line: usize, path: &Path) -> Result<u32, DataError> {
    let reason = match cell.parse::<f64>() {
        Err(_) => "not a number",
        Ok(v) if !v.is_finite() => "not a finite number",
        Ok(v) if v < 0.0 => "labels must be non-negative",
        Ok(v) if v.fract() != 0.0 => "labels must be whole numbers",
        Ok(v) if v > f64::from(u32::MAX) => "label is too large",
        // In range and integral, so the cast is exact.
        Ok(v) => return Ok(v as u32),
    };
    Err(DataError::BadLabel {
        path: path.to_path_buf(),
        location: format!("line {line}"),
        value: cell.to_string(),
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p() -> &'static Path {
        Path::new("data/x.csv")
    }

    fn parse_auto(text: &str) -> Result<Dataset, DataError> {
        parse(text.as_bytes(), p(), &LabelColumn::Auto)
    }

    #[test]
    fn round_trip_through_file_with_header_and_trailing_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "a, b ,label\r\n1,2.5,0\r\n-3, 4e1 ,1.0\n\n  \n").unwrap();
        let d = load(&path, &LabelColumn::Auto).unwrap();
        assert_eq!(d.features, vec![1.0, 2.5, -3.0, 40.0]);
        assert_eq!(d.labels, vec![0, 1]);
        assert_eq!(d.sample_shape, vec![2]);
        assert_eq!(d.source, path.display().to_string());
    }

    #[test]
    fn no_header_label_is_last_column() {
        let d = parse_auto("1,2,3\n4,5,6\n").unwrap();
        assert_eq!(d.features, vec![1.0, 2.0, 4.0, 5.0]);
        assert_eq!(d.labels, vec![3, 6]);
    }

    #[test]
    fn header_named_label_wins_over_last_column() {
        let d = parse_auto("Target,f1,f2\n2,0.5,0.25\n").unwrap();
        assert_eq!(d.labels, vec![2]);
        assert_eq!(d.features, vec![0.5, 0.25]);
        // `label` is preferred over `y` when both are present.
        let d = parse_auto("y,label,z\n7,1,9\n").unwrap();
        assert_eq!(d.labels, vec![1]);
        assert_eq!(d.features, vec![7.0, 9.0]);
    }

    #[test]
    fn pandas_index_header_with_empty_first_cell() {
        let d = parse_auto(",a,label\n0,1.5,1\n1,2.5,0\n").unwrap();
        assert_eq!(d.features, vec![0.0, 1.5, 1.0, 2.5]);
        assert_eq!(d.labels, vec![1, 0]);
    }

    #[test]
    fn label_by_index_and_name() {
        let text = b"f,cls,g\n1,2,3\n";
        let d = parse(text, p(), &LabelColumn::Index(0)).unwrap();
        assert_eq!(
            (d.labels.clone(), d.features.clone()),
            (vec![1], vec![2.0, 3.0])
        );
        let d = parse(text, p(), &LabelColumn::Name("cls".into())).unwrap();
        assert_eq!(
            (d.labels.clone(), d.features.clone()),
            (vec![2], vec![1.0, 3.0])
        );
        let err = parse(text, p(), &LabelColumn::Name("nope".into())).unwrap_err();
        assert!(matches!(err, DataError::CsvLabelColumn { .. }));
        assert_eq!(
            err.to_string(),
            "data/x.csv: no column named \"nope\"; header: f,cls,g"
        );
        let err = parse(text, p(), &LabelColumn::Index(3)).unwrap_err();
        assert!(
            err.to_string()
                .contains("index 3 is out of range for 3 columns")
        );
        let err = parse(b"1,2\n", p(), &LabelColumn::Name("y".into())).unwrap_err();
        assert!(err.to_string().contains("no header row"));
    }

    #[test]
    fn row_width_error_names_line_and_counts() {
        let err = parse_auto("a,b,label\n1,2,0\n1,2\n").unwrap_err();
        assert!(matches!(
            err,
            DataError::CsvRowWidth {
                line: 3,
                expected: 3,
                found: 2,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "data/x.csv line 3: expected 3 columns, found 2"
        );
        let err = parse_auto("1,2,0\n\n1,2,0\n").unwrap_err();
        assert!(matches!(
            err,
            DataError::CsvRowWidth {
                line: 2,
                found: 0,
                ..
            }
        ));
    }

    #[test]
    fn bad_feature_cell_names_line_column_and_text() {
        let err = parse_auto("a,b,label\n1,2,0\n1,x7,0\n").unwrap_err();
        assert!(matches!(
            err,
            DataError::CsvCell {
                line: 3,
                column: 2,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "data/x.csv line 3, column 2: not a number: \"x7\""
        );
        let err = parse_auto("1,,0\n").unwrap_err();
        assert!(err.to_string().contains("column 2: empty cell"));
        let err = parse_auto("1,nan,0\n").unwrap_err();
        assert!(err.to_string().contains("not a finite f32 number: \"nan\""));
        let err = parse_auto("1,1e39,0\n").unwrap_err();
        assert!(err.to_string().contains("not a finite f32 number"));
    }

    #[test]
    fn quotes_are_a_clear_error() {
        let err = parse_auto("1,\"2,3\",0\n").unwrap_err();
        assert!(matches!(
            err,
            DataError::CsvCell {
                line: 1,
                column: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("quoted fields are not supported"));
    }

    #[test]
    fn bad_labels() {
        for (text, reason) in [
            ("1.5", "whole numbers"),
            ("-1", "non-negative"),
            ("abc", "not a number"),
            ("inf", "not a finite number"),
            ("5e9", "too large"),
        ] {
            let err = parse_auto(&format!("a,label\n1,0\n2,{text}\n")).unwrap_err();
            assert!(matches!(err, DataError::BadLabel { .. }), "{text}");
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("data/x.csv line 3: bad label \"{text}\"")),
                "{msg}"
            );
            assert!(msg.contains(reason), "{msg}");
        }
        assert_eq!(parse_auto("1,2.0\n1,-0\n").unwrap().labels, vec![2, 0]);
    }

    #[test]
    fn empty_and_degenerate_inputs() {
        for text in ["", "\n\n", "a,b,label\n"] {
            assert!(
                matches!(parse_auto(text).unwrap_err(), DataError::Empty { .. }),
                "{text:?}"
            );
        }
        let err = parse_auto("1\n2\n").unwrap_err();
        assert!(err.to_string().contains("need at least 2 columns"));
    }

    #[test]
    fn invalid_utf8_names_line_and_offset() {
        let err = parse(b"1,2\n3,\xff\n", p(), &LabelColumn::Auto).unwrap_err();
        assert!(matches!(
            err,
            DataError::NotUtf8 {
                line: 2,
                offset: 6,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "data/x.csv line 2: invalid utf-8 at byte offset 6"
        );
    }

    #[test]
    fn bom_is_skipped() {
        let d = parse("\u{feff}x,label\n1,2\n".as_bytes(), p(), &LabelColumn::Auto).unwrap();
        assert_eq!(d.labels, vec![2]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes, p(), &LabelColumn::Auto);
            let _ = parse(&bytes, p(), &LabelColumn::Index(1));
        }

        #[test]
        fn arbitrary_csv_like_text_never_panics(text in "[0-9a-z.,\" \\-\n\r]{0,120}") {
            let _ = parse(text.as_bytes(), p(), &LabelColumn::Auto);
            let _ = parse(text.as_bytes(), p(), &LabelColumn::Name("label".into()));
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = b"f1,f2,label\n0.5,1e-3,1\n-2,3,0\n".to_vec();
            for (i, b) in edits { let at = i.index(bytes.len()); bytes[at] = b; }
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = parse(&bytes, p(), &LabelColumn::Auto);
        }
    }
}
