//! The CSV loader's peak memory against the data's size as f32, measured by a counting
//! allocator (every byte the loader holds at once, capacity included, whatever the system
//! allocator makes of it). One test in its own binary, so nothing else allocates meanwhile.
//!
//! `WGNN_CSV_MEMORY_ROWS=2000000 cargo test --release --test data_memory -- --nocapture`
//! measures the README's figure (2M rows × 20 features).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(live, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growing realloc may copy: count the old and the new block together at its peak.
        if new_size > layout.size() {
            grow(new_size);
        }
        // SAFETY: as the caller promised for `ptr`, `layout` and `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size > layout.size() {
            LIVE.fetch_sub(
                if p.is_null() { new_size } else { layout.size() },
                Ordering::SeqCst,
            );
        } else if !p.is_null() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result and the most bytes live above what was live before it.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

#[test]
fn the_csv_loader_peaks_within_1_5x_of_the_datas_f32_size() {
    let rows: usize = std::env::var("WGNN_CSV_MEMORY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let features = 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let names: Vec<String> = (0..features).map(|j| format!("f{j}")).collect();
        writeln!(file, "{},label", names.join(",")).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..rows {
            for _ in 0..features {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                write!(
                    file,
                    "{:.6},",
                    (state >> 40) as f64 / (1u64 << 24) as f64 - 0.5
                )
                .unwrap();
            }
            writeln!(file, "{}", state % 2).unwrap();
        }
    }
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    // The data as f32: what the model trains on.
    let f32_bytes = rows * features * 4;

    let start = std::time::Instant::now();
    let (data, load_peak) =
        peak_of(|| wgnn::data::csv::load(&path, &wgnn::data::LabelColumn::Auto).unwrap());
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(
        (data.len(), data.sample_shape.clone()),
        (rows, vec![features])
    );
    drop(data);
    // With the training split held out of the same file (`--holdout 0.2`), as `wgnn train`.
    let source = wgnn::data::prepare::Source::Path(path.clone());
    let (splits, split_peak) = peak_of(|| {
        wgnn::data::prepare::load_splits(&source, None, 0.2, &Default::default()).unwrap()
    });
    assert_eq!(splits.train.len() + splits.test.len(), rows);
    drop(splits);

    let ratio = |peak: usize| peak as f64 / f32_bytes as f64;
    println!(
        "{rows} rows x {features} features: CSV {:.1} MB, as f32 {:.1} MB; loader peak {:.1} MB \
         ({:.2}x) in {seconds:.2} s, with the holdout split {:.1} MB ({:.2}x)",
        file_bytes as f64 / 1e6,
        f32_bytes as f64 / 1e6,
        load_peak as f64 / 1e6,
        ratio(load_peak),
        split_peak as f64 / 1e6,
        ratio(split_peak)
    );
    assert!(
        ratio(load_peak) <= 1.5,
        "loader peak {:.2}x",
        ratio(load_peak)
    );
    assert!(
        ratio(split_peak) <= 1.5,
        "split peak {:.2}x",
        ratio(split_peak)
    );
}
