//! Epoch ordering (seeded shuffling) and mini-batch gathering.

use rand::seq::SliceRandom;

use super::dataset::Dataset;
use super::error::DataError;
use crate::rng::{self, HostRng};

/// The order in which samples are visited, epoch by epoch.
///
/// With a seed, each epoch is shuffled by a [`HostRng`] (ChaCha12) keyed by
/// `(seed, epoch)`: epochs differ from each other, yet the whole run is
/// reproducible and any epoch can be regenerated on its own (e.g. after
/// resuming). Without a seed, samples are visited in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOrder {
    len: usize,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
    /// This process's share: (rank, ranks), as `DistributedSampler` splits an epoch.
    shard: (usize, usize),
}

impl BatchOrder {
    /// Plans batches of `batch_size` over `len` samples. The last, smaller
    /// batch is kept unless `drop_last` (as PyTorch's `DataLoader`).
    pub fn new(
        len: usize,
        batch_size: usize,
        shuffle_seed: Option<u64>,
        drop_last: bool,
    ) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::BatchSize { batch_size });
        }
        Ok(BatchOrder {
            len,
            batch_size,
            shuffle_seed,
            drop_last,
            shard: (0, 1),
        })
    }

    /// Rank `rank`'s share of every epoch among `ranks` processes, as PyTorch's
    /// `DistributedSampler`: every rank draws the same order from (seed, epoch), pads it by
    /// repeating its start to a multiple of `ranks` (or, with `drop_last`, cuts it down to
    /// one), and takes positions rank, rank + ranks, …; its batches are then cut from that
    /// share as a `DataLoader` cuts them, so every rank takes the same number of batches of
    /// the same sizes.
    pub fn shard(mut self, rank: usize, ranks: usize) -> Result<Self, DataError> {
        if ranks == 0 || rank >= ranks {
            return Err(DataError::Shard { rank, ranks });
        }
        if self.len > 0 && self.len < ranks && self.drop_last {
            return Err(DataError::TooFewForRanks {
                len: self.len,
                ranks,
            });
        }
        self.shard = (rank, ranks);
        Ok(self)
    }

    /// Samples this rank visits per epoch before batching (all of them on one process).
    fn share_len(&self) -> usize {
        let ranks = self.shard.1;
        if self.drop_last {
            self.len / ranks
        } else {
            self.len.div_ceil(ranks)
        }
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        if self.drop_last {
            self.share_len() / self.batch_size
        } else {
            self.share_len().div_ceil(self.batch_size)
        }
    }

    /// Number of samples this rank visits per epoch (on one process, fewer than `len` only
    /// when `drop_last` drops a partial batch).
    pub fn samples_per_epoch(&self) -> usize {
        if self.drop_last {
            self.num_batches() * self.batch_size
        } else {
            self.share_len()
        }
    }

    /// The sample indices of every batch of `epoch`, in order.
    pub fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if let Some(seed) = self.shuffle_seed {
            order.shuffle(&mut epoch_rng(seed, epoch));
        }
        let (rank, ranks) = self.shard;
        if ranks > 1 && !order.is_empty() {
            let total = self.share_len() * ranks;
            // Padding repeats the order from its start, as often as a tiny dataset needs.
            let mut i = 0;
            while order.len() < total {
                order.push(order[i]);
                i += 1;
            }
            order.truncate(total);
            order = order.into_iter().skip(rank).step_by(ranks).collect();
        }
        order
            .chunks(self.batch_size)
            .filter(|batch| !self.drop_last || batch.len() == self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// A generator for one epoch: the seed and the epoch fill distinct halves of
/// the 32-byte seed, so different (seed, epoch) pairs never collide.
fn epoch_rng(seed: u64, epoch: u64) -> HostRng {
    let mut bytes = [0u8; 32];
    let (s, rest) = bytes.split_at_mut(8);
    s.copy_from_slice(&seed.to_le_bytes());
    if let Some(e) = rest.get_mut(..8) {
        e.copy_from_slice(&epoch.to_le_bytes());
    }
    rng::from_key(bytes)
}

impl Dataset {
    /// Copies the samples at `indices` into `x_out` (row-major
    /// `[indices.len(), sample_shape...]`) and their labels into `y_out`,
    /// replacing previous contents (buffers are reused across batches).
    pub fn gather(
        &self,
        indices: &[usize],
        x_out: &mut Vec<f32>,
        y_out: &mut Vec<u32>,
    ) -> Result<(), DataError> {
        x_out.clear();
        y_out.clear();
        x_out.reserve(indices.len().saturating_mul(self.sample_len()));
        y_out.reserve(indices.len());
        for &index in indices {
            let (Some(x), Some(&y)) = (self.sample(index), self.labels.get(index)) else {
                return Err(DataError::IndexOutOfRange {
                    dataset: self.source.clone(),
                    index,
                    len: self.len(),
                });
            };
            x_out.extend_from_slice(x);
            y_out.push(y);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sorted_flat(batches: &[Vec<usize>]) -> Vec<usize> {
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        all
    }

    #[test]
    fn every_index_exactly_once_with_partial_last_batch() {
        let order = BatchOrder::new(10, 4, Some(7), false).unwrap();
        let batches = order.epoch_batches(0);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(sorted_flat(&batches), (0..10).collect::<Vec<_>>());
        assert_eq!(order.num_batches(), 3);
        assert_eq!(order.samples_per_epoch(), 10);
    }

    #[test]
    fn drop_last_drops_the_partial_batch() {
        let order = BatchOrder::new(10, 4, Some(7), true).unwrap();
        let batches = order.epoch_batches(3);
        assert_eq!(batches.len(), 2);
        assert!(batches.iter().all(|b| b.len() == 4));
        assert_eq!(order.num_batches(), 2);
        assert_eq!(order.samples_per_epoch(), 8);
        let mut seen = batches.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 8);
        // An exact multiple loses nothing.
        assert_eq!(
            BatchOrder::new(8, 4, None, true)
                .unwrap()
                .epoch_batches(0)
                .len(),
            2
        );
    }

    #[test]
    fn no_seed_keeps_file_order() {
        let order = BatchOrder::new(5, 2, None, false).unwrap();
        assert_eq!(
            order.epoch_batches(9),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
    }

    #[test]
    fn same_seed_same_order_different_epoch_or_seed_differs() {
        let a = BatchOrder::new(100, 16, Some(42), false).unwrap();
        let b = BatchOrder::new(100, 16, Some(42), false).unwrap();
        assert_eq!(a.epoch_batches(0), b.epoch_batches(0));
        assert_eq!(a.epoch_batches(5), b.epoch_batches(5));
        assert_ne!(a.epoch_batches(0), a.epoch_batches(1));
        let c = BatchOrder::new(100, 16, Some(43), false).unwrap();
        assert_ne!(a.epoch_batches(0), c.epoch_batches(0));
        // Shuffled, not the identity.
        assert_ne!(a.epoch_batches(0).concat(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn shuffle_stream_is_pinned() {
        // Seed 0's first two epochs over 10 samples. A change of generator, of its keying or
        // of rand's shuffle would change every seeded run's data order, and fails here.
        let order = BatchOrder::new(10, 4, Some(0), false).unwrap();
        assert_eq!(
            order.epoch_batches(0),
            [vec![4, 7, 0, 5], vec![2, 1, 8, 6], vec![3, 9]]
        );
        assert_eq!(
            order.epoch_batches(1),
            [vec![8, 4, 6, 5], vec![2, 0, 1, 7], vec![3, 9]]
        );
    }

    #[test]
    fn zero_batch_size_is_an_error() {
        let err = BatchOrder::new(10, 0, None, false).unwrap_err();
        assert_eq!(err.to_string(), "batch size must be at least 1, got 0");
    }

    #[test]
    fn empty_dataset_has_no_batches() {
        let order = BatchOrder::new(0, 4, Some(1), false).unwrap();
        assert!(order.epoch_batches(0).is_empty());
    }

    #[test]
    fn gather_copies_rows_and_reuses_buffers() {
        let d = Dataset::new(
            (0..12).map(|v| v as f32).collect(),
            vec![3],
            vec![5, 6, 7, 8],
            "g",
        )
        .unwrap();
        let (mut x, mut y) = (vec![99.0], vec![99]);
        d.gather(&[3, 1], &mut x, &mut y).unwrap();
        assert_eq!(x, vec![9.0, 10.0, 11.0, 3.0, 4.0, 5.0]);
        assert_eq!(y, vec![8, 6]);
        let err = d.gather(&[0, 4], &mut x, &mut y).unwrap_err();
        assert!(matches!(
            err,
            DataError::IndexOutOfRange {
                index: 4,
                len: 4,
                ..
            }
        ));
        assert_eq!(err.to_string(), "g: index 4 is out of range for 4 samples");
    }

    proptest! {
        #[test]
        fn batches_partition_the_indices(
            len in 0usize..300,
            batch in 1usize..50,
            seed in proptest::option::of(any::<u64>()),
            epoch in any::<u64>(),
            drop_last in any::<bool>(),
        ) {
            let order = BatchOrder::new(len, batch, seed, drop_last).unwrap();
            let batches = order.epoch_batches(epoch);
            prop_assert_eq!(batches.len(), order.num_batches());
            let flat = sorted_flat(&batches);
            prop_assert_eq!(flat.len(), order.samples_per_epoch());
            let mut dedup = flat.clone();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), flat.len());
            prop_assert!(flat.iter().all(|&i| i < len));
            if !drop_last {
                prop_assert_eq!(flat, (0..len).collect::<Vec<_>>());
            }
        }
    }
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn ranks_split_one_order_as_distributed_sampler_with_padding() {
        // 10 samples over 3 ranks: padded to 12 by repeating the order's first two.
        let whole = BatchOrder::new(10, 100, Some(5), false).unwrap();
        let order = whole.epoch_batches(2).concat();
        let shares: Vec<Vec<usize>> = (0..3)
            .map(|rank| {
                let shard = whole.clone().shard(rank, 3).unwrap();
                assert_eq!(shard.samples_per_epoch(), 4);
                shard.epoch_batches(2).concat()
            })
            .collect();
        let padded: Vec<usize> = order.iter().chain(&order[..2]).copied().collect();
        for (rank, share) in shares.iter().enumerate() {
            let expected: Vec<usize> = padded.iter().skip(rank).step_by(3).copied().collect();
            assert_eq!(share, &expected, "rank {rank}");
        }
    }

    #[test]
    fn two_ranks_of_batch_b_take_the_samples_of_one_batch_of_2b() {
        let single = BatchOrder::new(24, 6, Some(1), false).unwrap();
        let ranks: Vec<Vec<Vec<usize>>> = (0..2)
            .map(|r| {
                BatchOrder::new(24, 3, Some(1), false)
                    .unwrap()
                    .shard(r, 2)
                    .unwrap()
                    .epoch_batches(0)
            })
            .collect();
        for (k, batch) in single.epoch_batches(0).iter().enumerate() {
            let mut union = [ranks[0][k].clone(), ranks[1][k].clone()].concat();
            union.sort_unstable();
            let mut batch = batch.clone();
            batch.sort_unstable();
            assert_eq!(union, batch, "batch {k}");
        }
    }

    #[test]
    fn drop_last_cuts_the_order_to_a_multiple_of_the_ranks() {
        let order = BatchOrder::new(11, 2, None, true).unwrap();
        let rank1 = order.clone().shard(1, 3).unwrap();
        // 9 samples kept: rank 1 gets 1, 4, 7 and one full batch of 2.
        assert_eq!(rank1.epoch_batches(0), vec![vec![1, 4]]);
        assert_eq!(rank1.num_batches(), 1);
        assert!(matches!(
            order.clone().shard(3, 3),
            Err(DataError::Shard { rank: 3, ranks: 3 })
        ));
        let tiny = BatchOrder::new(2, 1, None, true).unwrap();
        assert!(matches!(
            tiny.shard(0, 3),
            Err(DataError::TooFewForRanks { len: 2, ranks: 3 })
        ));
    }
}
