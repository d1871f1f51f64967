//! A tabular binary classifier from a CSV file, end to end through the library: scikit-learn's
//! breast-cancer data (569 rows of 30 features), the last 20 % of its rows held out for
//! testing, per-channel standardization fitted on the training rows as the model's first
//! stage, Linear → GELU → Dropout → Linear → Tanh → Linear with BCE-with-logits and AdamW,
//! the gradients of the last step read back under their state_dict names, the model saved in
//! one call and loaded in one call into a fresh model that predicts the same bits.
//!
//! Run with `cargo run --release --example tabular [-- OUT_DIR]`; with OUT_DIR the
//! checkpoint stays there as `model.safetensors`, for
//! `wgnn eval --checkpoint OUT_DIR/model.safetensors --data data/breast_cancer.csv` or
//! `python scripts/check_checkpoint.py OUT_DIR/model.safetensors` (PyTorch's strict
//! `load_state_dict`).

use std::path::{Path, PathBuf};

use wgnn::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/breast_cancer.csv");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The header row names the columns; "target" is the label (0 or 1).
    let splits = load_splits(
        &Source::Path(DATA.into()),
        None,
        0.2,
        &LoadOptions::default(),
    )?;
    let (train, test) = (&splits.train, &splits.test);
    println!(
        "data: {} training rows, {} test rows ({}), {} features",
        train.len(),
        test.len(),
        splits.test_origin,
        train.sample_len()
    );
    assert_eq!(
        (train.len(), test.len(), train.sample_len()),
        (455, 114, 30)
    );

    // Standardized with the training rows' statistics, inside the model: raw rows go in.
    let standardize = Transform::per_channel(&Normalization::fit(train)?, &train.sample_shape);
    let layers = Sequential::new()
        .append(Linear::new(30, 32))
        .append(GELU::new())
        .append(Dropout::new(0.1))
        .append(Linear::new(32, 16))
        .append(Tanh)
        .append(Linear::new(16, 1));
    let adamw = Optimizer::Adam(Adam {
        lr: 3e-3,
        ..Adam::adamw()
    });
    let config = ModelConfig {
        sample_shape: vec![30],
        batch_size: 32,
        seed: 0,
    };
    let loss = BCEWithLogitsLoss::new();
    let mut model =
        Model::with_preprocess(GpuContext::new()?, standardize, layers, loss, adamw, config)?;

    let options = FitOptions {
        epochs: 20,
        ..FitOptions::default()
    };
    let history = model.fit(train, test, &options)?;
    let last = history.last().ok_or("no epoch trained")?;
    println!(
        "after {} epochs: train loss {:.4}, test loss {:.4}, test accuracy {:.2}%",
        last.epoch,
        last.train_loss,
        last.test_loss,
        100.0 * last.test_accuracy
    );
    assert!(
        last.test_accuracy > 0.93,
        "test accuracy {}",
        last.test_accuracy
    );

    // Each parameter's .grad after the last step's backward, named as in the state_dict.
    let gradients = model.gradients()?;
    for (name, grad) in &gradients {
        let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        println!("  ‖∂loss/∂{name}‖ = {norm:.3e} ({} values)", grad.len());
        assert!(grad.iter().all(|g| g.is_finite()), "{name}");
    }
    let names: Vec<&str> = gradients.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"
        ]
    );
    assert!(gradients.iter().all(|(_, g)| g.iter().any(|&v| v != 0.0)));

    let kept = std::env::args().nth(1).map(PathBuf::from);
    let scratch = tempfile::tempdir()?;
    let dir = kept.as_deref().unwrap_or(scratch.path());
    std::fs::create_dir_all(dir)?;
    let path = dir.join("model.safetensors");
    model.save(&path)?;

    // A fresh model from the file alone: layers, loss, optimizer settings, the
    // standardization, weights and running state.
    let mut loaded = Model::load(model.context().clone(), &path)?;
    model.eval();
    loaded.eval();
    let (before, after) = (
        model.predict(&test.features)?,
        loaded.predict(&test.features)?,
    );
    let same = before
        .iter()
        .zip(&after)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same && before.len() == test.len(),
        "the loaded model predicts otherwise"
    );
    let accuracy = evaluate(&mut loaded, test, 64)?.accuracy;
    assert_eq!(accuracy, last.test_accuracy);
    println!(
        "saved {} and loaded it into a fresh model: the same {} logits, bit for bit; test accuracy {:.2}%",
        shown(&path, kept.is_some()),
        after.len(),
        100.0 * accuracy
    );
    Ok(())
}

/// The path, or where it was when it is gone with the scratch directory.
fn shown(path: &Path, kept: bool) -> String {
    match kept {
        true => path.display().to_string(),
        false => "the model to a scratch directory".to_string(),
    }
}
