//! `torch.nn.Dropout(p)`: zeroes elements with probability p in training (scaling the rest by
//! 1/(1-p)), the identity in eval. p = 0 lowers to nothing; after BatchNorm1d → ReLU the
//! batch norm absorbs it. Its graph ops are [`crate::ops::dropout`]'s.

use super::{Layer, LayerToken, Module, SpecInput};
use crate::graph::{BuildError, Lowering};
use crate::ops::dropout::{DropProbability, DropoutOp};

/// `torch.nn.Dropout(p)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of zeroing an element, in [0, 1] (PyTorch's default 0.5; the spec's
    /// `dropout` without a value too).
    pub p: f32,
}

impl Dropout {
    /// `nn.Dropout(p)`.
    pub fn new(p: f32) -> Self {
        Self { p }
    }
}

pub(super) const TOKEN: LayerToken = LayerToken {
    names: &["dropout"],
    usage: "dropout[:P]",
    parse,
};

fn parse(args: &[&str], input: &SpecInput<'_>) -> Result<(Layer, Option<usize>), String> {
    let p = match args {
        [] => 0.5,
        [p] => {
            let value: f32 = p
                .parse()
                .map_err(|_| format!("dropout probability {p:?} is not a number"))?;
            if !(0.0..=1.0).contains(&value) {
                return Err(format!(
                    "dropout probability has to be between 0 and 1, but got {value}"
                ));
            }
            value
        }
        _ => return Err("dropout takes one probability, e.g. dropout:0.2".into()),
    };
    Ok((Dropout::new(p).into(), input.features))
}

impl Module for Dropout {
    fn kind(&self) -> &'static str {
        "Dropout"
    }

    fn spec(&self) -> String {
        format!("dropout:{}", self.p)
    }

    fn state_names(&self) -> &'static [&'static str] {
        &[]
    }

    fn lower(&self, cx: &mut Lowering) -> Result<(), BuildError> {
        let p = DropProbability::new(self.p).map_err(|e| cx.error(e.to_string()))?;
        let features = cx.flat_features()?;
        // p = 0 is the identity in both modes: no node at all.
        if p.get() > 0.0 {
            let (x, y) = (cx.input(), cx.activation(features));
            let op = DropoutOp {
                p,
                stream: cx.index() as u32,
            };
            cx.push(op, vec![x], vec![y]);
            cx.set_output(y, cx.shape().to_vec());
        }
        Ok(())
    }
}
