//! The start-up check that every rank runs the same job: the same arguments, architecture,
//! seeds and data. A rank that differs is named, with what differs, on every rank, and every
//! rank refuses to start (no rank waits for another in a collective it will never reach).

use super::{Communicator, DistError, all_gather_u64, broadcast_bytes};

/// What must be equal on every rank, as (what, value) pairs in a fixed order: "arguments",
/// "training data", "architecture"...
pub type Fingerprint = Vec<(String, String)>;

/// Succeeds when every rank's `mine` equals rank 0's; else every rank returns the same
/// [`DistError::Mismatch`], naming the first rank that differs and how.
pub fn agree(comm: &dyn Communicator, mine: &Fingerprint) -> Result<(), DistError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let encoded = serde_json::to_vec(mine).map_err(|e| DistError::Garbled(e.to_string()))?;
    let root = broadcast_bytes(comm, encoded, 0)?;
    let reference: Fingerprint =
        serde_json::from_slice(&root).map_err(|e| DistError::Garbled(e.to_string()))?;
    let differs = first_difference(&reference, mine);
    let code = differs.as_ref().map_or(0, |(index, _)| *index as u64 + 1);
    let codes = all_gather_u64(comm, &[code])?;
    let Some(rank) = codes.iter().position(|&c| c != 0) else {
        return Ok(());
    };
    // That rank tells every other what differs.
    let mine_detail = match (&differs, comm.rank() == rank) {
        (Some((_, detail)), true) => detail.clone().into_bytes(),
        _ => Vec::new(),
    };
    let detail = broadcast_bytes(comm, mine_detail, rank)?;
    let index = (codes[rank] - 1) as usize;
    let what = reference
        .get(index)
        .map_or_else(|| "configuration".to_string(), |(key, _)| key.clone());
    Err(DistError::Mismatch {
        rank,
        what,
        detail: String::from_utf8_lossy(&detail).into_owned(),
    })
}

/// The index of the first item of `mine` that differs from `reference`, and how.
fn first_difference(reference: &Fingerprint, mine: &Fingerprint) -> Option<(usize, String)> {
    for (index, (key, value)) in reference.iter().enumerate() {
        match mine.get(index) {
            Some((k, v)) if k == key && v == value => {}
            Some((k, v)) if k == key => return Some((index, contrast(v, value))),
            _ => return Some((index, format!("{key} is missing"))),
        }
    }
    (mine.len() > reference.len()).then(|| {
        let (key, _) = &mine[reference.len()];
        (
            reference.len(),
            format!("{key} has no counterpart on rank 0"),
        )
    })
}

/// "`mine` instead of `theirs`", narrowed for long values to the words that differ (with the
/// word before them): `--seed 1` instead of `--seed 0`.
fn contrast(mine: &str, theirs: &str) -> String {
    if mine.len() + theirs.len() <= 80 {
        return format!("{mine} instead of {theirs}");
    }
    let (a, b): (Vec<&str>, Vec<&str>) = (mine.split(' ').collect(), theirs.split(' ').collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let from = prefix.saturating_sub(1);
    let part = |w: &[&str]| w[from..w.len() - suffix].join(" ");
    format!("`{}` instead of `{}`", part(&a), part(&b))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn print(items: &[(&str, &str)]) -> Fingerprint {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_first_differing_item_is_named_with_both_values() {
        let reference = print(&[("arguments", "--seed 0"), ("training data", "10 samples")]);
        assert_eq!(first_difference(&reference, &reference), None);
        let other = print(&[("arguments", "--seed 0"), ("training data", "9 samples")]);
        assert_eq!(
            first_difference(&reference, &other),
            Some((1, "9 samples instead of 10 samples".into()))
        );
        let long = |seed: &str| {
            format!(
                "train --out runs/big-experiment --overwrite --seed {seed} --epochs 1 --batch-size 64"
            )
        };
        let (a, b) = (long("0"), long("1"));
        assert_eq!(contrast(&b, &a), "`--seed 1` instead of `--seed 0`");
        let short = print(&[("arguments", "--seed 0")]);
        assert_eq!(
            first_difference(&reference, &short),
            Some((1, "training data is missing".into()))
        );
    }

    /// Rank 1 of 2, with rank 0's fingerprint scripted: what the collectives would bring.
    struct RankOne {
        rank0: Vec<u8>,
        broadcasts: AtomicUsize,
    }

    impl Communicator for RankOne {
        fn rank(&self) -> usize {
            1
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), DistError> {
            unreachable!()
        }
        fn all_gather(&self, send: &[u8], recv: &mut [u8]) -> Result<(), DistError> {
            // Rank 0 agrees with itself (code 0); then this rank's code.
            recv[..send.len()].fill(0);
            recv[send.len()..].copy_from_slice(send);
            Ok(())
        }
        fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<(), DistError> {
            let n = self.broadcasts.fetch_add(1, Ordering::Relaxed);
            match (root, n) {
                (0, 0) => buffer.copy_from_slice(&(self.rank0.len() as u64).to_le_bytes()),
                (0, 1) => buffer.copy_from_slice(&self.rank0),
                _ => {}
            }
            Ok(())
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    #[test]
    fn a_rank_that_differs_is_named_with_what_differs() {
        let rank0 = print(&[("model", "linear:5"), ("seed", "0")]);
        let comm = RankOne {
            rank0: serde_json::to_vec(&rank0).unwrap(),
            broadcasts: AtomicUsize::new(0),
        };
        let mine = print(&[("model", "linear:5"), ("seed", "1")]);
        match agree(&comm, &mine) {
            Err(DistError::Mismatch { rank, what, detail }) => {
                assert_eq!(
                    (rank, what.as_str(), detail.as_str()),
                    (1, "seed", "1 instead of 0")
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
