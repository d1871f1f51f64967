//! The model on the CPU reference executor: the same graph, state and seed, run through
//! every op's plain-Rust reference (the oracle of the tests, the baseline of the benchmarks).

use crate::error::Result;
use crate::exec::cpu::CpuExecutor;

use super::Model;

impl Model {
    /// A CPU reference executor starting from this model's current state (downloaded:
    /// blocking), with its graphs, seed and preprocessing; it builds the graph at any other
    /// batch size it meets from the model's own layers, loss and optimizer.
    pub fn reference_executor(&mut self) -> Result<CpuExecutor> {
        let state = self.state()?;
        let (sequential, loss, optimizer) = (
            self.sequential.clone(),
            self.loss.clone(),
            *self.optimizer(),
        );
        let (shape, preprocess) = (self.config.sample_shape.clone(), self.preprocess.clone());
        let build = Box::new(move |rows| {
            crate::nn::build_with(
                &sequential,
                &loss,
                &optimizer,
                &shape,
                rows,
                preprocess.as_ref(),
            )
        });
        Ok(CpuExecutor::new(
            build,
            self.graph().clone(),
            state,
            self.config.seed,
        ))
    }
}
