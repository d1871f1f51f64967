//! Finding and loading a dataset from a path: a directory of MNIST IDX or
//! CIFAR-10 binary files, or a single file recognized by extension or
//! content.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::csv::{self, LabelColumn};
use super::dataset::{Dataset, Split};
use super::error::DataError;
use super::file::is_gzip;
use super::{cifar, idx, npy, safetensors};

/// Options for [`load_with`] (and [`super::load_splits`]), all for CSV files; the other
/// formats need none. `LoadOptions::default()` is what `wgnn train` does without flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Label column of CSV files (`--label-column`). Default [`LabelColumn::Auto`]: a
    /// column named `label`, `target`, `y` or `class`, else the last.
    pub csv_label: LabelColumn,
    /// Whether a CSV file's first row is a header (`--header`/`--no-header`). Default
    /// `None`: guessed, see [`csv`].
    pub csv_header: Option<bool>,
    /// A CSV file's delimiter (`--delimiter`). Default `None`: `,`, or a tab for `.tsv`.
    pub csv_delimiter: Option<u8>,
}

impl LoadOptions {
    /// What CSV files are read with.
    pub fn csv(&self) -> csv::CsvOptions {
        csv::CsvOptions {
            label: self.csv_label.clone(),
            header: self.csv_header,
            delimiter: self.csv_delimiter,
        }
    }
}

/// Whether `path` is read as CSV (`.csv`, `.tsv`, gzipped or not).
pub fn is_csv(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    [".csv", ".csv.gz", ".tsv", ".tsv.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Loads the dataset at `path` with default options; see [`load_with`].
pub fn load(path: &Path, split: Split) -> Result<Dataset, DataError> {
    load_with(path, split, &LoadOptions::default())
}

/// Loads the dataset at `path`.
///
/// * A directory holding MNIST IDX files (`train-images-idx3-ubyte[.gz]` and
///   `train-labels-idx1-ubyte[.gz]` for [`Split::Train`], `t10k-…` for
///   [`Split::Test`]; the dotted `train-images.idx3-ubyte` spelling and a
///   `raw/` subdirectory are accepted too), or CIFAR-10 batches
///   (`data_batch_1.bin` … `data_batch_5.bin`, whichever exist, for Train,
///   `test_batch.bin` for Test; also inside `cifar-10-batches-bin/`).
/// * A single file: `.csv` (or `.tsv`), `.safetensors`, a `.bin` CIFAR-10 batch, or an
///   idx3 images file (its labels file is the name with `idx3` → `idx1` and
///   `images` → `labels`). `split` is ignored for a single file: the caller
///   splits. A `.npy` file holds no labels and is rejected.
pub fn load_with(path: &Path, split: Split, options: &LoadOptions) -> Result<Dataset, DataError> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        load_dir(path, split)
    } else {
        load_file(path, options)
    }
}

/// What a dataset directory must hold, for the error message.
fn expected_in_dir(split: Split) -> String {
    let (mnist, cifar) = match split {
        Split::Train => ("train", "data_batch_1.bin … data_batch_5.bin"),
        Split::Test => ("t10k", "test_batch.bin"),
    };
    format!(
        "a directory with {mnist}-images-idx3-ubyte[.gz] and {mnist}-labels-idx1-ubyte[.gz] \
         (mnist) or {cifar} (cifar-10, optionally inside cifar-10-batches-bin/)"
    )
}

const SINGLE_FILE_KINDS: &str =
    "a .csv, .safetensors or cifar-10 .bin file, an mnist idx3 images file, or a dataset directory";

fn load_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    if let Some((images, labels)) = find_mnist(dir, split)? {
        return idx::load_pair(&images, &labels);
    }
    if let Some(files) = find_cifar(dir, split) {
        return cifar::load_files(&files, dir);
    }
    Err(DataError::NotADataset {
        path: dir.to_path_buf(),
        expected: expected_in_dir(split),
    })
}

/// Finds the MNIST images and labels files for `split`, or `None` if there
/// is no images file. An images file without labels is an error.
fn find_mnist(dir: &Path, split: Split) -> Result<Option<(PathBuf, PathBuf)>, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    for base in [dir.to_path_buf(), dir.join("raw")] {
        let images = ["-images-idx3-ubyte", "-images.idx3-ubyte"]
            .iter()
            .flat_map(|stem| ["", ".gz"].map(|gz| base.join(format!("{prefix}{stem}{gz}"))))
            .find(|p| p.is_file());
        let Some(images) = images else { continue };
        let labels = idx::labels_paths_for(&images)
            .into_iter()
            .find(|p| p.is_file());
        return match labels {
            Some(labels) => Ok(Some((images, labels))),
            None => Err(missing_labels(&images)),
        };
    }
    Ok(None)
}

/// Finds the CIFAR-10 batch files for `split` in `dir` or its
/// `cifar-10-batches-bin` subdirectory.
fn find_cifar(dir: &Path, split: Split) -> Option<Vec<PathBuf>> {
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    };
    [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .map(|base| {
            names
                .iter()
                .map(|n| base.join(n))
                .filter(|p| p.is_file())
                .collect::<Vec<_>>()
        })
        .find(|files| !files.is_empty())
}

fn missing_labels(images: &Path) -> DataError {
    let names: Vec<String> = idx::labels_paths_for(images)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    DataError::NotADataset {
        path: images.to_path_buf(),
        expected: if names.is_empty() {
            "an idx3 images file whose name contains \"idx3\" and \"images\"".to_string()
        } else {
            format!("its labels file next to it: {}", names.join(" or "))
        },
    }
}

fn load_file(path: &Path, options: &LoadOptions) -> Result<Dataset, DataError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if is_csv(path) {
        return csv::load_with(path, &options.csv());
    }
    if name.ends_with(".safetensors") {
        return safetensors::load(path);
    }
    if name.ends_with(".npy") {
        return Err(npy_has_no_labels(path));
    }
    if name.ends_with(".bin") {
        return cifar::load_file(path);
    }
    let head = sniff(path)?;
    if name.contains("idx3") || head.starts_with(&[0, 0, idx::TYPE_U8, 3]) {
        let labels = idx::labels_paths_for(path)
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| missing_labels(path))?;
        return idx::load_pair(path, &labels);
    }
    if name.contains("idx1") || head.starts_with(&[0, 0, idx::TYPE_U8, 1]) {
        return Err(DataError::NotADataset {
            path: path.to_path_buf(),
            expected: "the idx3 images file (this is an idx1 labels file) or the directory"
                .to_string(),
        });
    }
    if head.starts_with(npy::MAGIC) {
        return Err(npy_has_no_labels(path));
    }
    if head.starts_with(b"PAR1") {
        // A common mistake worth naming.
        return Err(DataError::NotADataset {
            path: path.to_path_buf(),
            expected: format!("{SINGLE_FILE_KINDS} (parquet is not supported)"),
        });
    }
    Err(DataError::NotADataset {
        path: path.to_path_buf(),
        expected: SINGLE_FILE_KINDS.to_string(),
    })
}

fn npy_has_no_labels(path: &Path) -> DataError {
    DataError::NotADataset {
        path: path.to_path_buf(),
        expected: format!("{SINGLE_FILE_KINDS}; a .npy file holds no labels"),
    }
}

/// The first few bytes of a file, after gzip decompression if it is gzip.
fn sniff(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = Vec::new();
    File::open(path)
        .map_err(io)?
        .take(8)
        .read_to_end(&mut head)
        .map_err(io)?;
    if is_gzip(&head) {
        let mut inner = Vec::new();
        MultiGzDecoder::new(File::open(path).map_err(io)?)
            .take(8)
            .read_to_end(&mut inner)
            .map_err(|source| DataError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        return Ok(inner);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::super::normalize::Normalization;
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn cifar_record(label: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(label * 10, cifar::IMAGE_BYTES));
        r
    }

    #[test]
    fn mnist_directory_train_and_test() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("train-images-idx3-ubyte.gz"),
            gzip(&idx(&[2, 2, 2], &[0; 8])),
        )
        .unwrap();
        std::fs::write(
            d.join("train-labels-idx1-ubyte.gz"),
            gzip(&idx(&[2], &[3, 4])),
        )
        .unwrap();
        std::fs::write(d.join("t10k-images.idx3-ubyte"), idx(&[1, 2, 2], &[255; 4])).unwrap();
        std::fs::write(d.join("t10k-labels.idx1-ubyte"), idx(&[1], &[9])).unwrap();
        let train = load(d, Split::Train).unwrap();
        assert_eq!(
            (train.labels.clone(), train.sample_shape.clone()),
            (vec![3, 4], vec![1, 2, 2])
        );
        let test = load(d, Split::Test).unwrap();
        assert_eq!(test.labels, vec![9]);
        assert_eq!(test.features, vec![1.0; 4]);
    }

    #[test]
    fn mnist_images_without_labels_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte"),
            idx(&[1, 1, 1], &[0]),
        )
        .unwrap();
        let err = load(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::NotADataset { .. }));
        assert!(err.to_string().contains("train-labels-idx1-ubyte"), "{err}");
    }

    #[test]
    fn cifar_directory_in_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("data_batch_1.bin"), cifar_record(1)).unwrap();
        std::fs::write(
            sub.join("data_batch_3.bin"),
            [cifar_record(2), cifar_record(3)].concat(),
        )
        .unwrap();
        std::fs::write(sub.join("test_batch.bin"), cifar_record(7)).unwrap();
        let train = load(dir.path(), Split::Train).unwrap();
        assert_eq!(train.labels, vec![1, 2, 3]);
        assert_eq!(train.sample_shape, vec![3, 32, 32]);
        assert_eq!(load(dir.path(), Split::Test).unwrap().labels, vec![7]);
    }

    #[test]
    fn empty_directory_lists_expectations() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), Split::Test).unwrap_err();
        assert!(matches!(err, DataError::NotADataset { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("t10k-images-idx3-ubyte") && msg.contains("test_batch.bin"),
            "{msg}"
        );
        let msg = load(dir.path(), Split::Train).unwrap_err().to_string();
        assert!(
            msg.contains("train-labels-idx1-ubyte") && msg.contains("data_batch_1.bin"),
            "{msg}"
        );
    }

    #[test]
    fn single_files_by_extension_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("t.csv"), "a,b,label\n1,2,1\n").unwrap();
        assert_eq!(load(&d.join("t.csv"), Split::Test).unwrap().labels, vec![1]);

        std::fs::write(d.join("one.bin"), cifar_record(5)).unwrap();
        assert_eq!(
            load(&d.join("one.bin"), Split::Train).unwrap().labels,
            vec![5]
        );

        let st = Dataset::new(vec![1.0, 2.0], vec![2], vec![3], "m").unwrap();
        std::fs::write(d.join("s.safetensors"), safetensors::encode(&st).unwrap()).unwrap();
        assert_eq!(
            load(&d.join("s.safetensors"), Split::Train).unwrap().labels,
            vec![3]
        );

        // An idx3 file with an unusual name, recognized by content.
        std::fs::write(d.join("my-images"), gzip(&idx(&[1, 1, 2], &[0, 255]))).unwrap();
        std::fs::write(d.join("my-labels"), idx(&[1], &[2])).unwrap();
        assert_eq!(
            load(&d.join("my-images"), Split::Train).unwrap().features,
            vec![0.0, 1.0]
        );
    }

    #[test]
    fn csv_label_option_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "2,1,0\n").unwrap();
        let opts = LoadOptions {
            csv_label: LabelColumn::Index(0),
            ..LoadOptions::default()
        };
        assert_eq!(load_with(&p, Split::Train, &opts).unwrap().labels, vec![2]);
    }

    /// The repository's embedded `data/` directory, found relative to this
    /// source file so the test works from any crate that includes the module.
    fn embedded(rel: &str) -> PathBuf {
        let here = Path::new(file!()).parent().unwrap_or(Path::new("."));
        here.join("../../data").join(rel)
    }

    fn counts(labels: &[u32]) -> Vec<usize> {
        let mut c = vec![0; 10];
        for &l in labels {
            c[l as usize] += 1;
        }
        c
    }

    #[test]
    fn embedded_mnist_subset() {
        let dir = embedded("mnist");
        let train = load(&dir, Split::Train).unwrap();
        assert_eq!(train.len(), 8000);
        assert_eq!(train.sample_shape, vec![1, 28, 28]);
        assert_eq!(counts(&train.labels)[..3], [825, 880, 803]);
        assert!(train.features.iter().all(|v| (0.0..=1.0).contains(v)));
        let test = load(&dir, Split::Test).unwrap();
        assert_eq!(test.len(), 2000);
        assert_eq!(counts(&test.labels)[9], 196);
        // Close to the usual MNIST statistics (0.1307, 0.3081).
        let n = Normalization::fit(&train).unwrap();
        assert!((0.12..0.14).contains(&n.mean()[0]), "{n:?}");
        assert!((0.29..0.32).contains(&n.std()[0]), "{n:?}");
    }

    #[test]
    fn embedded_breast_cancer_csv() {
        let d = load(&embedded("breast_cancer.csv"), Split::Train).unwrap();
        assert_eq!(d.len(), 569);
        assert_eq!(d.sample_shape, vec![30]);
        assert_eq!(counts(&d.labels)[..2], [212, 357]);
        assert_eq!(d.features[..2], [10.05, 17.53]);
        let (train, test) = d.split_at(455).unwrap();
        assert_eq!((train.len(), test.len()), (455, 114));
        let n = Normalization::fit(&train).unwrap();
        assert_eq!(n.channels(), 30);
        let mut t = train.clone();
        n.apply(&mut t).unwrap();
        let col0_mean: f64 = (0..455).map(|i| f64::from(t.features[i * 30])).sum::<f64>() / 455.0;
        assert!(col0_mean.abs() < 1e-5, "{col0_mean}");
    }

    #[test]
    fn non_datasets_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let npy_path = d.join("x.npy");
        npy::save(&npy_path, &[1], &[1.0]).unwrap();
        let err = load(&npy_path, Split::Train).unwrap_err();
        assert!(
            err.to_string().contains("a .npy file holds no labels"),
            "{err}"
        );

        let labels_path = d.join("train-labels-idx1-ubyte");
        std::fs::write(&labels_path, idx(&[1], &[1])).unwrap();
        let err = load(&labels_path, Split::Train).unwrap_err();
        assert!(
            err.to_string().contains("this is an idx1 labels file"),
            "{err}"
        );

        std::fs::write(d.join("notes.txt"), "hello").unwrap();
        let err = load(&d.join("notes.txt"), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::NotADataset { .. }));

        let err = load(&d.join("missing.csv"), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
    }
}
