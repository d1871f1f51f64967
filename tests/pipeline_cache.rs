//! Compiled pipelines kept on disk between processes (Vulkan): a second context starts from
//! the first one's file and trains bit for bit as it did; a damaged file is ignored.

mod common;

use std::sync::Arc;

use common::batch;
use wgnn::gpu::{AdapterRequest, GpuContext};
use wgnn::nn::{CrossEntropyLoss, Sequential};
use wgnn::optim::{Optimizer, Sgd};
use wgnn::{Model, ModelConfig};

fn open(dir: &std::path::Path) -> Arc<GpuContext> {
    let request = AdapterRequest {
        pipeline_cache: Some(dir.to_path_buf()),
        ..AdapterRequest::from_env().unwrap()
    };
    Arc::new(GpuContext::with_request(&request).unwrap())
}

/// The parameters after three steps of the lecture MLP on `ctx`.
fn train(ctx: Arc<GpuContext>) -> Vec<Vec<f32>> {
    let config = ModelConfig {
        sample_shape: vec![12],
        batch_size: 9,
        seed: 4,
    };
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        ..Sgd::default()
    });
    let layers = Sequential::lecture_mlp(12, 3, 0.2);
    let mut model = Model::new(ctx, layers, CrossEntropyLoss::new(), sgd, config).unwrap();
    for step in 0..3 {
        let (x, y) = batch(step, 9, 12, 3);
        model.train_step(&x, &y).unwrap();
    }
    model.state().unwrap().params
}

#[test]
fn a_second_process_starts_from_the_first_ones_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let Some((file, loaded)) = first.pipeline_cache().map(|(f, n)| (f.to_path_buf(), n)) else {
        // wgpu keeps pipeline caches on Vulkan only: elsewhere nothing is written.
        assert_ne!(first.adapter().backend, wgpu::Backend::Vulkan);
        drop(first);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        return;
    };
    assert_eq!(loaded, 0, "an empty directory has no cache");
    let want = train(first.clone());
    drop(first);
    let saved = std::fs::metadata(&file).unwrap().len();
    assert!(saved > 12, "{} holds {saved} bytes", file.display());

    let second = open(dir.path());
    assert!(
        second.pipeline_cache().unwrap().1 > 0,
        "the cache was not loaded"
    );
    assert_eq!(train(second.clone()), want);
    drop(second);

    // A damaged file: ignored, and written anew.
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let third = open(dir.path());
    assert_eq!(third.pipeline_cache().unwrap().1, 0);
    assert_eq!(train(third.clone()), want);
    drop(third);
    assert!(open(dir.path()).pipeline_cache().unwrap().1 > 0);
}
