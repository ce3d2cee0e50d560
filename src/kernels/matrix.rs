//! A weight matrix in one of the forms lmscope multiplies by, and `x @ W.T` for each.

use super::blocks::BlockMatrix;
use super::products;
use anyhow::{bail, ensure, Result};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

/// A weight matrix (out_features, in_features), in one of the forms lmscope multiplies by.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// A dense tensor in the compute dtype.
    Dense(Tensor),
    /// GGUF blocks, dequantized exactly inside the product (the exact path's fast form).
    Blocks(Arc<BlockMatrix>),
    /// candle's quantized matmul, which also quantizes the activations (`--quantized`).
    Quantized(Arc<QMatMul>, (usize, usize)),
    /// GGUF blocks in the same quantized arithmetic as candle's matmul, with lmscope's
    /// AVX512-VNNI kernel (`--quantized` for Q4_0, Q4_1 and Q8_0).
    Int8Blocks(Arc<BlockMatrix>),
}

impl Matrix {
    /// A dense matrix; refuses tensors that are not 2-D.
    pub fn dense(t: Tensor) -> Result<Self> {
        ensure!(t.rank() == 2, "expected a matrix, got a tensor of shape {:?}", t.dims());
        Ok(Matrix::Dense(t))
    }

    /// (out_features, in_features)
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Matrix::Dense(t) => (t.dims()[0], t.dims()[1]),
            Matrix::Blocks(b) | Matrix::Int8Blocks(b) => (b.rows, b.cols),
            Matrix::Quantized(_, dims) => *dims,
        }
    }

    /// y = x @ W.T, PyTorch's `nn.Linear` without bias. x: (b, t, in) -> (b, t, out)
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Dense(w) => linear(x, w),
            Matrix::Quantized(w, _) => candle_core::Module::forward(w.as_ref(), x),
            Matrix::Blocks(_) | Matrix::Int8Blocks(_) => {
                Ok(Self::forward_many(&[self], x)?.pop().expect("one product"))
            }
        }
    }

    /// The products of several matrices with the same input (q, k and v; gate and up), in one
    /// parallel region where the matrices are GGUF blocks. x: (b, t, in) -> (b, t, out_i) each.
    pub fn forward_many(ms: &[&Matrix], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let (b, t, c) = x.dims3()?;
        let blocks: Option<Vec<&BlockMatrix>> = ms
            .iter()
            .map(|m| if let Matrix::Blocks(w) = m { Some(w.as_ref()) } else { None })
            .collect();
        let int8: Option<Vec<&BlockMatrix>> = ms
            .iter()
            .map(|m| if let Matrix::Int8Blocks(w) = m { Some(w.as_ref()) } else { None })
            .collect();
        let ys = match (blocks, int8) {
            (Some(ws), _) => products::matmul_t_many(&ws, &x.reshape((b * t, c))?),
            #[cfg(target_arch = "x86_64")]
            (None, Some(ws)) => products::matmul_t_int8_many(&ws, &x.reshape((b * t, c))?),
            _ => return ms.iter().map(|m| m.forward(x)).collect(),
        };
        let ys = ys.map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?; // (b*t, out_i)
        ys.into_iter().map(|y| y.reshape((b, t, y.dim(1)?))).collect()
    }

    /// Rows of the matrix as f32, (ids.len(), in): an embedding lookup.
    pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
        let (rows, _) = self.dims();
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
            bail!("token id {bad} is outside the embedding matrix ({rows} rows)");
        }
        match self {
            Matrix::Dense(t) => {
                let ids = Tensor::new(ids, t.device())?;
                Ok(t.embedding(&ids)?.to_dtype(DType::F32)?)
            }
            Matrix::Blocks(b) => b.rows(ids, &Device::Cpu),
            Matrix::Quantized(..) | Matrix::Int8Blocks(_) => {
                bail!("a quantized matrix is not used for embeddings")
            }
        }
    }

    /// Whether products with this matrix go through candle (its GEMM, its quantized matmul),
    /// whose parallel loops run on rayon's pool; lmscope's own kernels run on `team`.
    pub fn uses_candle(&self) -> bool {
        match self {
            Matrix::Dense(_) | Matrix::Quantized(..) => true,
            Matrix::Blocks(_) => !products::own_kernels_for_many_rows(super::backend()),
            Matrix::Int8Blocks(_) => false,
        }
    }

    pub fn elem_count(&self) -> usize {
        let (o, i) = self.dims();
        o * i
    }
}

/// `x @ w.T` for a dense w (out, in) and x (b, t, in) -> (b, t, out). candle has no bf16 matmul on
/// the CPU, so bf16 (and f16) operands are multiplied the way PyTorch's CPU kernel does it:
/// products summed in f32, the result rounded to the dtype once.
fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, c_in) = x.dims3()?;
    let c_out = w.dim(0)?;
    let x = x.reshape((b * t, c_in))?; // (b*t, in)
    let y = if matches!(x.dtype(), DType::BF16 | DType::F16) {
        x.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::F32)?.t()?)?.to_dtype(x.dtype())?
    } else {
        x.matmul(&w.t()?)?
    };
    y.reshape((b, t, c_out)) // (b, t, out)
}
