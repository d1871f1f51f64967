//! Tabular data with one integer label column, read as spreadsheets, pandas and R write it.
//!
//! Parsing is the `csv` crate's: quoted fields (`"a,b"`, with `""` for a quote inside), line
//! ends `\n`, `\r\n` or a lone `\r`, a UTF-8 byte-order mark, and any one-byte delimiter
//! ([`CsvOptions::delimiter`]: `,` unless given, a tab for `.tsv` files). Cells are trimmed;
//! blank lines are skipped, as pandas does. Every row must have as many cells as the first.
//! Feature cells must be finite numbers; the label cell must be a non-negative integer (`1`
//! and `1.0` are fine, `1.5`, `-1` and `abc` are not).
//!
//! The first row is a header when [`CsvOptions::header`] says so; left unset, it is guessed
//! — a header if one of its cells is not a number, or if its numbers are the column indices
//! `0, 1, 2, …` that pandas writes for an unnamed frame (after an empty index cell or not) —
//! and [`layout`] tells what was guessed and why, for the user to see.
//!
//! A file is read twice, streaming: once to count its rows, once to parse them into buffers
//! allocated at their final size. The peak memory is the features as f32 and the labels, plus
//! the reader's buffers, whatever the file's size (the data's f32 size × 1.05 for 20 features).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::dataset::Dataset;
use super::error::DataError;
use super::file::{gunzip_if_needed, is_gzip};

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
    /// No label column (`--label-column none`): every column is a feature, as in a file of
    /// samples to predict; each sample's label reads as 0.
    None,
}

impl LabelColumn {
    /// `--label-column`'s text: `none`, a 0-based index, or a header name.
    pub fn from_arg(text: &str) -> LabelColumn {
        if text.eq_ignore_ascii_case("none") {
            LabelColumn::None
        } else {
            text.parse()
                .map_or_else(|_| LabelColumn::Name(text.to_string()), LabelColumn::Index)
        }
    }
}

/// How to read a CSV file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CsvOptions {
    /// Which column holds the label; default [`LabelColumn::Auto`].
    pub label: LabelColumn,
    /// Whether the first row is a header; `None`: guess (see the module's doc).
    pub header: Option<bool>,
    /// The cell delimiter; `None`: `,` (a tab for `.tsv` files).
    pub delimiter: Option<u8>,
}

/// Why the first row was taken as a header or as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderReason {
    /// [`CsvOptions::header`] said so.
    Given,
    /// Guessed a header: this cell is not a number.
    NotANumber(String),
    /// Guessed a header: its numbers are the column indices 0, 1, 2, ….
    ColumnIndices,
    /// Guessed data: every cell is a number, and not the column indices.
    AllNumbers,
}

/// How a CSV file was read: what [`load_with`] decided, for the user to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvLayout {
    pub header: bool,
    pub reason: HeaderReason,
    pub delimiter: u8,
    pub columns: usize,
    /// 0-based, and its header cell when there is a header; `None` without one
    /// ([`LabelColumn::None`]).
    pub label_column: Option<usize>,
    pub label_name: Option<String>,
    /// Data rows (the header and blank lines not counted).
    pub rows: usize,
}

impl std::fmt::Display for CsvLayout {
    /// `header row (guessed: "mean radius" is not a number), 31 columns separated by ',',
    /// labels in column 30 ("target")`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let row = if self.header {
            "header row"
        } else {
            "no header row"
        };
        let why = match &self.reason {
            HeaderReason::Given => "as given".to_string(),
            HeaderReason::NotANumber(cell) => format!("guessed: {cell:?} is not a number"),
            HeaderReason::ColumnIndices => "guessed: its numbers are the column indices".into(),
            HeaderReason::AllNumbers => "guessed: the first row is all numbers".into(),
        };
        let delimiter = match self.delimiter {
            b'\t' => "tabs".to_string(),
            d => format!("{:?}", char::from(d)),
        };
        write!(
            f,
            "{row} ({why}), {} columns separated by {delimiter}, ",
            self.columns
        )?;
        match self.label_column {
            Some(column) => write!(f, "labels in column {column}")?,
            None => return f.write_str("no label column"),
        }
        if let Some(name) = &self.label_name {
            write!(f, " ({name:?})")?;
        }
        Ok(())
    }
}

/// Reads and parses a CSV file (gzip is decompressed transparently).
pub fn load(path: &Path, label: &LabelColumn) -> Result<Dataset, DataError> {
    let options = CsvOptions {
        label: label.clone(),
        ..CsvOptions::default()
    };
    load_with(path, &options)
}

/// Reads a CSV file (gzip is decompressed transparently), streaming, in two passes.
pub fn load_with(path: &Path, options: &CsvOptions) -> Result<Dataset, DataError> {
    let delimiter = delimiter_for(path, options);
    let layout = survey(open(path)?, path, options, delimiter)?;
    read_rows(open(path)?, path, &layout)
}

/// How [`load_with`] reads a file, from a first pass over it.
pub fn layout(path: &Path, options: &CsvOptions) -> Result<CsvLayout, DataError> {
    survey(open(path)?, path, options, delimiter_for(path, options))
}

/// Parses CSV bytes into a dataset whose samples have shape `[columns - 1]`.
pub fn parse(bytes: &[u8], path: &Path, label: &LabelColumn) -> Result<Dataset, DataError> {
    let options = CsvOptions {
        label: label.clone(),
        ..CsvOptions::default()
    };
    parse_with(bytes, path, &options)
}

/// [`parse`] with every option.
pub fn parse_with(bytes: &[u8], path: &Path, options: &CsvOptions) -> Result<Dataset, DataError> {
    let bytes = gunzip_if_needed(bytes, path)?;
    let delimiter = delimiter_for(path, options);
    let layout = survey(&bytes[..], path, options, delimiter)?;
    read_rows(&bytes[..], path, &layout)
}

fn delimiter_for(path: &Path, options: &CsvOptions) -> u8 {
    options.delimiter.unwrap_or_else(|| {
        let name = path.to_string_lossy().to_lowercase();
        if name.ends_with(".tsv") || name.ends_with(".tsv.gz") {
            b'\t'
        } else {
            b','
        }
    })
}

/// The file, decompressed as it is read when it starts like gzip.
fn open(path: &Path) -> Result<Box<dyn Read>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = BufReader::with_capacity(1 << 16, File::open(path).map_err(io)?);
    let gzip = is_gzip(file.fill_buf().map_err(io)?);
    Ok(if gzip {
        Box::new(GzipErrors {
            inner: MultiGzDecoder::new(file),
        })
    } else {
        Box::new(file)
    })
}

/// Marks decompression errors so that they are reported as corrupt gzip, not as I/O.
struct GzipErrors<R> {
    inner: R,
}

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), GzipError(e.to_string())))
    }
}

#[derive(Debug)]
struct GzipError(String);

impl std::fmt::Display for GzipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GzipError {}

fn reader<R: Read>(input: R, delimiter: u8) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        // Rows of another width are reported here, with their line.
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delimiter)
        .buffer_capacity(1 << 16)
        .from_reader(input)
}

/// Reads the next record that is not blank; false at the end.
fn next_record<R: Read>(
    rdr: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
    path: &Path,
) -> Result<bool, DataError> {
    loop {
        match rdr.read_byte_record(record) {
            Ok(false) => return Ok(false),
            Ok(true) => {}
            Err(e) => return Err(csv_error(e, path)),
        }
        // A line of blanks reads as one empty cell.
        let blank = record.is_empty() || (record.len() == 1 && record[0].is_empty());
        if !blank {
            return Ok(true);
        }
    }
}

fn csv_error(error: csv::Error, path: &Path) -> DataError {
    let path = path.to_path_buf();
    match error.into_kind() {
        csv::ErrorKind::Io(source) => {
            if source
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<GzipError>().is_some())
            {
                DataError::Gzip { path, source }
            } else {
                DataError::Io { path, source }
            }
        }
        other => DataError::Io {
            path,
            source: std::io::Error::other(format!("{other:?}")),
        },
    }
}

fn line_of(record: &csv::ByteRecord) -> usize {
    record.position().map_or(0, |p| p.line() as usize)
}

/// The first pass: where the header and the labels are, and how many rows there are.
fn survey<R: Read>(
    input: R,
    path: &Path,
    options: &CsvOptions,
    delimiter: u8,
) -> Result<CsvLayout, DataError> {
    let mut rdr = reader(input, delimiter);
    let mut record = csv::ByteRecord::new();
    if !next_record(&mut rdr, &mut record, path)? {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    let line = line_of(&record);
    let cells: Vec<String> = record
        .iter()
        .enumerate()
        .map(|(i, c)| text(c, &record, i, path).map(str::to_string))
        .collect::<Result<_, _>>()?;
    let (header, reason) = match options.header {
        Some(h) => (h, HeaderReason::Given),
        None => guess_header(&cells),
    };
    let width = cells.len();
    if width < 2 && options.label != LabelColumn::None {
        let hint = [(';', "';'"), ('\t', "'\\t'"), ('|', "'|'")]
            .iter()
            .find(|(c, _)| cells.first().is_some_and(|cell| cell.contains(*c)))
            .map(|(_, name)| format!("; the first line holds {name}: is that its delimiter?"))
            .unwrap_or_default();
        return Err(DataError::CsvLabelColumn {
            path: path.to_path_buf(),
            message: format!(
                "need at least 2 columns (features and a label), found {width} separated by {:?} on line {line}{hint}",
                char::from(delimiter)
            ),
        });
    }
    let names = header.then_some(cells.as_slice());
    let label_column = resolve_label_column(&options.label, names, width, path)?;
    let mut rows = usize::from(!header);
    while next_record(&mut rdr, &mut record, path)? {
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(CsvLayout {
        header,
        reason,
        delimiter,
        columns: width,
        label_column,
        label_name: names.and_then(|n| n.get(label_column?).cloned()),
        rows,
    })
}

/// A first row is a header if a cell is not a number, or if its numbers are the column
/// indices pandas writes for an unnamed frame (`0,1,2` or, with its index, `,0,1,2`). Empty
/// cells alone make no header, so that a data row with a missing value is reported.
fn guess_header(cells: &[String]) -> (bool, HeaderReason) {
    if let Some(cell) = cells
        .iter()
        .find(|c| !c.is_empty() && c.parse::<f64>().is_err())
    {
        return (true, HeaderReason::NotANumber(cell.clone()));
    }
    let named = match cells.split_first() {
        Some((first, rest)) if first.is_empty() => rest,
        _ => cells,
    };
    let indices = !named.is_empty()
        && named
            .iter()
            .enumerate()
            .all(|(i, c)| c.parse::<u64>().ok() == Some(i as u64));
    if indices && named.len() >= 2 {
        (true, HeaderReason::ColumnIndices)
    } else {
        (false, HeaderReason::AllNumbers)
    }
}

/// The second pass: every row into buffers of their final size.
fn read_rows<R: Read>(input: R, path: &Path, layout: &CsvLayout) -> Result<Dataset, DataError> {
    let width = layout.columns;
    let mut rdr = reader(input, layout.delimiter);
    let mut record = csv::ByteRecord::new();
    let sample = width - usize::from(layout.label_column.is_some());
    let mut features = Vec::with_capacity(layout.rows.saturating_mul(sample));
    let mut labels = Vec::with_capacity(layout.rows);
    let mut first = true;
    while next_record(&mut rdr, &mut record, path)? {
        if std::mem::take(&mut first) && layout.header {
            continue;
        }
        let line = line_of(&record);
        if record.len() != width {
            return Err(DataError::CsvRowWidth {
                path: path.to_path_buf(),
                line,
                expected: width,
                found: record.len(),
            });
        }
        // A file that changed between the passes: its extra rows are refused, not grown into.
        if labels.len() == layout.rows {
            return Err(DataError::BadHeader {
                path: path.to_path_buf(),
                message: format!(
                    "more rows than the {} counted: it changed while read",
                    layout.rows
                ),
            });
        }
        for (col, cell) in record.iter().enumerate() {
            let cell = text(cell, &record, col, path)?;
            if Some(col) == layout.label_column {
                labels.push(parse_label(cell, line, path)?);
            } else {
                features.push(parse_feature(cell, line, col + 1, path)?);
            }
        }
        if layout.label_column.is_none() {
            labels.push(0);
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Dataset::new(features, vec![sample], labels, path.display().to_string())
}

/// A cell as text; invalid UTF-8 is an error naming its line and (unquoted) byte offset.
fn text<'a>(
    cell: &'a [u8],
    record: &csv::ByteRecord,
    col: usize,
    path: &Path,
) -> Result<&'a str, DataError> {
    match std::str::from_utf8(cell) {
        Ok(s) => Ok(s),
        Err(e) => {
            let start = record.position().map_or(0, |p| p.byte() as usize);
            let within = record.range(col).map_or(0, |r| r.start) + col;
            Err(DataError::NotUtf8 {
                path: path.to_path_buf(),
                line: line_of(record),
                offset: start + within + e.valid_up_to(),
            })
        }
    }
}

/// Picks the 0-based label column.
fn resolve_label_column(
    label: &LabelColumn,
    header: Option<&[String]>,
    width: usize,
    path: &Path,
) -> Result<Option<usize>, DataError> {
    if *label == LabelColumn::None {
        return Ok(None);
    }
    resolve_labelled(label, header, width, path).map(Some)
}

/// The 0-based label column of a file that has one.
fn resolve_labelled(
    label: &LabelColumn,
    header: Option<&[String]>,
    width: usize,
    path: &Path,
) -> Result<usize, DataError> {
    let fail = |message: String| DataError::CsvLabelColumn {
        path: path.to_path_buf(),
        message,
    };
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
        LabelColumn::None => Err(fail("no label column".into())),
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

    fn parse_options(text: &str, options: &CsvOptions) -> Result<Dataset, DataError> {
        parse_with(text.as_bytes(), p(), options)
    }

    #[test]
    fn without_a_label_column_every_column_is_a_feature() {
        let options = CsvOptions {
            label: LabelColumn::None,
            ..CsvOptions::default()
        };
        let d = parse_with(b"a,b,c\n1,2,0.94708\n4,5,6\n", p(), &options).unwrap();
        assert_eq!(d.sample_shape, vec![3]);
        assert_eq!(d.features, vec![1.0, 2.0, 0.94708, 4.0, 5.0, 6.0]);
        assert_eq!(d.labels, vec![0, 0]);
        // One column is a sample of one feature.
        let d = parse_with(b"0.5\n0.25\n", p(), &options).unwrap();
        assert_eq!(
            (d.sample_shape.clone(), d.features),
            (vec![1], vec![0.5, 0.25])
        );
        let layout = survey(&b"x,y\n1,2\n"[..], p(), &options, b',').unwrap();
        assert_eq!(layout.label_column, None);
        assert!(layout.to_string().ends_with("no label column"), "{layout}");
        assert_eq!(LabelColumn::from_arg("None"), LabelColumn::None);
        assert_eq!(LabelColumn::from_arg("3"), LabelColumn::Index(3));
        assert_eq!(LabelColumn::from_arg("y"), LabelColumn::Name("y".into()));
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
    fn gzip_files_stream_and_corrupt_gzip_is_named() {
        use flate2::Compression;
        use flate2::write::GzEncoder;
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv.gz");
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"a,label\n1,0\n2,1\n").unwrap();
        let mut gz = enc.finish().unwrap();
        std::fs::write(&path, &gz).unwrap();
        let d = load(&path, &LabelColumn::Auto).unwrap();
        assert_eq!((d.features, d.labels), (vec![1.0, 2.0], vec![0, 1]));
        gz.truncate(gz.len() / 2);
        std::fs::write(&path, &gz).unwrap();
        let err = load(&path, &LabelColumn::Auto).unwrap_err();
        assert!(
            matches!(err, DataError::Gzip { .. } | DataError::Io { .. }),
            "{err}"
        );
    }

    #[test]
    fn no_header_label_is_last_column() {
        let d = parse_auto("1,2,3\n4,5,6\n").unwrap();
        assert_eq!(d.features, vec![1.0, 2.0, 4.0, 5.0]);
        assert_eq!(d.labels, vec![3, 6]);
    }

    #[test]
    fn a_header_of_column_indices_is_a_header_as_pandas_writes_it() {
        // pd.DataFrame(values).to_csv(index=False), and with its index.
        for text in [
            "0,1,2,3\n0.5,1.5,2.5,1\n0.1,0.2,0.3,0\n",
            ",0,1,2\n0,0.5,1.5,1\n1,0.1,0.2,0\n",
        ] {
            let d = parse_auto(text).unwrap();
            assert_eq!(d.labels, vec![1, 0], "{text:?}");
            assert_eq!(d.sample_shape, vec![3]);
        }
        let layout = survey(
            &b"0,1,2,3\n1,1,1,1\n"[..],
            p(),
            &CsvOptions::default(),
            b',',
        )
        .unwrap();
        assert_eq!(
            (layout.header, layout.reason.clone(), layout.rows),
            (true, HeaderReason::ColumnIndices, 1)
        );
        assert!(layout.to_string().contains("column indices"), "{layout}");
        // --no-header reads it as data; other numbers are data.
        let no_header = CsvOptions {
            header: Some(false),
            ..CsvOptions::default()
        };
        assert_eq!(
            parse_options("0,1,2,3\n1,1,1,1\n", &no_header)
                .unwrap()
                .labels,
            vec![3, 1]
        );
        assert_eq!(parse_auto("0,1,2,5\n1,1,1,1\n").unwrap().labels, vec![5, 1]);
    }

    #[test]
    fn header_flags_override_the_guess() {
        let header = CsvOptions {
            header: Some(true),
            ..CsvOptions::default()
        };
        let d = parse_options("10,20,30\n1,2,1\n", &header).unwrap();
        assert_eq!((d.features, d.labels), (vec![1.0, 2.0], vec![1]));
        let layout = survey(&b"10,20,30\n1,2,1\n"[..], p(), &header, b',').unwrap();
        assert_eq!(layout.reason, HeaderReason::Given);
        assert_eq!(layout.label_name.as_deref(), Some("30"));
        let no_header = CsvOptions {
            header: Some(false),
            ..CsvOptions::default()
        };
        let err = parse_options("a,b\n1,2\n", &no_header).unwrap_err();
        assert!(
            err.to_string().contains("line 1, column 1: not a number"),
            "{err}"
        );
    }

    #[test]
    fn quoted_fields_as_r_and_spreadsheets_write_them() {
        // R's write.csv: quoted names, and its row names as a first column.
        let text = "\"\",\"x, first\",\"y\"\n\"1\",\"0.5\",1\n\"2\",\" 2.5 \",0\n";
        let d = parse_auto(text).unwrap();
        assert_eq!(d.labels, vec![1, 0]);
        assert_eq!(d.features, vec![1.0, 0.5, 2.0, 2.5]);
        let layout = survey(text.as_bytes(), p(), &CsvOptions::default(), b',').unwrap();
        assert_eq!(layout.label_name.as_deref(), Some("y"));
        // A quote inside a quoted name, and a delimiter inside one.
        let d = parse_auto("\"a \"\"b\"\"\",\"c,d\",label\n1,2,0\n").unwrap();
        assert_eq!(d.features, vec![1.0, 2.0]);
    }

    #[test]
    fn other_delimiters_and_line_ends() {
        let semicolons = CsvOptions {
            delimiter: Some(b';'),
            ..CsvOptions::default()
        };
        let d = parse_options("a;b;label\n1;2;0\n3;4;1\n", &semicolons).unwrap();
        assert_eq!(d.features, vec![1.0, 2.0, 3.0, 4.0]);
        // Without the delimiter: one column, and the message says what the line holds.
        let err = parse_auto("a;b;label\n1;2;0\n").unwrap_err();
        assert!(
            err.to_string().contains("found 1 separated by ','"),
            "{err}"
        );
        assert!(err.to_string().contains("holds ';'"), "{err}");
        // Tabs for .tsv files.
        let d = parse_with(
            b"a\tlabel\n1\t0\n",
            Path::new("x.tsv"),
            &CsvOptions::default(),
        )
        .unwrap();
        assert_eq!(d.labels, vec![0]);
        // Classic Mac line ends: a lone CR.
        let d = parse_auto("a,label\r1,0\r2,1\r").unwrap();
        assert_eq!((d.features, d.labels), (vec![1.0, 2.0], vec![0, 1]));
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
        // Blank lines between rows are skipped, as pandas does.
        assert_eq!(parse_auto("1,2,0\n\n1,2,0\n").unwrap().len(), 2);
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
        for text in ["", "\n\n", "a,b,label\n", "\r\r"] {
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

    #[test]
    fn buffers_are_allocated_at_their_final_size() {
        let mut text = String::from("a,b,c,label\n");
        for i in 0..1000 {
            text.push_str(&format!("{i},0.5,-1e-3,{}\n", i % 3));
        }
        let d = parse_auto(&text).unwrap();
        assert_eq!(d.features.capacity(), 3000);
        assert_eq!(d.labels.capacity(), 1000);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes, p(), &LabelColumn::Auto);
            let _ = parse(&bytes, p(), &LabelColumn::Index(1));
        }

        #[test]
        fn arbitrary_csv_like_text_never_panics(text in "[0-9a-z.,;\" \\-\n\r]{0,120}") {
            let _ = parse(text.as_bytes(), p(), &LabelColumn::Auto);
            let _ = parse(text.as_bytes(), p(), &LabelColumn::Name("label".into()));
            let _ = parse_options(&text, &CsvOptions { header: Some(true), delimiter: Some(b';'), ..CsvOptions::default() });
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
