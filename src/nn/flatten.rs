//! `torch.nn.Flatten()`: [N, d1, d2, …] → [N, d1·d2·…]. Values are stored flat already, so
//! it changes only the shape the next layer sees.

use super::{Layer, LayerToken, Module, SpecInput};
use crate::graph::{BuildError, Lowering};

/// `torch.nn.Flatten()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten;

pub(super) const TOKEN: LayerToken = LayerToken {
    names: &["flatten"],
    usage: "flatten",
    parse,
};

fn parse(args: &[&str], input: &SpecInput<'_>) -> Result<(Layer, Option<usize>), String> {
    input.no_args("flatten", args)?;
    let features = input
        .features
        .unwrap_or_else(|| input.sample_shape.iter().product());
    Ok((Flatten.into(), Some(features)))
}

impl Module for Flatten {
    fn kind(&self) -> &'static str {
        "Flatten"
    }

    fn spec(&self) -> String {
        "flatten".into()
    }

    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        let shape = vec![cx.batch_size, cx.shape()[1..].iter().product()];
        cx.set_output(cx.input(), shape);
        Ok(())
    }
}
