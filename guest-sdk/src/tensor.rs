//! Tensor helpers: build tensors from typed slices, read them back as `f32`
//! whatever their element type, and check shapes.

use crate::{Dtype, ItemError, Tensor};

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::Fp16 | Dtype::Bf16 => 2,
            Dtype::Fp32 | Dtype::I32 => 4,
            Dtype::Fp64 | Dtype::I64 => 8,
        }
    }
}

/// Element types a [`Tensor`] can be built from.
pub trait Element: Copy {
    /// The tensor element type of `Self`.
    const DTYPE: Dtype;
    /// Append `self` to `out`, little-endian (the tensor data layout).
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: Dtype = Dtype::$d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(f32, Fp32);
element!(f64, Fp64);
element!(u8, U8);
element!(i32, I32);
element!(i64, I64);

impl Tensor {
    /// A tensor of `values` with `shape` (row-major). Panics if the shape does
    /// not hold exactly `values.len()` elements: that is a bug in the plugin.
    pub fn new<T: Element>(name: impl Into<String>, shape: &[u32], values: &[T]) -> Tensor {
        let count: usize = shape.iter().map(|&d| d as usize).product();
        assert_eq!(
            count,
            values.len(),
            "shape {shape:?} does not hold {} values",
            values.len()
        );
        let mut data = Vec::with_capacity(values.len() * T::DTYPE.size());
        for &v in values {
            v.write_le(&mut data);
        }
        Tensor {
            name: name.into(),
            dtype: T::DTYPE,
            shape: shape.to_vec(),
            data,
        }
    }

    /// A `f32` tensor; see [`Tensor::new`].
    pub fn from_f32(name: impl Into<String>, shape: &[u32], values: &[f32]) -> Tensor {
        Tensor::new(name, shape, values)
    }

    /// Number of elements the shape describes; `usize::MAX` if that does not
    /// fit in a `usize` (a shape from outside may claim anything: on wasm32,
    /// `[65536, 65536]` already does not).
    pub fn element_count(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .unwrap_or(usize::MAX)
    }

    /// Check that `data` holds exactly the elements the shape and dtype describe.
    pub fn validate(&self) -> Result<(), ItemError> {
        let Some(expected) = self.element_count().checked_mul(self.dtype.size()) else {
            return Err(ItemError::invalid(format!(
                "tensor `{}`: shape {:?} of {:?} describes more bytes than memory holds",
                self.name, self.shape, self.dtype
            )));
        };
        if self.data.len() != expected {
            return Err(ItemError::invalid(format!(
                "tensor `{}`: shape {:?} of {:?} needs {expected} bytes, got {}",
                self.name,
                self.shape,
                self.dtype,
                self.data.len()
            )));
        }
        Ok(())
    }

    /// Check the shape; `None` in `expected` accepts any size on that axis.
    pub fn expect_shape(&self, expected: &[Option<u32>]) -> Result<(), ItemError> {
        let fits = self.shape.len() == expected.len()
            && self
                .shape
                .iter()
                .zip(expected)
                .all(|(&d, e)| e.is_none_or(|e| e == d));
        if fits {
            Ok(())
        } else {
            Err(ItemError::invalid(format!(
                "tensor `{}` has shape {:?}, expected {:?} (None = any)",
                self.name, self.shape, expected
            )))
        }
    }

    /// The elements as `f32`, converted from whatever the dtype is.
    pub fn to_f32(&self) -> Result<Vec<f32>, ItemError> {
        self.validate()?;
        let d = &self.data;
        Ok(match self.dtype {
            Dtype::Fp32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::Fp64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::Fp16 => d
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => d
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_keeps_values_and_shape() {
        let t = Tensor::from_f32("x", &[2, 2], &[1.0, -2.5, 3.25, 0.0]);
        assert_eq!(t.dtype, Dtype::Fp32);
        assert_eq!(t.data.len(), 16);
        assert_eq!(t.to_f32().unwrap(), vec![1.0, -2.5, 3.25, 0.0]);
    }

    #[test]
    fn converts_every_integer_and_float_dtype_to_f32() {
        assert_eq!(
            Tensor::new("u", &[3], &[0u8, 7, 255]).to_f32().unwrap(),
            vec![0.0, 7.0, 255.0]
        );
        assert_eq!(
            Tensor::new("i", &[2], &[-3i64, 9]).to_f32().unwrap(),
            vec![-3.0, 9.0]
        );
        assert_eq!(
            Tensor::new("d", &[1], &[0.5f64]).to_f32().unwrap(),
            vec![0.5]
        );
        let h = Tensor {
            name: "h".into(),
            dtype: Dtype::Fp16,
            shape: vec![1],
            data: half::f16::from_f32(1.5).to_le_bytes().to_vec(),
        };
        assert_eq!(h.to_f32().unwrap(), vec![1.5]);
    }

    #[test]
    fn truncated_data_is_an_invalid_input_naming_the_tensor() {
        let mut t = Tensor::from_f32("pixels", &[4], &[0.0; 4]);
        t.data.pop();
        match t.to_f32() {
            Err(ItemError::InvalidInput(m)) => {
                assert!(m.contains("pixels") && m.contains("15"), "{m}")
            }
            other => panic!("expected invalid input, got {other:?}"),
        }
    }

    #[test]
    fn a_shape_too_large_to_count_is_an_invalid_input_not_an_overflow() {
        for shape in [vec![u32::MAX; 3], vec![1 << 16, 1 << 16, 1 << 16, 1 << 16]] {
            for dtype in [Dtype::U8, Dtype::Fp32] {
                let t = Tensor {
                    name: "huge".into(),
                    dtype,
                    shape: shape.clone(),
                    data: Vec::new(),
                };
                match t.to_f32() {
                    Err(ItemError::InvalidInput(m)) => assert!(m.contains("huge"), "{m}"),
                    other => panic!("expected invalid input, got {other:?}"),
                }
            }
        }
        // A product past usize::MAX / size, but not past usize::MAX.
        let t = Tensor {
            name: "x".into(),
            dtype: Dtype::Fp64,
            shape: vec![u32::MAX, u32::MAX],
            data: Vec::new(),
        };
        assert!(matches!(t.validate(), Err(ItemError::InvalidInput(_))));
    }

    #[test]
    fn expect_shape_accepts_wildcards_and_rejects_mismatches() {
        let t = Tensor::from_f32("x", &[1, 3], &[0.0; 3]);
        assert!(t.expect_shape(&[None, Some(3)]).is_ok());
        assert!(t.expect_shape(&[Some(1), Some(4)]).is_err());
        assert!(t.expect_shape(&[Some(3)]).is_err());
    }
}
