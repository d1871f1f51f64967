//! `.npy` files exactly as NumPy writes them (tests/fixtures/npy/, written by
//! scripts/npy_fixtures.py): uint8 pixels, both byte orders, Fortran order, a refused dtype.

use std::path::PathBuf;

use wgnn::data::{DataError, NpyArray, Split, embedded, npy};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/npy")
        .join(name)
}

fn load(name: &str) -> NpyArray {
    npy::load(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The script's index grid in C order: the last axis counts ones, the one before tens, the
/// one before hundreds.
fn c_index_grid(shape: &[usize]) -> Vec<f32> {
    let len: usize = shape.iter().product();
    (0..len)
        .map(|mut flat| {
            let (mut value, mut weight) = (0, 1);
            for &d in shape.iter().rev() {
                value += weight * (flat % d);
                flat /= d;
                weight *= 10;
            }
            value as f32
        })
        .collect()
}

#[test]
fn uint8_pixels_are_scaled_as_the_image_loaders_scale_them() {
    let a = load("u1.npy");
    assert_eq!(a.shape, vec![2, 3]);
    let bytes = [0u8, 1, 127, 128, 254, 255];
    let expected: Vec<f32> = bytes.iter().map(|&b| f32::from(b) / 255.0).collect();
    assert_eq!(a.data, expected);
    assert_eq!((a.data[0], a.data[5]), (0.0, 1.0));

    // The MNIST digits saved as uint8 read exactly as the IDX loader reads them.
    let digits = load("mnist_test_u1.npy");
    assert_eq!(digits.shape, vec![8, 28, 28]);
    let test = embedded::mnist(Split::Test).unwrap();
    assert_eq!(digits.data, test.features[..8 * 784]);
}

#[test]
fn both_byte_orders() {
    let a = load("f4_be.npy");
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, vec![1.5, -2.0, 0.25, 1e-3, 3e4, -0.0]);
    assert!(a.data[5].is_sign_negative(), "-0.0 keeps its sign");

    let a = load("f8_le.npy");
    assert_eq!(a.shape, vec![3]);
    assert_eq!(a.data, vec![0.1f64 as f32, -1.25, 1e10]);

    let a = load("i2_be.npy");
    assert_eq!((a.shape, a.data), (vec![3], vec![-2.0, 256.0, 32767.0]));
    let a = load("i8_le.npy");
    assert_eq!(
        (a.shape, a.data),
        (vec![1, 2], vec![-7.0, (1u64 << 40) as f32])
    );
}

#[test]
fn fortran_order_arrays_come_back_in_c_order() {
    for (name, shape) in [
        ("fortran_2d.npy", vec![2, 3]),
        ("fortran_3d.npy", vec![2, 3, 4]),
        ("fortran_3d_i4_be.npy", vec![2, 3, 4]),
    ] {
        let a = load(name);
        assert_eq!(a.shape, shape, "{name}");
        assert_eq!(a.data, c_index_grid(&shape), "{name}");
    }
    // Element (1, 2, 3) of the 3-d grid.
    assert_eq!(load("fortran_3d.npy").data[12 + 2 * 4 + 3], 123.0);
}

#[test]
fn an_unsupported_dtype_is_a_typed_error_naming_the_file() {
    let path = fixture("bad_dtype.npy");
    let err = npy::load(&path).unwrap_err();
    let DataError::UnsupportedDtype {
        path: named, found, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((named, found.as_str()), (&path, "\"<c8\""));
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}: unsupported dtype \"<c8\"", path.display())),
        "{text}"
    );
    assert!(
        text.contains("supported: floats f4 and f8") && text.contains("complex"),
        "{text}"
    );
}
