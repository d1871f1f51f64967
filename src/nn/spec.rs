//! Model spec strings, mirroring `nn.Sequential`: a comma-separated list of layers such as
//! `flatten,linear:64,bn,relu,dropout:0.2,linear:32,bn,relu,dropout:0.2,linear:10`.
//!
//! | token | layer |
//! |---|---|
//! | `flatten` | `nn.Flatten()` |
//! | `linear:N` (`linear:N:nobias`) | `nn.Linear(in, N)`, `in` taken from the previous layer or the data |
//! | `bn` (`batchnorm`) | `nn.BatchNorm1d(features)` (eps 1e-5, momentum 0.1) |
//! | `bn:EPS` / `bn:EPS:MOMENTUM` | `nn.BatchNorm1d(features, eps=EPS, momentum=MOMENTUM)`, MOMENTUM `none` for `momentum=None` |
//! | `dropout` (`dropout:P`) | `nn.Dropout(P)`, P = 0.5 by default as in PyTorch |
//! | `relu` | `nn.ReLU()` |
//! | `sigmoid` | `nn.Sigmoid()` |
//! | `tanh` | `nn.Tanh()` |
//! | `gelu` (`gelu:tanh`) | `nn.GELU()` (`nn.GELU(approximate='tanh')`) |
//! | `leaky_relu` (`leaky_relu:SLOPE`) | `nn.LeakyReLU(SLOPE)`, SLOPE = 0.01 by default |
//!
//! The activations' tokens come from their own modules ([`crate::ops::activation::TOKENS`]).

use super::{LAYER_TOKENS, Layer, Sequential, SpecInput};
use crate::ops::activation;

/// The lecture's MLP with dropout 0.2; the output size is the number of classes.
pub const LECTURE_SPEC: &str =
    "flatten,linear:64,bn,relu,dropout:0.2,linear:32,bn,relu,dropout:0.2,linear:10";

/// The most layers a model may have, from a spec or built in code. Every layer becomes a few
/// dispatches of each plan, each with its own bind group, and wgpu reports no limit on how
/// many descriptors a device can hold: lavapipe crashes inside its descriptor allocation near
/// 26,000 ReLUs. A thousand layers is far past any MLP this crate is for and builds its plans
/// in about 3 s on lavapipe.
pub const MAX_LAYERS: usize = 1024;

/// How much of a long spec an error message quotes.
const QUOTED_SPEC_CHARS: usize = 120;

/// A syntax or shape error in a model spec, pointing at the token.
#[derive(Debug, thiserror::Error)]
#[error("model spec {spec:?}: token {index} {token:?} at column {column}: {message}")]
pub struct SpecError {
    pub spec: String,
    /// 1-based position of the token in the list.
    pub index: usize,
    pub token: String,
    /// 1-based character column where the token starts.
    pub column: usize,
    pub message: String,
}

/// A spec as an error message quotes it: whole, or its start and its length.
fn quoted(spec: &str) -> String {
    match spec.char_indices().nth(QUOTED_SPEC_CHARS) {
        None => spec.to_string(),
        Some((end, _)) => format!("{}… ({} characters)", &spec[..end], spec.chars().count()),
    }
}

/// Builds the Sequential a spec describes for samples shaped `sample_shape`. A spec of more
/// than [`MAX_LAYERS`] layers is refused before any is parsed.
pub fn parse(spec: &str, sample_shape: &[usize]) -> Result<Sequential, SpecError> {
    let layers = spec.split(',').count();
    if layers > MAX_LAYERS {
        // Column of the first token past the limit.
        let column = spec
            .split(',')
            .take(MAX_LAYERS)
            .map(|t| t.chars().count() + 1)
            .sum::<usize>()
            + 1;
        return Err(SpecError {
            spec: quoted(spec),
            index: MAX_LAYERS + 1,
            token: spec
                .split(',')
                .nth(MAX_LAYERS)
                .unwrap_or("")
                .trim()
                .to_string(),
            column,
            message: format!("{layers} layers; a model has at most {MAX_LAYERS}"),
        });
    }
    let mut model = Sequential::new();
    // Features per sample as the next layer sees them; None while samples are not flat.
    let mut features = match sample_shape {
        [f] => Some(*f),
        _ => None,
    };
    let mut column = 1;
    if spec.trim().is_empty() {
        return Err(SpecError {
            spec: quoted(spec),
            index: 1,
            token: String::new(),
            column: 1,
            message: "the spec is empty; expected layers such as flatten,linear:10".into(),
        });
    }
    for (i, raw) in spec.split(',').enumerate() {
        let error = |message: String| SpecError {
            spec: quoted(spec),
            index: i + 1,
            token: raw.trim().to_string(),
            column: column + (raw.len() - raw.trim_start().len()),
            message,
        };
        let input = SpecInput {
            features,
            sample_shape,
        };
        let (layer, after) = parse_token(raw.trim(), &input).map_err(&error)?;
        features = after;
        model.push(layer);
        column += raw.chars().count() + 1;
    }
    Ok(model)
}

/// One token: a layer of [`LAYER_TOKENS`] or an activation of [`activation::TOKENS`].
fn parse_token(token: &str, input: &SpecInput<'_>) -> Result<(Layer, Option<usize>), String> {
    let mut parts = token.split(':');
    let name = parts.next().unwrap_or("").to_ascii_lowercase();
    let args: Vec<&str> = parts.collect();
    if name.is_empty() {
        return Err("empty token (two commas in a row?)".into());
    }
    if let Some(t) = LAYER_TOKENS
        .iter()
        .find(|t| t.names.contains(&name.as_str()))
    {
        return (t.parse)(&args, input);
    }
    match activation::parse_token(&name, &args) {
        // Element-wise: the features stay as they are.
        Some(parsed) => parsed.map(|a| (a.into(), input.features)),
        None => {
            let usages: Vec<&str> = LAYER_TOKENS
                .iter()
                .map(|t| t.usage)
                .chain(activation::TOKENS.iter().map(|t| t.usage))
                .collect();
            Err(format!(
                "unknown layer {name:?}; expected one of {}",
                usages.join(", ")
            ))
        }
    }
}

/// The spec string of a Sequential (the inverse of [`parse`]).
pub fn to_spec(model: &Sequential) -> String {
    model
        .layers()
        .iter()
        .map(Layer::spec)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BatchNorm1d, Dropout, Linear};

    #[test]
    fn lecture_spec_is_the_lecture_mlp() {
        let model = parse(LECTURE_SPEC, &[3, 32, 32]).unwrap();
        assert_eq!(model, Sequential::lecture_mlp(3072, 10, 0.2));
        assert_eq!(to_spec(&model), LECTURE_SPEC);
        assert_eq!(parse(&to_spec(&model), &[3, 32, 32]).unwrap(), model);
    }

    #[test]
    fn tabular_data_needs_no_flatten_and_options_parse() {
        let model = parse("linear:16:nobias,BN,relu,dropout,linear:1", &[30]).unwrap();
        assert_eq!(
            model.layers()[0],
            Layer::Linear(Linear::new(30, 16).without_bias())
        );
        assert_eq!(model.layers()[3], Layer::Dropout(Dropout::new(0.5)));
    }

    #[test]
    fn batch_norm_options_round_trip_through_the_spec() {
        let model = Sequential::new()
            .append(Linear::new(4, 3))
            .append(BatchNorm1d::new(3))
            .append(BatchNorm1d::new(3).eps(1e-3).momentum(Some(0.01)))
            .append(BatchNorm1d::new(3).momentum(None));
        let spec = to_spec(&model);
        assert_eq!(spec, "linear:3,bn,bn:0.001:0.01,bn:0.00001:none");
        assert_eq!(parse(&spec, &[4]).unwrap(), model);
        assert_eq!(
            parse("linear:3,bn:0.5", &[4]).unwrap().layers()[1],
            Layer::BatchNorm1d(BatchNorm1d::new(3).eps(0.5))
        );
        for (bad, needle) in [
            ("linear:3,bn:0", "positive"),
            ("linear:3,bn:x", "positive"),
            ("linear:3,bn:1e-5:2", "[0, 1] or none"),
            ("linear:3,bn:1e-5:0.1:3", "at most"),
        ] {
            let err = parse(bad, &[4]).unwrap_err();
            assert!(err.message.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn a_spec_past_the_layer_limit_is_refused_before_parsing_and_quoted_short() {
        let at_limit = vec!["relu"; MAX_LAYERS].join(",");
        assert_eq!(parse(&at_limit, &[4]).unwrap().layers().len(), MAX_LAYERS);
        // Two million layers: refused at once, and the message stays short.
        let huge = vec!["relu"; 2_000_000].join(",");
        let started = std::time::Instant::now();
        let err = parse(&huge, &[4]).unwrap_err();
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
        assert_eq!(err.index, MAX_LAYERS + 1);
        assert_eq!(err.column, 5 * MAX_LAYERS + 1);
        let text = err.to_string();
        assert!(
            text.contains("2000000 layers; a model has at most 1024"),
            "{text}"
        );
        assert!(text.contains("(9999999 characters)"), "{text}");
        assert!(text.len() < 400, "{}", text.len());
        let over = vec!["relu"; MAX_LAYERS + 1].join(",");
        assert!(parse(&over, &[4]).is_err());
    }

    #[test]
    fn errors_point_at_the_token() {
        let err = parse("flatten,lineer:64,relu", &[784]).unwrap_err();
        assert_eq!(
            (err.index, err.column, err.token.as_str()),
            (2, 9, "lineer:64")
        );
        assert!(
            err.to_string().contains("unknown layer \"lineer\""),
            "{err}"
        );
        let err = parse("flatten, linear:x", &[784]).unwrap_err();
        assert_eq!((err.index, err.column), (2, 10));
        assert!(err.message.contains("positive integer"), "{err}");
        let err = parse("linear:10", &[1, 28, 28]).unwrap_err();
        assert!(err.message.contains("put flatten first"), "{err}");
        let err = parse("flatten,dropout:1.5", &[4]).unwrap_err();
        assert!(err.message.contains("between 0 and 1"), "{err}");
        assert!(
            parse("flatten,,relu", &[4])
                .unwrap_err()
                .message
                .contains("empty token")
        );
        assert!(parse("", &[4]).is_err());
        assert!(
            parse("relu:3", &[4])
                .unwrap_err()
                .message
                .contains("takes no argument")
        );
    }
}
