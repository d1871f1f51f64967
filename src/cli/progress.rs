//! The training progress bar (indicatif) and per-epoch lines.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use wgnn::ops::reduce::Totals;
use wgnn::train::{EpochMetrics, Progress};

pub struct Bar {
    bar: Option<ProgressBar>,
    quiet: bool,
    epoch: usize,
    epochs: usize,
}

impl Bar {
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: None,
            quiet,
            epoch: 0,
            epochs: 0,
        }
    }
}

impl Progress for Bar {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        (self.epoch, self.epochs) = (epoch, epochs);
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(batches as u64), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn batch(&mut self, done: usize, samples_per_second: f64, totals: Option<&Totals>) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(done as u64);
        match totals {
            Some(t) => bar.set_message(format!(
                "loss {:.4} acc {:.1}% {:.0} samples/s",
                t.mean_loss(),
                100.0 * t.accuracy(),
                samples_per_second
            )),
            None if done == 1 => bar.set_message(format!("{samples_per_second:.0} samples/s")),
            None => {}
        }
    }

    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        println!(
            "epoch {:>3}/{}: train loss {:.4} acc {:6.2}% | test loss {:.4} acc {:6.2}% | {:.1}s, {:.0} samples/s",
            m.epoch,
            self.epochs,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.test_loss,
            100.0 * m.test_accuracy,
            m.seconds,
            m.samples_per_second
        );
    }
}
