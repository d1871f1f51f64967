//! The graph executor on the GPU against the CPU reference executor running the same graph.

mod common;

use common::{batch, ctx};
use wgnn::check::{Tolerance, assert_close};
use wgnn::exec::state::HostState;
use wgnn::graph::BufferValues;
use wgnn::nn::{CrossEntropyLoss, Flatten, Linear, Loss, ReLU, Sequential};
use wgnn::optim::{Adam, Optimizer, Sgd};
use wgnn::{Mode, Model, ModelConfig};

const SEED: u64 = 1234;

fn config(sample_shape: &[usize], batch_size: usize) -> ModelConfig {
    ModelConfig {
        sample_shape: sample_shape.to_vec(),
        batch_size,
        seed: SEED,
    }
}

/// Trains `steps` steps on the GPU and on the CPU from the same state; returns both states and
/// loss sequences.
fn train_both(
    model: Sequential,
    optimizer: Optimizer,
    sample_shape: &[usize],
    batch_size: usize,
    steps: u64,
) -> (HostState, HostState, Vec<f32>, Vec<f32>) {
    let features: usize = sample_shape.iter().product();
    let mut gpu = Model::new(
        ctx(),
        model.clone(),
        CrossEntropyLoss::new(),
        optimizer,
        config(sample_shape, batch_size),
    )
    .unwrap();
    let initial = gpu.state().unwrap();
    let mut cpu = gpu.reference_executor().unwrap();
    assert_eq!(cpu.state, initial);
    let (mut gpu_losses, mut cpu_losses) = (Vec::new(), Vec::new());
    for step in 0..steps {
        // Batches of varying content; the last one is partial to exercise a second plan.
        let rows = if step == steps - 1 {
            batch_size - 5
        } else {
            batch_size
        };
        let (x, y) = batch(step % 4, rows, features, 10);
        gpu.train_step(&x, &y).unwrap();
        gpu_losses.push(gpu.read_metrics().unwrap().last_loss);
        cpu_losses.push(cpu.run(Mode::Train, &x, &y).unwrap().loss);
    }
    (gpu.state().unwrap(), cpu.state, gpu_losses, cpu_losses)
}

fn compare_states(label: &str, names: &[String], gpu: &HostState, cpu: &HostState, tol: Tolerance) {
    assert_eq!(gpu.step, cpu.step);
    for (i, name) in names.iter().enumerate() {
        assert_close(
            &format!("{label} {name}"),
            &gpu.params[i],
            &cpu.params[i],
            tol,
        );
        for (k, state) in gpu.optimizer.iter().enumerate() {
            assert_close(
                &format!("{label} {name} optimizer state {k}"),
                &state[i],
                &cpu.optimizer[k][i],
                tol,
            );
        }
    }
    for (i, (g, c)) in gpu.buffers.iter().zip(&cpu.buffers).enumerate() {
        match (g, c) {
            (BufferValues::F32(g), BufferValues::F32(c)) => {
                // [running_mean; running_var] of a batch norm.
                assert_close(&format!("{label} buffer {i} (running stats)"), g, c, tol);
            }
            _ => assert_eq!(g, c, "{label} buffer {i} (counters)"),
        }
    }
}

#[test]
fn twenty_sgd_steps_of_the_lecture_mlp_match_the_cpu_reference() {
    let model = Sequential::lecture_mlp(3072, 10, 0.2);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        ..Sgd::default()
    });
    let (gpu, cpu, gl, cl) = train_both(model.clone(), sgd, &[3, 32, 32], 32, 20);
    // f32 on both sides in different orders (and BN statistics in f64 on the CPU): after
    // 20 steps of momentum SGD, agreement to 1e-4 relative + 1e-5 absolute.
    let tol = Tolerance::new(1e-5, 1e-4);
    assert_close("sgd losses", &gl, &cl, tol);
    let names: Vec<String> = model
        .state_dict_keys()
        .into_iter()
        .filter(|k| !k.contains("running") && !k.contains("num_batches"))
        .collect();
    compare_states("sgd", &names, &gpu, &cpu, tol);
    assert!(gl[19] < gl[0], "the loss should fall: {gl:?}");
}

#[test]
fn gpu_kernel_variants_train_like_the_cpu_reference() {
    // Workgroup-tiled matmuls and row-parallel reductions, as a discrete GPU would run them.
    let ctx = std::sync::Arc::new(wgnn::gpu::GpuContext::new().unwrap().with_gpu_kernels(true));
    let model = Sequential::lecture_mlp(300, 10, 0.2);
    let sgd = Optimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        ..Sgd::default()
    });
    let mut gpu = Model::new(
        ctx,
        model.clone(),
        CrossEntropyLoss::new(),
        sgd,
        config(&[300], 160),
    )
    .unwrap();
    let mut cpu = gpu.reference_executor().unwrap();
    let (mut gl, mut cl) = (Vec::new(), Vec::new());
    for step in 0..5 {
        let (x, y) = batch(step, 160, 300, 10);
        gpu.train_step(&x, &y).unwrap();
        gl.push(gpu.read_metrics().unwrap().last_loss);
        cl.push(cpu.run(Mode::Train, &x, &y).unwrap().loss);
    }
    let tol = Tolerance::new(1e-5, 1e-4);
    assert_close("gpu-kernel losses", &gl, &cl, tol);
    let state = gpu.state().unwrap();
    for (i, p) in gpu.graph().params.iter().enumerate() {
        assert_close(&p.name, &state.params[i], &cpu.state.params[i], tol);
    }
}

#[test]
fn twenty_adam_steps_without_batch_norm_match_the_cpu_reference() {
    // Adam turns a BN-fed bias's zero gradient (pure rounding noise) into full steps, so this
    // comparison uses a model without BN.
    let model = Sequential::new()
        .append(Flatten)
        .append(Linear::new(100, 64))
        .append(ReLU)
        .append(Linear::new(64, 32))
        .append(ReLU)
        .append(Linear::new(32, 10));
    let adam = Optimizer::Adam(Adam {
        lr: 1e-3,
        ..Adam::default()
    });
    let (gpu, cpu, gl, cl) = train_both(model.clone(), adam, &[100], 24, 20);
    let tol = Tolerance::new(2e-5, 1e-4);
    assert_close("adam losses", &gl, &cl, tol);
    compare_states("adam", &model.state_dict_keys(), &gpu, &cpu, tol);
}

/// Up to FOLD_MAX_ROWS rows the loss folds the batch into the totals itself; beyond, the
/// metrics kernel does in a dispatch of its own. Both count the same.
#[test]
fn a_batch_beyond_the_loss_fold_is_counted_by_the_metrics_kernel_alike() {
    let big = wgnn::ops::reduce::FOLD_MAX_ROWS + 3;
    let chunk = 1000;
    let make = |batch_size| {
        let mut model = Model::new(
            ctx(),
            Sequential::lecture_mlp(20, 10, 0.3),
            Loss::default(),
            Optimizer::Sgd(Sgd::default()),
            config(&[20], batch_size),
        )
        .unwrap();
        model.eval();
        model
    };
    let (x, y) = batch(8, big, 20, 10);
    let mut whole = make(big);
    whole.eval_step(&x, &y).unwrap();
    let mut chunked = make(chunk);
    for (xs, ys) in x.chunks(chunk * 20).zip(y.chunks(chunk)) {
        chunked.eval_step(xs, ys).unwrap();
    }
    assert_eq!(
        whole.report(Mode::Eval).dispatches_per_step,
        chunked.report(Mode::Eval).dispatches_per_step + 1
    );
    let (a, b) = (
        whole.read_metrics().unwrap(),
        chunked.read_metrics().unwrap(),
    );
    assert_eq!((a.count, a.correct), (b.count, b.correct));
    assert_eq!(a.count, big as f64);
    assert!(a.correct > 0.0);
    let (la, lb) = (a.mean_loss(), b.mean_loss());
    assert!((la - lb).abs() <= 1e-5 * lb.abs(), "{la} against {lb}");
}

#[test]
fn eval_output_of_a_row_does_not_depend_on_its_batch() {
    let mut model = Model::new(
        ctx(),
        Sequential::lecture_mlp(20, 10, 0.3),
        Loss::default(),
        Optimizer::Sgd(Sgd::default()),
        config(&[20], 16),
    )
    .unwrap();
    for step in 0..5 {
        let (x, y) = batch(step, 16, 20, 10);
        model.train_step(&x, &y).unwrap();
    }
    model.eval();
    let (x, _) = batch(99, 16, 20, 10);
    let full = model.predict(&x).unwrap();
    let (other, _) = batch(100, 16, 20, 10);
    let mut mixed = other.clone();
    mixed[..20].copy_from_slice(&x[..20]);
    let single = model.predict(&x[..20]).unwrap();
    let in_mixed = model.predict(&mixed).unwrap();
    assert_eq!(&full[..10], &single[..]);
    assert_eq!(&full[..10], &in_mixed[..10]);
}

#[test]
fn mode_switches_and_long_runs_allocate_nothing_and_repeat_bit_for_bit() {
    // A context of its own: other tests share ctx() and create buffers concurrently.
    let own = std::sync::Arc::new(wgnn::gpu::GpuContext::new().unwrap());
    let run = |steps: u64| -> (Vec<f32>, Model) {
        let mut model = Model::new(
            own.clone(),
            Sequential::lecture_mlp(50, 10, 0.2),
            Loss::default(),
            Optimizer::Sgd(Sgd {
                lr: 0.01,
                momentum: 0.9,
                ..Sgd::default()
            }),
            config(&[50], 32),
        )
        .unwrap();
        let mut losses = Vec::new();
        for step in 0..steps {
            let (x, y) = batch(step % 8, 32, 50, 10);
            model.train_step(&x, &y).unwrap();
            if step % 10 == 9 {
                losses.push(model.read_metrics().unwrap().last_loss);
            }
        }
        (losses, model)
    };
    let (a, _) = run(60);
    let (b, mut model) = run(60);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&a),
        bits(&b),
        "same seed, same adapter: identical losses"
    );

    let before = own.counters();
    let resident = model.resident_bytes();
    let (x, y) = batch(1, 32, 50, 10);
    for _ in 0..100 {
        model.eval();
        model.eval_step(&x, &y).unwrap();
        model.train();
        model.train_step(&x, &y).unwrap();
    }
    for _ in 0..1000 {
        model.train_step(&x, &y).unwrap();
    }
    model.synchronize().unwrap();
    assert_eq!(
        own.counters(),
        before,
        "no buffer or pipeline created by steps or mode switches"
    );
    assert_eq!(model.resident_bytes(), resident);
}

#[test]
fn resident_batches_train_and_evaluate_exactly_as_uploaded_ones() {
    // A context of its own: the counters below must see only this test's buffers.
    let own = std::sync::Arc::new(wgnn::gpu::GpuContext::new().unwrap());
    let new_model = || {
        Model::new(
            own.clone(),
            Sequential::lecture_mlp(50, 10, 0.2),
            Loss::default(),
            Optimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.9,
                ..Sgd::default()
            }),
            config(&[50], 32),
        )
        .unwrap()
    };
    let (mut host, mut resident, mut second) = (new_model(), new_model(), new_model());
    // The batch size, and a partial batch with a plan of its own.
    let batches: Vec<_> = (0..3)
        .map(|k| batch(k, if k == 2 { 27 } else { 32 }, 50, 10))
        .collect();
    let uploaded: Vec<_> = batches
        .iter()
        .map(|(x, y)| resident.upload_batch(x, y).unwrap())
        .collect();
    let bits = |m: &mut Model| {
        let s = m.state().unwrap();
        let metrics = m.read_metrics().unwrap();
        let mut words: Vec<u32> = s.params.iter().flatten().map(|v| v.to_bits()).collect();
        words.push(metrics.last_loss.to_bits());
        words
    };
    for step in 0..12 {
        let k = step % 3;
        let (x, y) = &batches[k];
        host.train_step(x, y).unwrap();
        resident.train_step_on(&uploaded[k]).unwrap();
        // The same resident batches on a second model: its own dispatches, its own state.
        second.train_step_on(&uploaded[k]).unwrap();
    }
    let want = bits(&mut host);
    assert_eq!(
        bits(&mut resident),
        want,
        "resident batches train as uploaded ones"
    );
    assert_eq!(bits(&mut second), want, "a batch shared by two models");

    for model in [&mut host, &mut resident] {
        model.eval();
    }
    for (k, (x, y)) in batches.iter().enumerate() {
        host.eval_step(x, y).unwrap();
        resident.eval_step_on(&uploaded[k]).unwrap();
    }
    assert_eq!(
        bits(&mut resident),
        bits(&mut host),
        "eval on resident batches"
    );

    // Once a batch has run in a mode, its steps create nothing.
    resident.train();
    resident.train_step_on(&uploaded[0]).unwrap();
    resident.synchronize().unwrap();
    let before = own.counters();
    for _ in 0..20 {
        resident.train_step_on(&uploaded[0]).unwrap();
    }
    resident.synchronize().unwrap();
    assert_eq!(own.counters(), before);
}

#[test]
fn a_training_step_is_one_submit_without_blocking_readback() {
    let mut model = Model::new(
        ctx(),
        Sequential::lecture_mlp(50, 10, 0.2),
        Loss::default(),
        Optimizer::Sgd(Sgd::default()),
        config(&[50], 32),
    )
    .unwrap();
    let report = model.report(Mode::Train);
    assert_eq!(
        (report.submits_per_step, report.blocking_readbacks_per_step),
        (1, 0)
    );
    // Forward: 3 matmuls, 2 batch norms (ReLU and dropout folded in), the loss (which folds
    // the batch into the metrics totals itself). Backward: the weight and input gradients of
    // the last two Linears, the weight gradient of the first, 2 batch norms; 1 optimizer
    // step. Each Linear's bias gradient is summed by the node that wrote its dy (the loss, a
    // batch norm's backward), and at 32 rows a batch norm is one pass per direction with
    // either kernel family.
    let expected = 6 + 7 + 1;
    assert_eq!(report.dispatches_per_step, expected, "{report}");
    assert!(report.total_bytes > report.parameter_bytes);
    let start = model.counters();
    let (x, y) = batch(3, 32, 50, 10);
    for _ in 0..10 {
        model.train_step(&x, &y).unwrap();
    }
    let end = model.counters();
    assert_eq!(end.submits - start.submits, 10);
    assert_eq!(end.blocking_readbacks, start.blocking_readbacks);
    // Metrics come back asynchronously when asked.
    model.request_metrics();
    model.train_step(&x, &y).unwrap();
    let mut totals = None;
    for _ in 0..10_000 {
        totals = model.poll_metrics().unwrap();
        if totals.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let totals = totals.expect("metrics arrive");
    assert_eq!(totals.batches, 11);
    assert_eq!(totals.count, 11.0 * 32.0);
    assert_eq!(
        model.counters().blocking_readbacks,
        start.blocking_readbacks
    );
}

#[test]
fn bad_batches_are_typed_errors() {
    let mut model = Model::new(
        ctx(),
        Sequential::lecture_mlp(8, 3, 0.0),
        Loss::default(),
        Optimizer::Sgd(Sgd::default()),
        config(&[8], 4),
    )
    .unwrap();
    let err = model.train_step(&[0.0; 8], &[0]).unwrap_err().to_string();
    assert!(
        err.contains("1 sample") && err.contains("drop_last"),
        "{err}"
    );
    let err = model
        .train_step(&[0.0; 15], &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("need 16 values") && err.contains("got 15"),
        "{err}"
    );
    let err = model
        .train_step(&[0.0; 16], &[0, 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target 3 at index 1") && err.contains("3 classes"),
        "{err}"
    );
    model.eval();
    assert!(
        model
            .train_step(&[0.0; 16], &[0, 1])
            .unwrap_err()
            .to_string()
            .contains("train mode")
    );
    assert!(model.predict(&[0.0; 7]).is_err());
}

#[test]
fn a_resident_batch_is_checked_against_the_model_that_runs_it() {
    let model = |features: usize, classes: usize, loss: Loss| {
        Model::new(
            ctx(),
            Sequential::lecture_mlp(features, classes, 0.0),
            loss,
            Optimizer::Sgd(Sgd::default()),
            config(&[features], 4),
        )
        .unwrap()
    };
    let uploader = model(8, 3, Loss::default());
    let batch = uploader.upload_batch(&[0.5; 16], &[0, 2]).unwrap();

    let mut wider = model(9, 3, Loss::default());
    let err = wider.train_step_on(&batch).unwrap_err().to_string();
    assert!(
        err.contains("8 features") && err.contains("takes 9"),
        "{err}"
    );

    let mut fewer_classes = model(8, 2, Loss::default());
    let err = fewer_classes.train_step_on(&batch).unwrap_err().to_string();
    assert!(err.contains("target 2 at index 1"), "{err}");

    let mut binary = model(8, 1, wgnn::nn::BCEWithLogitsLoss::new().into());
    let err = binary.train_step_on(&batch).unwrap_err().to_string();
    assert!(
        err.contains("holds class indices") && err.contains("reads 0/1 targets"),
        "{err}"
    );

    // A model of the same shape runs it.
    let mut twin = model(8, 3, Loss::default());
    twin.train_step_on(&batch).unwrap();
}

/// A model without parameters (a lone Dropout before the loss) trains and evaluates: its
/// optimizer step has nothing to update.
#[test]
fn a_model_without_parameters_runs() {
    let model = Sequential::new()
        .append(Flatten)
        .append(wgnn::nn::Dropout::new(0.5));
    let mut m = Model::new(
        ctx(),
        model,
        CrossEntropyLoss::new(),
        Optimizer::Sgd(Sgd::default()),
        config(&[4], 3),
    )
    .unwrap();
    let x = vec![1.0f32; 12];
    m.train_step(&x, &[0, 1, 2]).unwrap();
    m.eval();
    assert_eq!(m.predict(&x).unwrap(), x);
}
