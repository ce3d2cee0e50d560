//! A bounds-checked reader for GGUF files (llama.cpp's model format, versions 2 and 3).
//!
//! A GGUF file is: magic `GGUF`, version, tensor count, metadata count, the metadata key/value
//! pairs, one info record per tensor (name, dims, ggml type, offset), padding to the alignment,
//! then the tensor data. The file is memory-mapped; every count, length and offset read from it
//! is checked against the bytes that remain before anything is allocated, so a hostile file gives
//! an error, never a panic or a huge allocation.

use anyhow::{bail, ensure, Context, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Nested arrays deeper than this are refused (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 4;
/// Tensors with more dimensions than this are refused (ggml has at most 4).
const MAX_DIMS: usize = 4;
/// llama.cpp's default alignment of the tensor data section.
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Where one tensor lies in the file and how it is encoded.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major dimensions, outermost first (GGUF stores them innermost first; we reverse).
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: usize,
    /// Size of the tensor's data in bytes.
    pub size: usize,
}

/// The bytes of a GGUF file: a memory map of it, or a buffer (tests and fuzzing).
pub enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file: its metadata and tensor directory, over a memory map of the file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    mmap: std::sync::Arc<FileBytes>,
}

impl GgufFile {
    /// Opens and parses a GGUF file. Only the header is read; tensor data stays on disk until
    /// [`GgufFile::qtensor`] asks for it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        // SAFETY: the map is read-only; lmscope does not write model files while reading them.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        // Every weight is read on the first forward pass: ask the kernel to read the file ahead
        // in large requests, rather than page by page as the pass faults on it (which costs
        // ~0.3 s when the page cache has dropped the file). Only a hint; failure is harmless.
        #[cfg(unix)]
        let _ = mmap.advise(memmap2::Advice::WillNeed);
        Self::parse(path, FileBytes::Mapped(mmap), Part::Whole)
            .with_context(|| format!("invalid GGUF file {}", path.display()))
    }

    /// Opens a GGUF file for its metadata alone (the tokenizer, the chat template): the tensor
    /// records and data are neither parsed nor read ahead, so a file whose weights are cut off or
    /// corrupt still gives its tokenizer. [`GgufFile::tensors`] is empty.
    pub fn open_metadata(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        // SAFETY: as in `open`. Only the pages of the header are touched.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        Self::parse(path, FileBytes::Mapped(mmap), Part::Metadata)
            .with_context(|| format!("invalid GGUF file {}", path.display()))
    }

    /// Parses a GGUF file held in memory (`name` is used in messages).
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Path::new(name), FileBytes::Owned(bytes), Part::Whole)
            .with_context(|| format!("invalid GGUF file {name}"))
    }

    /// [`GgufFile::open_metadata`] on bytes in memory.
    pub fn metadata_from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Path::new(name), FileBytes::Owned(bytes), Part::Metadata)
            .with_context(|| format!("invalid GGUF file {name}"))
    }

    fn parse(path: &Path, mmap: FileBytes, part: Part) -> Result<Self> {
        let mut r = Reader { bytes: &mmap, pos: 0 };
        let magic = r.bytes(4).context("file is shorter than the GGUF magic")?;
        ensure!(magic == b"GGUF", "not a GGUF file (magic {:?})", String::from_utf8_lossy(magic));
        let version = r.u32()?;
        ensure!(
            version == 2 || version == 3,
            "GGUF version {version} is not supported (versions 2 and 3 are)"
        );
        let tensor_count = r.u64()?;
        let metadata_count = r.u64()?;
        // Each metadata entry takes at least 12 bytes, each tensor record at least 24.
        ensure!(
            metadata_count <= r.remaining() as u64 / 12,
            "header claims {metadata_count} metadata entries, more than the file can hold"
        );
        ensure!(
            part == Part::Metadata || tensor_count <= r.remaining() as u64 / 24,
            "header claims {tensor_count} tensors, more than the file can hold"
        );

        let mut metadata = BTreeMap::new();
        for i in 0..metadata_count {
            let key = r.string().with_context(|| format!("metadata entry {i}: key"))?;
            let value_type = r.u32()?;
            let value =
                r.value(value_type, 0).with_context(|| format!("metadata entry {key:?}"))?;
            metadata.insert(key, value);
        }
        if part == Part::Metadata {
            return Ok(GgufFile {
                path: path.to_path_buf(),
                version,
                metadata,
                tensors: BTreeMap::new(),
                mmap: std::sync::Arc::new(mmap),
            });
        }

        let mut infos = Vec::new();
        for i in 0..tensor_count {
            let name = r.string().with_context(|| format!("tensor record {i}: name"))?;
            let n_dims = r.u32()? as usize;
            ensure!(n_dims <= MAX_DIMS, "tensor {name:?} has {n_dims} dimensions");
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64()?;
                dims.push(usize::try_from(d).context("dimension does not fit in memory")?);
            }
            dims.reverse();
            let dtype = ggml_dtype(r.u32()?).with_context(|| format!("tensor {name:?}"))?;
            let offset = r.u64()?;
            infos.push((name, dims, dtype, offset));
        }

        let alignment = match metadata.get("general.alignment").and_then(Value::as_u64) {
            Some(a) if a >= 8 && a.is_power_of_two() && a <= 1 << 20 => a,
            Some(a) => bail!("general.alignment = {a} is not a power of two of at least 8"),
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;

        let mut tensors = BTreeMap::new();
        for (name, dims, dtype, offset) in infos {
            let elems = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
                .with_context(|| format!("tensor {name:?}: element count overflows"))?;
            let block = dtype.block_size() as u64;
            ensure!(
                elems % block == 0,
                "tensor {name:?}: {elems} elements is not a multiple of the {dtype:?} block size {block}"
            );
            let size = (elems / block)
                .checked_mul(dtype.type_size() as u64)
                .with_context(|| format!("tensor {name:?}: byte size overflows"))?;
            // The format puts every tensor at a multiple of the alignment; candle reads the
            // blocks in place, which needs it.
            ensure!(
                offset % alignment == 0,
                "tensor {name:?} starts at offset {offset}, not a multiple of the alignment {alignment}"
            );
            let start = data_start
                .checked_add(offset)
                .with_context(|| format!("tensor {name:?}: offset overflows"))?;
            ensure!(
                start.checked_add(size).is_some_and(|end| end <= file_len),
                "tensor {name:?} ({dtype:?} {dims:?}) lies at bytes {start}..{} but the file has {file_len} bytes (truncated?)",
                start.saturating_add(size)
            );
            let info = TensorInfo {
                name: name.clone(),
                dims,
                dtype,
                offset: start as usize,
                size: size as usize,
            };
            ensure!(tensors.insert(name.clone(), info).is_none(), "tensor {name:?} appears twice");
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap: std::sync::Arc::new(mmap),
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .with_context(|| format!("metadata key {key} is missing"))?
            .as_str()
            .with_context(|| format!("metadata key {key} is not a string"))
    }

    /// An optional non-negative integer metadata value, as usize.
    pub fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .as_u64()
                    .with_context(|| format!("metadata key {key} is not a non-negative integer"))?;
                Ok(Some(usize::try_from(n).with_context(|| format!("{key} is too large"))?))
            }
        }
    }

    /// An optional numeric metadata value, as f64.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                Ok(Some(v.as_f64().with_context(|| format!("metadata key {key} is not a number"))?))
            }
        }
    }

    /// The memory map of the whole file (tensors can borrow from it without copying).
    pub fn map(&self) -> &std::sync::Arc<FileBytes> {
        &self.mmap
    }

    /// The raw bytes of one tensor, straight from the memory map.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.size]
    }

    /// One tensor as candle's quantized tensor (still in its GGUF encoding).
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self
            .tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing from {}", self.path.display()))?;
        let bytes = self.tensor_bytes(info);
        // candle views the bytes as blocks in place: they must be aligned for them (the file's
        // alignment and a page-aligned map or allocator-aligned buffer guarantee it).
        ensure!(
            (bytes.as_ptr() as usize).is_multiple_of(8),
            "tensor {name} is not 8-byte aligned in memory"
        );
        qtensor_from_ggml(info.dtype, bytes, info.dims.clone(), device)
            .with_context(|| format!("cannot read tensor {name}"))
    }
}

/// ggml's numeric type ids, as written in GGUF tensor records.
fn ggml_dtype(id: u32) -> Result<GgmlDType> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => bail!("ggml tensor type {other} is not supported"),
    })
}

/// How much of a GGUF file to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Header, metadata and tensor records (checked against the file's length).
    Whole,
    /// Header and metadata only.
    Metadata,
}

/// A cursor over the file's bytes that refuses to read past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(
            n <= self.remaining(),
            "unexpected end of file at byte {} (wanted {n} more bytes, {} left)",
            self.pos,
            self.remaining()
        );
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        ensure!(
            len <= self.remaining() as u64,
            "string of {len} bytes at byte {} runs past the end of the file",
            self.pos
        );
        let bytes = self.bytes(len as usize)?;
        // GGUF strings should be UTF-8; a few real files hold invalid bytes in token texts.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, value_type: u32, depth: usize) -> Result<Value> {
        Ok(match value_type {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => bail!("boolean with value {b}"),
            },
            8 => Value::String(self.string()?),
            9 => {
                ensure!(depth < MAX_ARRAY_DEPTH, "arrays nested deeper than {MAX_ARRAY_DEPTH}");
                let item_type = self.u32()?;
                let len = self.u64()?;
                // Every item takes at least one byte: a longer array cannot fit in the file.
                ensure!(
                    len <= self.remaining() as u64,
                    "array of {len} items at byte {} runs past the end of the file",
                    self.pos
                );
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(item_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a minimal GGUF v3 file: one string, one u32 array and one 2x32 F32 tensor.
    fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // metadata entries
        let key = |b: &mut Vec<u8>, k: &str| {
            b.extend_from_slice(&(k.len() as u64).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
        };
        key(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        key(&mut b, "llama");
        key(&mut b, "ids");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        for v in [7u32, 8, 9] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        key(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes()); // innermost first
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..64 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        let mut f = tempfile::NamedTempFile::new()?;
        f.write_all(bytes)?;
        GgufFile::open(f.path())
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let g = parse(&tiny_gguf()).unwrap();
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        let ids: Vec<u64> =
            g.get("ids").unwrap().as_array().unwrap().iter().filter_map(Value::as_u64).collect();
        assert_eq!(ids, vec![7, 8, 9]);
        let w = g.qtensor("w", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        assert_eq!(w.dims(), &[2, 32]);
        assert_eq!(w.get(1).unwrap().get(0).unwrap().to_scalar::<f32>().unwrap(), 32.0);
    }

    #[test]
    fn metadata_alone_survives_cut_tensor_records_and_data() {
        let bytes = tiny_gguf();
        let whole = parse(&bytes).unwrap();
        let arch = |g: &GgufFile| g.get_str("general.architecture").unwrap().to_string();
        // The tensor record ("w", length-prefixed) follows the metadata.
        let records = bytes.windows(9).position(|w| w == b"\x01\0\0\0\0\0\0\0w").unwrap();
        for cut in [bytes.len() - 1, records + 3, records] {
            let cut_bytes = bytes[..cut].to_vec();
            assert!(parse(&cut_bytes).is_err(), "the whole parse must see the cut at {cut}");
            let meta = GgufFile::metadata_from_bytes("cut", cut_bytes).unwrap();
            assert_eq!(arch(&meta), arch(&whole));
            assert!(meta.tensors.is_empty());
        }
        // A cut inside the metadata is still an error.
        assert!(GgufFile::metadata_from_bytes("cut", bytes[..records - 2].to_vec()).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = tiny_gguf();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "truncated at {len} parsed");
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = tiny_gguf();
        bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let err = parse(&bytes).err().unwrap();
        assert!(format!("{err:#}").contains("more than the file can hold"), "{err:#}");
        // An array that claims 2^62 items.
        let mut bytes = tiny_gguf();
        // key "ids" (3 bytes), value type (4), item type (4), then the item count.
        let at = bytes.windows(4).position(|w| w == b"ids\x09").unwrap() + 11;
        bytes[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let err = parse(&bytes).err().unwrap();
        assert!(format!("{err:#}").contains("runs past the end"), "{err:#}");
    }
}

#[cfg(test)]
mod dtype_tests {
    use super::*;
    use candle_core::quantized::gguf_file;
    use candle_core::Tensor;

    /// Every ggml type lmscope claims to read: written by candle's GGUF writer, read back by our
    /// parser, dequantized, and compared with candle's own dequantization of the same blocks.
    #[test]
    fn reads_every_supported_tensor_type() {
        let dev = Device::Cpu;
        // 2 rows of 256 values: a multiple of every block size (32 for Q4_0.., 256 for K-quants).
        let src = Tensor::randn(0f32, 1.0, (2, 256), &dev).unwrap();
        let types = [
            GgmlDType::F32,
            GgmlDType::F16,
            GgmlDType::BF16,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q2K,
            GgmlDType::Q3K,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        let quantized: Vec<(String, QTensor)> = types
            .iter()
            .map(|&t| (format!("{t:?}"), QTensor::quantize(&src, t).unwrap()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("types.gguf");
        let mut file = std::fs::File::create(&path).unwrap();
        let arch = gguf_file::Value::String("llama".into());
        let tensors: Vec<(&str, &QTensor)> =
            quantized.iter().map(|(n, q)| (n.as_str(), q)).collect();
        gguf_file::write(&mut file, &[("general.architecture", &arch)], &tensors).unwrap();
        drop(file);

        let g = GgufFile::open(&path).unwrap();
        for (name, q) in &quantized {
            let ours = g.qtensor(name, &dev).unwrap().dequantize(&dev).unwrap();
            let theirs = q.dequantize(&dev).unwrap();
            assert_eq!(ours.dims(), &[2, 256], "{name}");
            let diff = (&ours - &theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name} read back differently");
            // And the values are the original ones, up to the type's quantization error.
            let err = (&ours - &src).unwrap().abs().unwrap().mean_all().unwrap();
            assert!(err.to_scalar::<f32>().unwrap() < 0.5, "{name} is not a close copy");
        }
    }
}
