//! Data-parallel training's arithmetic without MPI: a communicator that mirrors its rank
//! (every other rank holds the same batch) turns N ranks × batch B into one process on the
//! batch repeated N times, which a plain model computes directly. Every exchange of the plan
//! (gradient averaging, SyncBatchNorm's moments and sums, the reduced totals) runs through
//! the same code as under MPI. `tests/mpi.rs` runs real ranks.

mod common;

use common::{batch, ctx};
use wgnn::dist::{Communicator, DistError};
use wgnn::exec::state::HostState;
use wgnn::nn::{BatchNorm1d, CrossEntropyLoss, Dropout, Linear, ReLU, Sequential};
use wgnn::optim::{Adam, Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

/// Rank 0 of `ranks` processes that all hold rank 0's data.
struct Mirror {
    ranks: usize,
}

impl Communicator for Mirror {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        self.ranks
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError> {
        values.iter_mut().for_each(|v| *v *= self.ranks as f32);
        Ok(())
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError> {
        for chunk in recv.chunks_mut(send.len()) {
            chunk.copy_from_slice(send);
        }
        Ok(())
    }

    fn broadcast(&self, _: &mut [u8], _: usize) -> Result<(), DistError> {
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        panic!("abort({code})")
    }
}

const FEATURES: usize = 7;
const CLASSES: u32 = 3;

/// Linear (without bias before a batch norm, whose β takes its place) → [BatchNorm1d] → ReLU
/// → [Dropout], twice, then Linear to the classes.
fn mlp(batch_norm: bool, dropout: f32) -> Sequential {
    let linear = |i, o| Linear {
        bias: !batch_norm,
        ..Linear::new(i, o)
    };
    let mut layers = Sequential::new().append(linear(FEATURES, 5));
    if batch_norm {
        layers = layers.append(BatchNorm1d::new(5));
    }
    layers = layers.append(ReLU);
    if dropout > 0.0 {
        layers = layers.append(Dropout::new(dropout));
    }
    layers = layers.append(linear(5, 4));
    if batch_norm {
        layers = layers.append(BatchNorm1d::new(4));
    }
    layers.append(ReLU).append(Linear::new(4, CLASSES as usize))
}

fn model(layers: Sequential, optimizer: Optimizer, batch_size: usize) -> Model {
    let config = ModelConfig {
        sample_shape: vec![FEATURES],
        batch_size,
        seed: 11,
    };
    Model::new(ctx(), layers, CrossEntropyLoss::new(), optimizer, config).unwrap()
}

fn sgd() -> Optimizer {
    Optimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    })
}

fn adam() -> Optimizer {
    Optimizer::Adam(Adam {
        lr: 0.01,
        ..Adam::default()
    })
}

/// `x` (rows × FEATURES) repeated `times` times, with its labels.
fn repeated(x: &[f32], y: &[u32], times: usize) -> (Vec<f32>, Vec<u32>) {
    (x.repeat(times), y.repeat(times))
}

fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (&u, &v)) in a.iter().zip(b).enumerate() {
        let tol = rel * u.abs().max(v.abs()).max(1.0);
        assert!((u - v).abs() <= tol, "{what}[{i}]: {u} vs {v} (tol {tol})");
    }
}

fn assert_states_close(parallel: &HostState, single: &HostState, rel: f32) {
    for (i, (a, b)) in parallel.params.iter().zip(&single.params).enumerate() {
        assert_close(&format!("parameter {i}"), a, b, rel);
    }
    for (i, (a, b)) in parallel.buffers.iter().zip(&single.buffers).enumerate() {
        match (a.f32s(), b.f32s()) {
            (Some(a), Some(b)) => assert_close(&format!("running statistics {i}"), a, b, rel),
            // num_batches_tracked
            _ => assert_eq!(a, b, "counters {i}"),
        }
    }
    assert_eq!(parallel.step, single.step);
}

/// 20 steps of 2 mirrored ranks × `rows` against one process on the doubled batch.
fn train_both(batch_norm: bool, sync_bn: bool, optimizer: Optimizer, rows: usize) -> [Model; 2] {
    let ranks = 2;
    let mut parallel = model(mlp(batch_norm, 0.0), optimizer, rows);
    parallel
        .distribute(std::sync::Arc::new(Mirror { ranks }), sync_bn)
        .unwrap();
    let mut single = model(mlp(batch_norm, 0.0), optimizer, rows * ranks);
    parallel.train();
    single.train();
    for step in 0..20 {
        let (x, y) = batch(100 + step, rows, FEATURES, CLASSES);
        parallel.train_step(&x, &y).unwrap();
        let (gx, gy) = repeated(&x, &y, ranks);
        single.train_step(&gx, &gy).unwrap();
    }
    [parallel, single]
}

#[test]
fn ranks_without_batch_norm_train_as_one_process_on_the_global_batch() {
    for optimizer in [sgd(), adam()] {
        let [mut parallel, mut single] = train_both(false, false, optimizer, 3);
        assert_states_close(&parallel.state().unwrap(), &single.state().unwrap(), 1e-5);
    }
}

#[test]
fn sync_bn_ranks_train_as_one_process_on_the_global_batch() {
    // Running variances too: the unbiased factor is that of the global batch, 14/13, not 7/6.
    // The Linears before a batch norm have no bias: its gradient would be rounding noise,
    // which Adam's normalization turns into steps of the learning rate's size.
    for optimizer in [sgd(), adam()] {
        let [mut parallel, mut single] = train_both(true, true, optimizer, 7);
        assert_states_close(&parallel.state().unwrap(), &single.state().unwrap(), 1e-4);
    }
}

#[test]
fn sync_bn_normalizes_one_sample_per_rank_over_the_global_batch() {
    // 2 ranks × 1 sample is a global batch of 2, which SyncBatchNorm normalizes.
    let [mut parallel, mut single] = train_both(true, true, sgd(), 1);
    assert_states_close(&parallel.state().unwrap(), &single.state().unwrap(), 1e-4);
    let (x, y) = batch(5, 1, FEATURES, CLASSES);
    // Each rank's own batch norm cannot normalize one sample, as BatchNorm1d cannot.
    let mut local = model(mlp(true, 0.0), sgd(), 1);
    local
        .distribute(std::sync::Arc::new(Mirror { ranks: 2 }), false)
        .unwrap();
    local.train();
    let err = local.train_step(&x, &y).unwrap_err().to_string();
    assert!(err.contains("a training batch of 1 sample"), "{err}");
    // Nor SyncBatchNorm a global batch of one.
    let mut alone = model(mlp(true, 0.0), sgd(), 1);
    alone.distribute(wgnn::dist::single(), true).unwrap();
    alone.train();
    let err = alone.train_step(&x, &y).unwrap_err().to_string();
    assert!(err.contains("a training batch of 1 sample"), "{err}");
}

#[test]
fn reduced_totals_are_those_of_the_global_batch() {
    let [mut parallel, mut single] = train_both(true, true, sgd(), 5);
    let (p, s) = (
        parallel.read_metrics().unwrap(),
        single.read_metrics().unwrap(),
    );
    assert_eq!(p.count, s.count);
    assert_eq!(p.correct, s.correct);
    assert!(
        (p.mean_loss() - s.mean_loss()).abs() <= 1e-4 * s.mean_loss().abs().max(1.0),
        "{} vs {}",
        p.mean_loss(),
        s.mean_loss()
    );
}

#[test]
fn one_process_sync_bn_path_matches_the_fused_path_on_odd_batches() {
    // SyncBatchNorm's kernels (local moments, exchange, apply, normalize; reduce, exchange,
    // dx) alone, with the fused ReLU and dropout, on batches that fit no tile.
    for rows in [3usize, 7, 65] {
        let mut synced = model(mlp(true, 0.3), sgd(), rows);
        synced.distribute(wgnn::dist::single(), true).unwrap();
        let mut fused = model(mlp(true, 0.3), sgd(), rows);
        synced.train();
        fused.train();
        for step in 0..4 {
            let (x, y) = batch(7 + step, rows, FEATURES, CLASSES);
            synced.train_step(&x, &y).unwrap();
            fused.train_step(&x, &y).unwrap();
        }
        // One partial batch, as an epoch's last.
        let (x, y) = batch(99, 2, FEATURES, CLASSES);
        synced.train_step(&x, &y).unwrap();
        fused.train_step(&x, &y).unwrap();
        let (s, f) = (synced.state().unwrap(), fused.state().unwrap());
        assert_states_close(&s, &f, 1e-5);
        assert!(synced.counters().submits > fused.counters().submits);
    }
}

#[test]
fn a_distributed_model_takes_rank_zeros_state_and_plans_its_exchanges() {
    let mut m = model(mlp(true, 0.0), sgd(), 4);
    let before = m.state().unwrap();
    m.distribute(std::sync::Arc::new(Mirror { ranks: 2 }), false)
        .unwrap();
    assert_eq!(m.state().unwrap(), before);
    assert_eq!(m.communicator().size(), 2);
    // Without --sync-bn a step stops once, for the gradients.
    m.train();
    let (x, y) = batch(1, 4, FEATURES, CLASSES);
    let submits = m.counters().submits;
    m.train_step(&x, &y).unwrap();
    assert_eq!(m.counters().submits - submits, 2);
}
