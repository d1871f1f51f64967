//! Rust mirrors of WGSL uniform structs, declared through [`uniform_struct!`] so that a test
//! can hold each one against naga's reflection of the shader: the same member names in the
//! same order, at the same offsets, of the same sizes (fields named `_pad…` are the Rust
//! side's tail padding and are not members of the WGSL struct).

/// A `#[repr(C)]` struct that mirrors a WGSL uniform struct.
pub trait UniformLayout: bytemuck::Pod {
    /// (name, byte offset, byte size) of every field, padding included, in order.
    fn fields() -> Vec<(&'static str, usize, usize)>;
}

/// Declares a `#[repr(C)]`, `Pod` struct mirroring a WGSL uniform struct, and its
/// [`UniformLayout`].
macro_rules! uniform_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($field_vis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($field_vis $field: $ty),*
        }

        impl $crate::gpu::UniformLayout for $name {
            fn fields() -> Vec<(&'static str, usize, usize)> {
                vec![$((
                    stringify!($field),
                    std::mem::offset_of!($name, $field),
                    std::mem::size_of::<$ty>(),
                )),*]
            }
        }
    };
}
pub(crate) use uniform_struct;

/// Panics unless `T` mirrors the uniform struct at `@group(0) @binding(binding)` of
/// `shader`, as naga lays it out; or, for a storage binding holding an array of structs (one
/// record per member: the steps), the array's element, with `T`'s size as its stride.
#[cfg(test)]
pub(crate) fn assert_mirrors<T: UniformLayout>(shader: super::Shader, binding: u32) {
    let module = naga::front::wgsl::parse_str(&shader.source())
        .unwrap_or_else(|e| panic!("{shader:?} does not parse: {e}"));
    let var = module
        .global_variables
        .iter()
        .map(|(_, v)| v)
        .find(|v| {
            matches!(
                v.space,
                naga::AddressSpace::Uniform | naga::AddressSpace::Storage { .. }
            ) && v
                .binding
                .as_ref()
                .is_some_and(|b| b.group == 0 && b.binding == binding)
        })
        .unwrap_or_else(|| panic!("{shader:?} has no uniform or storage at binding {binding}"));
    let ty = match &module.types[var.ty].inner {
        naga::TypeInner::Array { base, stride, .. } => {
            assert_eq!(
                *stride as usize,
                std::mem::size_of::<T>(),
                "{shader:?} binding {binding}: the records' stride"
            );
            *base
        }
        _ => var.ty,
    };
    let naga::TypeInner::Struct { members, span } = &module.types[ty].inner else {
        panic!("{shader:?} binding {binding} is not a struct");
    };
    let wgsl: Vec<(String, usize, usize)> = members
        .iter()
        .map(|m| {
            let size = module.types[m.ty].inner.size(module.to_ctx()) as usize;
            (m.name.clone().unwrap_or_default(), m.offset as usize, size)
        })
        .collect();
    let rust: Vec<(String, usize, usize)> = T::fields()
        .into_iter()
        .filter(|(name, _, _)| !name.starts_with("_pad"))
        .map(|(name, offset, size)| (name.to_string(), offset, size))
        .collect();
    let type_name = std::any::type_name::<T>();
    assert_eq!(
        rust, wgsl,
        "{type_name} does not mirror {shader:?}'s uniform at binding {binding} (name, offset, size)"
    );
    // A uniform binding is the struct's size rounded up to 16 bytes.
    let needed = (*span as usize).next_multiple_of(16);
    assert_eq!(
        std::mem::size_of::<T>(),
        needed,
        "{type_name}: {} bytes, but {shader:?}'s uniform takes {needed}",
        std::mem::size_of::<T>()
    );
}
