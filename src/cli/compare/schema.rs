//! The experiment file (experiments/FORMAT.md): read bounded, every key and value checked
//! where it is written, the variants counted before they are expanded, and each variant's
//! settings turned into `wgnn train`'s arguments by `wgnn train`'s own parser.

use std::io::Read as _;
use std::path::Path;

use clap::Parser;
use toml::{Table, Value};

use crate::cli::TrainArgs;
use crate::cli::error::{CliError, Result};
use crate::cli::run_flags::DEFAULT_EPOCHS;

/// The most runs (variants × seeds) an experiment may hold, counted before any variant is
/// expanded.
pub const MAX_RUNS: u64 = 10_000;
/// The largest experiment file read: a few hundred lines are plenty.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The longest experiment name: it names a directory.
const MAX_NAME_BYTES: usize = 100;

/// The experiment file's own keys.
const KEYS: &[&str] = &[
    "name",
    "description",
    "seeds",
    "target_accuracy",
    "measure",
    "base",
    "grid",
    "variant",
];

/// What a setting's value must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `true` or `false`: a flag given or not.
    Flag,
    /// A whole number of at least 1.
    Count,
    /// A finite number.
    Number,
    /// A finite number of at least 0 (torch.optim refuses a negative one).
    NonNegative,
    /// A fraction strictly between 0 and 1.
    Fraction,
    Text,
    /// A column's name, or its 0-based index.
    Column,
}

/// Settings a variant may set: `wgnn train`'s flags, less those that only make sense for a
/// single run (output, resume, checkpoints, the seed, which comes from `seeds`).
const SETTINGS: &[(&str, Kind)] = &[
    ("data", Kind::Text),
    ("test-data", Kind::Text),
    ("holdout", Kind::Fraction),
    ("label-column", Kind::Column),
    ("arch", Kind::Text),
    ("epochs", Kind::Count),
    ("batch-size", Kind::Count),
    ("optimizer", Kind::Text),
    ("lr", Kind::NonNegative),
    ("momentum", Kind::NonNegative),
    ("weight-decay", Kind::NonNegative),
    ("amsgrad", Kind::Flag),
    ("lr-schedule", Kind::Text),
    ("loss", Kind::Text),
    ("label-smoothing", Kind::Number),
    ("pos-weight", Kind::Number),
    ("normalize", Kind::Text),
    ("no-shuffle", Kind::Flag),
    ("drop-last", Kind::Flag),
    ("check-finite", Kind::Flag),
];

/// An experiment file, expanded into its variants.
#[derive(Clone, Debug, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: String,
    pub seeds: Vec<u64>,
    pub target_accuracy: Option<f64>,
    pub gradient_signs: bool,
    pub variants: Vec<Variant>,
}

/// One variant: its name and its settings (the base's, each replaced by its own where it
/// sets the same key), as flag and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub name: String,
    pub settings: Vec<(String, Value)>,
}

impl Variant {
    /// The epochs each of its runs trains.
    pub fn epochs(&self) -> usize {
        self.settings
            .iter()
            .find(|(k, _)| k == "epochs")
            .and_then(|(_, v)| v.as_integer())
            .and_then(|e| usize::try_from(e).ok())
            .unwrap_or(DEFAULT_EPOCHS)
    }
}

/// What went wrong in an experiment file.
pub fn bad(path: &Path, message: impl Into<String>) -> CliError {
    CliError::Experiment {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A value as a variant's name shows it: strings without quotes.
fn label(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sets `key` to `value`, replacing the value it had (in its place) or adding it last.
fn set(settings: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match settings.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => settings.push((key.to_string(), value)),
    }
}

fn settings(path: &Path, table: &Table, place: &str) -> Result<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for (key, value) in table {
        if place.starts_with("[[variant]]") && key == "name" {
            continue;
        }
        check_setting(path, key, value, place)?;
        set(&mut out, key, value.clone());
    }
    Ok(out)
}

fn check_setting(path: &Path, key: &str, value: &Value, place: &str) -> Result<()> {
    let refuse = |message: String| Err(bad(path, format!("{place}: {message}")));
    match key {
        "seed" => return refuse("`seed` is not a setting; list the seeds in `seeds`".into()),
        "name" => {
            return refuse(
                "`name` is not a setting: the experiment's name is the top-level `name`, a \
                 [[variant]]'s its own `name`"
                    .into(),
            );
        }
        _ => {}
    }
    let Some(&(_, kind)) = SETTINGS.iter().find(|(k, _)| *k == key) else {
        let known: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
        return refuse(format!(
            "unknown setting `{key}`; expected one of {}",
            known.join(", ")
        ));
    };
    let number = match value {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    let ok = match kind {
        Kind::Flag => value.is_bool(),
        Kind::Count => value.as_integer().is_some_and(|i| i >= 1),
        Kind::Number => number.is_some_and(f64::is_finite),
        Kind::NonNegative => number.is_some_and(|n| n.is_finite() && n >= 0.0),
        Kind::Fraction => number.is_some_and(|n| n > 0.0 && n < 1.0),
        Kind::Text => value.is_str(),
        Kind::Column => value.is_str() || value.as_integer().is_some_and(|i| i >= 0),
    };
    if ok {
        return Ok(());
    }
    let expected = match kind {
        Kind::Flag => "true or false",
        Kind::Count if key == "epochs" => "a whole number of at least 1 (0 epochs train nothing)",
        Kind::Count => "a whole number of at least 1",
        Kind::Number => "a finite number",
        Kind::NonNegative => "a finite number of at least 0",
        Kind::Fraction => "a fraction between 0 and 1",
        Kind::Text => "a string",
        Kind::Column => "a column's name (a string) or its 0-based index",
    };
    refuse(format!("`{key}` = {value} must be {expected}"))
}

/// The experiment's name names its directory: one plain path component, on one line.
fn check_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("is empty")
    } else if name.trim() != name {
        Some("starts or ends with a space")
    } else if name.contains(['/', '\\']) {
        Some("holds a path separator")
    } else if name.contains("..") {
        Some("holds `..`")
    } else if name.chars().any(char::is_control) {
        Some("holds a line break or another control character")
    } else if name.len() > MAX_NAME_BYTES {
        Some("is longer than 100 bytes")
    } else {
        None
    }
}

/// A variant's name is one line of the table and one field of results.csv.
fn check_variant_name(path: &Path, name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(bad(path, "a variant's name is empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad(
            path,
            format!(
                "variant name {name:?} holds a line break or another control character: a name \
                 is one line of the table"
            ),
        ));
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes, refusing anything but a regular file.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {limit} bytes: not an experiment file"
        )));
    }
    Ok(text)
}

impl Experiment {
    /// Reads, checks and expands an experiment file, with its text; every mistake names its
    /// key.
    pub fn read(path: &Path) -> Result<(Self, String)> {
        let text = read_bounded(path, MAX_FILE_BYTES).map_err(|e| bad(path, e.to_string()))?;
        Ok((Self::parse(path, &text)?, text))
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let table: Table = text
            .parse()
            .map_err(|e: toml::de::Error| bad(path, e.message().trim().to_string()))?;
        if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(bad(
                path,
                format!("unknown key `{key}`; expected one of {}", KEYS.join(", ")),
            ));
        }
        let name = match table.get("name") {
            Some(Value::String(s)) => match check_name(s) {
                None => s.clone(),
                Some(why) => {
                    return Err(bad(
                        path,
                        format!(
                            "`name` = {s:?} {why}: it names the results' directory, one plain \
                             file name"
                        ),
                    ));
                }
            },
            Some(_) => return Err(bad(path, "`name` must be a string")),
            None => return Err(bad(path, "missing `name`")),
        };
        let description = match table.get("description") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad(path, "`description` must be a string")),
            None => String::new(),
        };
        let seeds = seeds(path, table.get("seeds"))?;
        let target_accuracy = match table.get("target_accuracy") {
            None => None,
            Some(Value::Float(f)) if (0.0..=1.0).contains(f) => Some(*f),
            Some(_) => {
                return Err(bad(
                    path,
                    "`target_accuracy` must be a fraction in [0, 1], e.g. 0.95",
                ));
            }
        };
        let gradient_signs = match table.get("measure") {
            None => false,
            Some(Value::Array(a)) => {
                if let Some(m) = a.iter().find(|m| m.as_str() != Some("gradient-signs")) {
                    return Err(bad(
                        path,
                        format!("`measure`: unknown measure {m}; expected \"gradient-signs\""),
                    ));
                }
                !a.is_empty()
            }
            Some(_) => return Err(bad(path, "`measure` must be a list")),
        };
        let base = match table.get("base") {
            None => Vec::new(),
            Some(Value::Table(t)) => settings(path, t, "[base]")?,
            Some(_) => return Err(bad(path, "`base` must be a table")),
        };
        let axes = match table.get("grid") {
            None => Vec::new(),
            Some(Value::Table(grid)) => axes(path, grid)?,
            Some(_) => return Err(bad(path, "`grid` must be a table")),
        };
        let listed = match table.get("variant") {
            None => &[][..],
            Some(Value::Array(list)) => list.as_slice(),
            Some(_) => return Err(bad(path, "`variant` must be a list of [[variant]] tables")),
        };
        count_runs(path, &axes, listed.len(), seeds.len())?;

        let mut variants = expand_grid(&base, &axes);
        for (i, entry) in listed.iter().enumerate() {
            let Value::Table(t) = entry else {
                return Err(bad(path, format!("[[variant]] {} must be a table", i + 1)));
            };
            let name = match t.get("name") {
                Some(Value::String(n)) => n.clone(),
                _ => {
                    return Err(bad(
                        path,
                        format!("[[variant]] {} needs a `name` string", i + 1),
                    ));
                }
            };
            let mut s = base.clone();
            for (key, value) in settings(path, t, &format!("[[variant]] {name:?}"))? {
                set(&mut s, &key, value);
            }
            variants.push(Variant { name, settings: s });
        }
        if variants.is_empty() {
            variants.push(Variant {
                name: "base".into(),
                settings: base,
            });
        }
        for v in &variants {
            check_variant_name(path, &v.name)?;
        }
        let mut names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(path, format!("two variants are named {:?}", w[0])));
        }
        Ok(Experiment {
            name,
            description,
            seeds,
            target_accuracy,
            gradient_signs,
            variants,
        })
    }

    /// Runs in all: every variant with every seed.
    pub fn runs(&self) -> usize {
        self.variants.len() * self.seeds.len()
    }

    /// What differs from `earlier` in what the runs train or the summary shows (the
    /// description and the file's layout and comments aside), one phrase each.
    pub fn changes_since(&self, earlier: &Experiment) -> Vec<String> {
        let mut changes = Vec::new();
        if self.name != earlier.name {
            changes.push(format!("`name` {:?} → {:?}", earlier.name, self.name));
        }
        if self.seeds != earlier.seeds {
            changes.push(format!("`seeds` {:?} → {:?}", earlier.seeds, self.seeds));
        }
        if self.target_accuracy != earlier.target_accuracy {
            let show = |t: Option<f64>| t.map_or("none".to_string(), |t| t.to_string());
            changes.push(format!(
                "`target_accuracy` {} → {}",
                show(earlier.target_accuracy),
                show(self.target_accuracy)
            ));
        }
        if self.gradient_signs != earlier.gradient_signs {
            let show = |m: bool| if m { "[\"gradient-signs\"]" } else { "[]" };
            changes.push(format!(
                "`measure` {} → {}",
                show(earlier.gradient_signs),
                show(self.gradient_signs)
            ));
        }
        let find = |list: &[Variant], name: &str| list.iter().position(|v| v.name == name);
        for v in &earlier.variants {
            if find(&self.variants, &v.name).is_none() {
                changes.push(format!("variant {:?} removed", v.name));
            }
        }
        for (i, v) in self.variants.iter().enumerate() {
            let Some(j) = find(&earlier.variants, &v.name) else {
                changes.push(format!("variant {:?} added", v.name));
                continue;
            };
            let before = &earlier.variants[j];
            if i != j {
                changes.push(format!(
                    "variant {:?} moved from place {} to {}",
                    v.name,
                    j + 1,
                    i + 1
                ));
            }
            let value = |s: &[(String, Value)], key: &str| {
                s.iter().find(|(k, _)| k == key).map(|(_, v)| v.to_string())
            };
            let keys = before
                .settings
                .iter()
                .chain(&v.settings)
                .map(|(k, _)| k.as_str());
            let mut seen = Vec::new();
            for key in keys {
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                match (value(&before.settings, key), value(&v.settings, key)) {
                    (Some(a), Some(b)) if a != b => {
                        changes.push(format!("variant {:?}: `{key}` {a} → {b}", v.name));
                    }
                    (Some(a), None) => {
                        changes.push(format!("variant {:?}: `{key}` = {a} removed", v.name));
                    }
                    (None, Some(b)) => {
                        changes.push(format!("variant {:?}: `{key}` = {b} added", v.name));
                    }
                    _ => {}
                }
            }
        }
        changes
    }
}

fn seeds(path: &Path, value: Option<&Value>) -> Result<Vec<u64>> {
    let Some(Value::Array(list)) = value else {
        return Err(bad(path, "`seeds` must be a non-empty list of integers"));
    };
    if list.is_empty() {
        return Err(bad(path, "`seeds` must be a non-empty list of integers"));
    }
    let mut seeds = Vec::with_capacity(list.len());
    for v in list {
        let seed = match v {
            Value::Integer(i) if *i >= 0 => *i as u64,
            other => {
                return Err(bad(
                    path,
                    format!("`seeds` holds non-negative integers, not {other}"),
                ));
            }
        };
        if seeds.contains(&seed) {
            return Err(bad(
                path,
                format!("`seeds` lists {seed} twice: each seed is one run of every variant"),
            ));
        }
        seeds.push(seed);
    }
    Ok(seeds)
}

/// The grid's keys, each with its (label, value) choices, in the file's order.
type Axes = Vec<(String, Vec<(String, Value)>)>;

fn axes(path: &Path, grid: &Table) -> Result<Axes> {
    let mut axes = Vec::new();
    for (key, choices) in grid {
        let place = format!("[grid] `{key}`");
        let choices: Vec<(String, Value)> = match choices {
            Value::Array(a) if !a.is_empty() => a.iter().map(|v| (label(v), v.clone())).collect(),
            Value::Table(t) if !t.is_empty() => {
                t.iter().map(|(l, v)| (l.clone(), v.clone())).collect()
            }
            _ => {
                return Err(bad(
                    path,
                    format!("{place} must be a non-empty list or a table of label = value"),
                ));
            }
        };
        for (_, v) in &choices {
            check_setting(path, key, v, &place)?;
        }
        axes.push((key.clone(), choices));
    }
    Ok(axes)
}

/// Refuses an experiment of more than [`MAX_RUNS`] runs, counting them without expanding
/// anything.
fn count_runs(path: &Path, axes: &Axes, listed: usize, seeds: usize) -> Result<()> {
    let grid = if axes.is_empty() {
        Some(0u64)
    } else {
        axes.iter()
            .try_fold(1u64, |n, (_, c)| n.checked_mul(c.len() as u64))
    };
    let variants = grid.and_then(|g| g.checked_add(listed as u64));
    let runs = variants.and_then(|v| v.max(1).checked_mul(seeds as u64));
    match (variants, runs) {
        (Some(_), Some(runs)) if runs <= MAX_RUNS => Ok(()),
        (Some(variants), runs) => {
            let runs = runs.map_or("more than 2^64".to_string(), |r| r.to_string());
            Err(bad(
                path,
                format!(
                    "{} variant(s) × {seeds} seed(s) = {runs} runs, over the limit of {MAX_RUNS} \
                     runs an experiment may hold: split it, or grid fewer values",
                    variants.max(1)
                ),
            ))
        }
        (None, _) => Err(bad(
            path,
            format!(
                "the grid's {} keys multiply to more than 2^64 variants, over the limit of \
                 {MAX_RUNS} runs an experiment may hold",
                axes.len()
            ),
        )),
    }
}

/// The grid's cross product, the last key varying fastest, each on top of the base.
fn expand_grid(base: &[(String, Value)], axes: &Axes) -> Vec<Variant> {
    if axes.is_empty() {
        return Vec::new();
    }
    let mut combos: Vec<Vec<(&str, &str, &Value)>> = vec![Vec::new()];
    for (key, choices) in axes {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                choices.iter().map(move |(l, v)| {
                    let mut next = c.clone();
                    next.push((key.as_str(), l.as_str(), v));
                    next
                })
            })
            .collect();
    }
    combos
        .into_iter()
        .map(|combo| {
            let name = combo
                .iter()
                .map(|(k, l, _)| format!("{k}={l}"))
                .collect::<Vec<_>>()
                .join(" ");
            let mut settings = base.to_vec();
            for (k, _, v) in combo {
                set(&mut settings, k, v.clone());
            }
            Variant { name, settings }
        })
        .collect()
}

/// `wgnn train`'s arguments for one variant and seed: its settings written as flags, parsed
/// by the same parser, so every default and check is `wgnn train`'s own. Each value is
/// attached to its flag (`--lr=-0.1`), so a value that starts with `-` stays a value.
pub fn train_args(path: &Path, variant: &Variant, seed: u64) -> Result<TrainArgs> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: TrainArgs,
    }
    let mut argv = vec!["train".to_string()];
    for (key, value) in &variant.settings {
        match value {
            Value::Boolean(true) => argv.push(format!("--{key}")),
            Value::Boolean(false) => {}
            other => argv.push(format!("--{key}={}", label(other))),
        }
    }
    argv.extend([format!("--seed={seed}"), "--quiet".into()]);
    Wrapper::try_parse_from(&argv).map(|w| w.args).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        bad(path, format!("variant {:?}: {first}", variant.name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Experiment> {
        Experiment::parse(Path::new("e.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_grid_expands_in_file_order_and_variants_follow() {
        let e = parse(
            r#"
            name = "x"
            seeds = [0, 1]
            [base]
            epochs = 2
            [grid]
            lr = [0.1, 1.0]
            arch = { bn = "flatten,linear:8,bn,relu,linear:10", plain = "flatten,linear:10" }
            [[variant]]
            name = "adam"
            optimizer = "adam"
            "#,
        )
        .unwrap();
        let names: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lr=0.1 arch=bn",
                "lr=0.1 arch=plain",
                "lr=1.0 arch=bn",
                "lr=1.0 arch=plain",
                "adam"
            ]
        );
        assert_eq!(e.variants[4].settings[0].0, "epochs");
        assert_eq!(e.runs(), 10);
        let args = train_args(Path::new("e.toml"), &e.variants[1], 7).unwrap();
        assert_eq!(args.seed, 7);
        assert_eq!(args.lr, Some(0.1));
        assert_eq!(args.arch.as_deref(), Some("flatten,linear:10"));
    }

    #[test]
    fn a_grid_or_variant_value_replaces_the_base_value() {
        // FORMAT.md's own example: `lr` in [base] and in [grid] and in a [[variant]].
        let e = parse(
            r#"
            name = "x"
            seeds = [0]
            [base]
            epochs = 3
            lr = 0.02
            [grid]
            lr = [0.01, 0.1]
            [[variant]]
            name = "adam"
            optimizer = "adam"
            lr = 0.001
            "#,
        )
        .unwrap();
        let lrs: Vec<Option<f32>> = e
            .variants
            .iter()
            .map(|v| train_args(Path::new("e.toml"), v, 0).unwrap().lr)
            .collect();
        assert_eq!(lrs, [Some(0.01), Some(0.1), Some(0.001)]);
        // Replaced in place: the base's order stays.
        assert_eq!(e.variants[2].settings[0].0, "epochs");
        assert_eq!(
            e.variants[2].settings[1],
            ("lr".into(), Value::Float(0.001))
        );
        assert_eq!(e.variants[2].settings.len(), 3);
        assert_eq!(e.variants[0].epochs(), 3);
    }

    #[test]
    fn values_that_start_with_a_dash_are_values() {
        let e = parse(
            r#"
            name = "x"
            seeds = [0]
            [base]
            label-column = "-1"
            arch = "--help"
            lr-schedule = "-step"
            "#,
        )
        .unwrap();
        let args = train_args(Path::new("e.toml"), &e.variants[0], 0).unwrap();
        assert_eq!(args.label_column.as_deref(), Some("-1"));
        assert_eq!(args.arch.as_deref(), Some("--help"));
        assert_eq!(args.lr_schedule.as_deref(), Some("-step"));
        // A negative learning rate reaches the parser as a number (and is refused by name).
        let err = error("name = \"x\"\nseeds = [0]\n[base]\nlr = -0.1");
        assert!(
            err.contains("`lr` = -0.1 must be a finite number of at least 0"),
            "{err}"
        );
        let e = parse("name = \"x\"\nseeds = [0]\n[base]\nlabel-smoothing = -0.5").unwrap();
        let args = train_args(Path::new("e.toml"), &e.variants[0], 0).unwrap();
        assert_eq!(args.label_smoothing, -0.5);
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, says) in [
            ("seeds = [0]", "missing `name`"),
            ("name = \"x\"", "`seeds`"),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nlearning-rate = 1",
                "`learning-rate`",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nseed = 1",
                "`seed` is not a setting",
            ),
            ("name = \"x\"\nseeds = [0]\n[grid]\nlr = 0.1", "[grid] `lr`"),
            (
                "name = \"x\"\nseeds = [0]\n[base]\namsgrad = 1",
                "`amsgrad` = 1 must be true or false",
            ),
            (
                "name = \"x\"\nseeds = [0]\nmeasures = []",
                "unknown key `measures`",
            ),
            ("name = \"x\"\nseeds = [-1]", "non-negative"),
            (
                "name = \"x\"\nseeds = [0]\n[[variant]]\nlr = 1",
                "needs a `name`",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nepochs = 0",
                "[base]: `epochs` = 0 must be a whole number of at least 1 (0 epochs train nothing)",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[grid]\nepochs = [1, 0]",
                "[grid] `epochs`: `epochs` = 0",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nbatch-size = 0",
                "`batch-size` = 0",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nlr = nan",
                "`lr` = nan must be a finite number",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[[variant]]\nname = \"v\"\nmomentum = inf",
                "[[variant]] \"v\": `momentum` = inf",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nholdout = 1.5",
                "`holdout` = 1.5 must be a fraction",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nepochs = \"many\"",
                "`epochs` = \"many\"",
            ),
            ("name = \"x\"\nseeds = [0, 1, 0]", "lists 0 twice"),
            (
                "name = \"x\"\nseeds = [0]\n[base]\nname = \"y\"",
                "[base]: `name` is not a setting",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[grid]\nname = [\"a\"]",
                "[grid] `name`: `name` is not a setting",
            ),
            ("name = \"..\"\nseeds = [0]", "holds `..`"),
            ("name = \"a/b\"\nseeds = [0]", "path separator"),
            ("name = \"a\\\\b\"\nseeds = [0]", "path separator"),
            ("name = \"a\\nb\"\nseeds = [0]", "line break"),
            ("name = \" \"\nseeds = [0]", "is empty"),
            (
                "name = \"x\"\nseeds = [0]\n[[variant]]\nname = \"a\\nb\"",
                "holds a line break",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[grid]\nlr = { \"a\\nb\" = 0.1 }",
                "holds a line break",
            ),
            (
                "name = \"x\"\nseeds = [0]\n[grid]\nlr = [0.1]\n[[variant]]\nname = \"lr=0.1\"",
                "two variants are named \"lr=0.1\"",
            ),
        ] {
            let err = error(text);
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.starts_with("e.toml:"), "{err}");
        }
        // A value wgnn train refuses is refused with the variant's name.
        let e = parse("name = \"x\"\nseeds = [0]\n[base]\noptimizer = \"lbfgs\"").unwrap();
        let err = train_args(Path::new("e.toml"), &e.variants[0], 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"base\"") && err.contains("lbfgs"), "{err}");
    }

    #[test]
    fn the_runs_are_counted_before_anything_is_expanded() {
        // 8 keys × 10 values: 10^8 variants, refused at once with the count.
        let values = (0..10)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let keys = [
            "epochs",
            "batch-size",
            "lr",
            "momentum",
            "weight-decay",
            "label-smoothing",
            "pos-weight",
            "label-column",
        ];
        let mut text = "name = \"x\"\nseeds = [0, 1]\n[grid]\n".to_string();
        for key in keys {
            let values = if matches!(key, "epochs" | "batch-size") {
                (1..=10)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                values.clone()
            };
            text.push_str(&format!("{key} = [{values}]\n"));
        }
        let err = error(&text);
        assert!(
            err.contains("100000000 variant(s) × 2 seed(s) = 200000000 runs")
                && err.contains("limit of 10000"),
            "{err}"
        );
        // 2^64 and more: counted without overflowing.
        let mut text = "name = \"x\"\nseeds = [0]\n[grid]\n".to_string();
        for key in keys {
            let list = (1..=300)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            text.push_str(&format!("{key} = [{list}]\n"));
        }
        assert!(error(&text).contains("more than 2^64"), "{}", error(&text));
        // Just at the limit is fine.
        let list = (0..5000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let e = parse(&format!(
            "name = \"x\"\nseeds = [0, 1]\n[grid]\nlabel-column = [{list}]"
        ))
        .unwrap();
        assert_eq!(e.runs(), 10_000);
    }

    #[test]
    fn changes_are_named_key_by_key() {
        let old = parse("name = \"x\"\nseeds = [0]\n[base]\nepochs = 2\n[grid]\nlr = [0.1, 0.2]\n")
            .unwrap();
        // Layout, comments and the description are no change.
        let same = parse(
            "# a comment\nname = \"x\"\ndescription = \"now described\"\nseeds = [0]\n\n[base]\nepochs = 2\n[grid]\nlr = [0.1,0.2]\n",
        )
        .unwrap();
        assert!(same.changes_since(&old).is_empty());
        let new = parse(
            "name = \"x\"\nseeds = [0, 1]\ntarget_accuracy = 0.9\n[base]\nepochs = 3\nmomentum = 0.5\n[grid]\nlr = [0.1, 0.3]\n",
        )
        .unwrap();
        assert_eq!(
            new.changes_since(&old),
            [
                "`seeds` [0] → [0, 1]",
                "`target_accuracy` none → 0.9",
                "variant \"lr=0.2\" removed",
                "variant \"lr=0.1\": `epochs` 2 → 3",
                "variant \"lr=0.1\": `momentum` = 0.5 added",
                "variant \"lr=0.3\" added",
            ]
        );
    }
}
