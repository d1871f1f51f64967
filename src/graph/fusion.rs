//! Fusion as a rule over the graph: a node whose output 0 is read by exactly one node, that
//! node having it as its only input, becomes one node when the producer's [`Op::absorb`]
//! accepts the consumer. The pair's intermediate value then has no writer and no slot,
//! unless the consumer writes no value (the metrics, which the loss absorbs): the fused node
//! then keeps the producer's outputs.

use super::{Node, ValueId};

/// Fuses every producer/consumer pair its ops allow, repeatedly (BatchNorm absorbs its ReLU,
/// then the Dropout after it; the loss its metrics). The model's output, which the loss
/// reads, is the last layer's consumer's output and so survives.
pub fn fuse(nodes: &mut Vec<Node>) {
    let mut i = 0;
    while i < nodes.len() {
        let Some(&y) = nodes[i].outputs.first() else {
            i += 1;
            continue;
        };
        let readers: Vec<usize> = readers_of(nodes, y).collect();
        let fused = match readers.as_slice() {
            [j] if nodes[*j].inputs == [y] => {
                nodes[i].op.absorb(nodes[*j].op.as_ref()).map(|op| (*j, op))
            }
            _ => None,
        };
        match fused {
            Some((j, op)) => {
                let consumer: Node = nodes.remove(j);
                let producer = &mut nodes[i];
                producer.op = op;
                if let Some(&out) = consumer.outputs.first() {
                    producer.outputs[0] = out;
                }
                // Stay on this node: it may absorb the next one too.
            }
            None => i += 1,
        }
    }
}

/// Hands each column sum a node writes of its input 0 ([`Op::yield_column_sum`](super::Op::yield_column_sum)) to the node
/// that wrote that input, where it can sum it on the way ([`Op::absorb_column_sum`](super::Op::absorb_column_sum)): batch
/// norm's backward then writes the bias gradient of the Linear before it, and so does the
/// loss for the last Linear; the Linear's gradient node keeps only its weight product. Both
/// sum the same values, so the gradient is unchanged.
pub fn hand_off_column_sums(nodes: &mut [Node]) {
    for j in 0..nodes.len() {
        let Some((param, rest)) = nodes[j].op.yield_column_sum() else {
            continue;
        };
        let Some(&input) = nodes[j].inputs.first() else {
            continue;
        };
        let Some((i, output)) = nodes.iter().enumerate().find_map(|(i, n)| {
            let output = n.outputs.iter().position(|&v| v == input)?;
            Some((i, output))
        }) else {
            continue;
        };
        if let Some(with_sum) = nodes[i].op.absorb_column_sum(param, output) {
            nodes[i].op = with_sum;
            nodes[j].op = rest;
        }
    }
}

fn readers_of(nodes: &[Node], v: ValueId) -> impl Iterator<Item = usize> + '_ {
    nodes
        .iter()
        .enumerate()
        .filter(move |(_, n)| n.inputs.contains(&v))
        .map(|(j, _)| j)
}
