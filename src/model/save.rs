//! A model to and from a file in one call each: [`Model::save`] writes what `wgnn train`
//! writes as its checkpoint, [`Model::load`] builds the whole model back from such a file,
//! and [`Model::load_state_dict`] loads a plain state_dict (PyTorch's) into a model.
//!
//! A fitted preprocessing other than per-channel statistics (mean image, PCA, ZCA, …) keeps
//! its tensors out of the checkpoint, which stays exactly PyTorch's `state_dict`: they go to
//! [`PREPROCESS_FILE`] in the checkpoint's directory, where `wgnn train` puts them and where
//! [`Model::load`], `wgnn eval` and `wgnn predict` read them. So one directory holds at most
//! one such preprocessing: a save that would replace another one is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Model;
use crate::checkpoint::{CheckpointError, MODEL_FILE, StateDict, TRAINING_FILE, apply_state_dict};
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::run::{
    self, PREPROCESS_FILE, Preprocessing, RunConfig, checkpoint_dir, model_file, transform_dict,
};

impl Model {
    /// Writes the model to `path` (a file, or a directory to hold `checkpoint.safetensors`)
    /// as `wgnn train` writes its checkpoint: the `state_dict` under PyTorch's names (which
    /// `model.load_state_dict(safetensors.torch.load_file(path))` loads with `strict=True`)
    /// and, in the metadata, the architecture, sample shape, loss, optimizer settings, batch
    /// size, seed and preprocessing, so that [`Model::load`], `wgnn eval` and `wgnn predict`
    /// rebuild it. The optimizer's state is not saved (`wgnn train --resume` continues a
    /// run with it). Atomic: a crash leaves the old file or the new one. Blocking: it reads
    /// the state back from the device.
    ///
    /// Refused, naming the file: a directory that holds a run of `wgnn train` (its
    /// checkpoint belongs to its training state), and a [`PREPROCESS_FILE`] beside `path`
    /// that holds another model's preprocessing (see the module's notes).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wgnn::prelude::*;
    ///
    /// let layers = Sequential::new().append(Linear::new(4, 8)).append(ReLU).append(Linear::new(8, 3));
    /// let config = ModelConfig { sample_shape: vec![4], batch_size: 2, seed: 7 };
    /// let adamw = Optimizer::Adam(Adam::adamw());
    /// let mut model = Model::new(GpuContext::new()?, layers, CrossEntropyLoss::new(), adamw, config)?;
    /// model.train_step(&[0.5, -1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 3.0], &[2, 0])?;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("model.safetensors");
    /// model.save(&path)?;
    /// let mut loaded = Model::load(model.context().clone(), &path)?;
    ///
    /// // The same layers, loss and optimizer settings, and the same predictions, bit for bit.
    /// assert_eq!(loaded.optimizer(), model.optimizer());
    /// model.eval();
    /// loaded.eval();
    /// let x = [1.0, 2.0, 3.0, 4.0];
    /// assert_eq!(loaded.predict(&x)?, model.predict(&x)?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn save(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = model_file(path.as_ref());
        let refuse = |path: &Path, message: String| CheckpointError::Unsaveable {
            path: path.display().to_string(),
            message,
        };
        let dir = checkpoint_dir(&path);
        if path.file_name() == Some(MODEL_FILE.as_ref()) && dir.join(TRAINING_FILE).exists() {
            return Err(refuse(
                &dir,
                format!(
                    "holds a run of `wgnn train`, whose {MODEL_FILE} goes with its \
                     {TRAINING_FILE}: save the model elsewhere"
                ),
            )
            .into());
        }
        let run = RunConfig::of_model(self).map_err(|message| refuse(&path, message))?;
        if let (Some(Preprocessing::Fitted(_)), Some(t)) = (&run.normalization, self.preprocess()) {
            let beside = dir.join(PREPROCESS_FILE);
            let bytes = transform_dict(t).to_bytes()?;
            match std::fs::read(&beside) {
                Ok(existing) if existing == bytes => {}
                Ok(_) => {
                    return Err(refuse(
                        &beside,
                        "holds the preprocessing of another model, which a checkpoint in \
                         this directory reads: save each model with a fitted preprocessing \
                         in a directory of its own"
                            .into(),
                    )
                    .into());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    crate::checkpoint::write_atomic(&beside, &bytes)?;
                }
                Err(source) => {
                    let path = beside.display().to_string();
                    return Err(CheckpointError::Io { path, source }.into());
                }
            }
        }
        let state = self.state()?;
        let mut sd = run::checkpoint_dict(self, &state, &run);
        sd.source = path.display().to_string();
        sd.write(&path)?;
        Ok(())
    }

    /// The model a checkpoint describes (a file, or a directory holding
    /// `checkpoint.safetensors`), as [`Model::save`] or `wgnn train` wrote it: its layers,
    /// loss, optimizer settings, batch size, seed and preprocessing, then its parameters and
    /// running statistics, loaded strictly. The optimizer starts afresh, at step 0, and the
    /// model in train mode, as [`Model::new`] leaves it. A checkpoint whose parameters or
    /// running statistics hold NaN or ±∞ is refused; so is a plain state_dict, which holds
    /// no architecture ([`Model::load_state_dict`] loads one into a model).
    pub fn load(ctx: impl Into<Arc<GpuContext>>, path: impl AsRef<Path>) -> Result<Model> {
        let (model, _) = run::restore_trained(ctx.into(), path.as_ref())?;
        Ok(model)
    }

    /// Loads a state_dict (a file, or a directory holding `checkpoint.safetensors`) into
    /// this model, as PyTorch's `model.load_state_dict(…, strict=True)`: its parameters
    /// and running statistics replace the model's, the optimizer state and the step stay.
    /// Any safetensors file with the model's keys loads, PyTorch's
    /// `safetensors.torch.save_file(model.state_dict(), …)` included, also with every key
    /// under one prefix (`layers.1.weight`). Every missing or unexpected key and every wrong
    /// shape or dtype is reported at once, with the file; so is a NaN or ±∞.
    pub fn load_state_dict(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file: PathBuf = model_file(path.as_ref());
        let sd = StateDict::read(&file)?;
        sd.check_finite()?;
        let base = self.state()?;
        let state = apply_state_dict(&sd, &self.sequential, self.graph(), &base)?;
        self.load_state(&state)
    }
}
