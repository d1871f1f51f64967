//! What a layer sees while it lowers itself into nodes: the shape PyTorch would see at its
//! point of the Sequential, the value holding it, and the graph so far.

use std::sync::Arc;

use super::{
    BufferId, BufferKind, BufferPart, BuildError, ConstId, Constant, Init, Node, Op, Param,
    ParamId, Phase, StateBuffer, Value, ValueId, ValueKind,
};

/// What a layer's [`Module::lower`](crate::nn::Module::lower) sees and extends: the shape
/// PyTorch would see at this point of the Sequential, the value holding it, and the graph so
/// far. Errors it makes name the layer (index and kind).
pub struct Lowering {
    pub batch_size: usize,
    shape: Vec<usize>,
    x: ValueId,
    index: usize,
    kind: &'static str,
    values: Vec<Value>,
    nodes: Vec<Node>,
    params: Vec<Param>,
    buffers: Vec<StateBuffer>,
    constants: Vec<Constant>,
}

/// What lowering made, for the graph builder to finish.
pub(crate) struct Lowered {
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub params: Vec<Param>,
    pub buffers: Vec<StateBuffer>,
    pub constants: Vec<Constant>,
}

impl Lowering {
    /// An empty graph taking batches of `batch_size` samples shaped `sample_shape`, whose
    /// input value is its first.
    pub(crate) fn new(batch_size: usize, sample_shape: &[usize]) -> Self {
        let mut b = Self {
            batch_size,
            // The logical shape PyTorch would see; values themselves are always [N, features].
            shape: std::iter::once(batch_size)
                .chain(sample_shape.iter().copied())
                .collect(),
            x: ValueId(0),
            index: 0,
            kind: "",
            values: Vec::new(),
            nodes: Vec::new(),
            params: Vec::new(),
            buffers: Vec::new(),
            constants: Vec::new(),
        };
        let features = sample_shape.iter().product();
        b.x = b.value(batch_size, features, ValueKind::Input);
        b
    }

    /// From now on, nodes, parameters and errors belong to layer `index` (of `kind`).
    pub(crate) fn enter_layer(&mut self, index: usize, kind: &'static str) {
        (self.index, self.kind) = (index, kind);
    }

    /// Appends a node that belongs to no layer (the preprocessing stage, the loss).
    pub(crate) fn push_node(&mut self, node: Node) {
        self.nodes.push(node);
    }

    /// Everything lowered so far.
    pub(crate) fn finish(self) -> Lowered {
        Lowered {
            values: self.values,
            nodes: self.nodes,
            params: self.params,
            buffers: self.buffers,
            constants: self.constants,
        }
    }

    /// The logical shape of the layer's input, batch first (\[N, 3, 32, 32\], \[N, 64\]).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The value holding the layer's input.
    pub fn input(&self) -> ValueId {
        self.x
    }

    /// The layer's index in the Sequential (its state_dict prefix, its dropout stream).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The features of a flat input \[N, features\], or an error asking for a Flatten.
    pub fn flat_features(&self) -> Result<usize, BuildError> {
        match self.shape[..] {
            [_, features] => Ok(features),
            _ => Err(self.shape_error("[N, features] (add a Flatten before it)".into())),
        }
    }

    /// Checks that the input is \[N, features\], naming both shapes otherwise.
    pub fn expect_features(&self, features: usize) -> Result<(), BuildError> {
        match self.shape[..] {
            [_, f] if f == features => Ok(()),
            [_, _] => Err(self.shape_error(format!("[N, {features}]"))),
            _ => Err(self.shape_error(format!("[N, {features}] (add a Flatten before it)"))),
        }
    }

    /// An error for an input of the wrong shape: what was `expected`, and what came.
    pub fn shape_error(&self, expected: String) -> BuildError {
        BuildError::Shape {
            index: self.index,
            kind: self.kind,
            expected,
            found: self.shape.clone(),
        }
    }

    /// An error in the layer's own settings.
    pub fn error(&self, message: String) -> BuildError {
        BuildError::Layer {
            index: self.index,
            kind: self.kind,
            message,
        }
    }

    /// A learnable parameter of this layer, named `"{index}.{name}"` as in its state_dict.
    pub fn param(&mut self, name: &str, shape: Vec<usize>, init: Init) -> ParamId {
        self.params.push(Param {
            name: format!("{}.{name}", self.index),
            shape,
            layer: self.index,
            init,
        });
        ParamId(self.params.len() - 1)
    }

    /// A state buffer of this layer (PyTorch's registered buffers: running statistics), its
    /// parts given as (state_dict name, shape, initial value) and laid out back to back.
    pub fn buffer(&mut self, kind: BufferKind, parts: &[(&str, Vec<usize>, f32)]) -> BufferId {
        let parts = parts
            .iter()
            .map(|(name, shape, init)| BufferPart {
                name: format!("{}.{name}", self.index),
                shape: shape.clone(),
                init: *init,
            })
            .collect();
        self.buffers.push(StateBuffer {
            layer: self.index,
            kind,
            parts,
        });
        BufferId(self.buffers.len() - 1)
    }

    /// A fixed tensor its ops read (uploaded once, shared by every plan).
    pub fn constant(&mut self, name: &str, data: Vec<f32>) -> ConstId {
        self.constants.push(Constant {
            name: name.to_string(),
            data: Arc::new(data),
        });
        ConstId(self.constants.len() - 1)
    }

    /// A new value of the batch's rows and `cols` columns.
    pub fn activation(&mut self, cols: usize) -> ValueId {
        self.value(self.batch_size, cols, ValueKind::Activation)
    }

    /// A new value a forward saves for its backward, [rows, cols].
    pub fn saved(&mut self, rows: usize, cols: usize) -> ValueId {
        self.value(rows, cols, ValueKind::Saved)
    }

    /// Appends a forward node of this layer.
    pub fn push(&mut self, op: impl Op, inputs: Vec<ValueId>, outputs: Vec<ValueId>) {
        self.nodes.push(Node {
            op: Arc::new(op),
            inputs,
            outputs,
            phase: Phase::Forward,
            layer: Some(self.index),
        });
    }

    /// The layer's output: `value`, of logical shape `shape`.
    pub fn set_output(&mut self, value: ValueId, shape: Vec<usize>) {
        self.x = value;
        self.shape = shape;
    }

    /// A new value [rows, cols] holding `kind`.
    pub fn value(&mut self, rows: usize, cols: usize, kind: ValueKind) -> ValueId {
        self.values.push(Value { rows, cols, kind });
        ValueId(self.values.len() - 1)
    }
}
