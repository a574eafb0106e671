//! Conversions between the protocol's raw tensors and tract's tensors, and between type names.

use tract_onnx::prelude::*;

use crate::proto::inference::DataType as ConfigType;
use crate::schema::IoSpec;
use crate::tensor::{self, DataType, push_bytes_element, split_bytes_elements};

/// tract's element type for one of ours.
pub fn datum_type(dt: DataType) -> DatumType {
    match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

/// Our element type for one of tract's, if the protocol has it.
pub fn from_datum_type(dt: DatumType) -> Result<DataType, String> {
    let ours = match dt {
        DatumType::Bool => DataType::Bool,
        DatumType::U8 => DataType::Uint8,
        DatumType::U16 => DataType::Uint16,
        DatumType::U32 => DataType::Uint32,
        DatumType::U64 => DataType::Uint64,
        DatumType::I8 => DataType::Int8,
        DatumType::I16 => DataType::Int16,
        DatumType::I32 => DataType::Int32,
        DatumType::I64 => DataType::Int64,
        DatumType::F16 => DataType::Fp16,
        DatumType::F32 => DataType::Fp32,
        DatumType::F64 => DataType::Fp64,
        DatumType::String => DataType::Bytes,
        other => return Err(format!("element type {other:?} has no protocol equivalent")),
    };
    Ok(ours)
}

/// The configuration's enum value for one of our types.
pub fn config_type(dt: DataType) -> ConfigType {
    match dt {
        DataType::Bool => ConfigType::TypeBool,
        DataType::Uint8 => ConfigType::TypeUint8,
        DataType::Uint16 => ConfigType::TypeUint16,
        DataType::Uint32 => ConfigType::TypeUint32,
        DataType::Uint64 => ConfigType::TypeUint64,
        DataType::Int8 => ConfigType::TypeInt8,
        DataType::Int16 => ConfigType::TypeInt16,
        DataType::Int32 => ConfigType::TypeInt32,
        DataType::Int64 => ConfigType::TypeInt64,
        DataType::Fp16 => ConfigType::TypeFp16,
        DataType::Fp32 => ConfigType::TypeFp32,
        DataType::Fp64 => ConfigType::TypeFp64,
        DataType::Bytes => ConfigType::TypeString,
    }
}

fn le<T: Datum + Copy, const N: usize>(data: &[u8], read: fn([u8; N]) -> T) -> Vec<T> {
    let (chunks, _) = data.as_chunks::<N>();
    chunks.iter().map(|c| read(*c)).collect()
}

/// The shape the graph sees: the configuration's reshape applied, else the client's shape.
fn model_shape(t: &tensor::Tensor, spec: &IoSpec, batched: bool) -> Result<Vec<usize>, String> {
    let client: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let Some(reshape) = &spec.reshape else {
        return Ok(client);
    };
    let mut shape: Vec<usize> = Vec::with_capacity(reshape.len() + 1);
    if batched {
        shape.push(client[0]);
    }
    let total = tensor::element_count(&t.shape).unwrap_or(0);
    let known: usize = reshape
        .iter()
        .filter(|&&d| d > 0)
        .map(|&d| d as usize)
        .product::<usize>()
        * shape.first().copied().unwrap_or(1);
    for &d in reshape {
        shape.push(if d < 0 {
            total / known.max(1)
        } else {
            d as usize
        });
    }
    if shape.iter().product::<usize>() != total {
        return Err(format!(
            "input '{}' with {total} elements cannot take the configured reshape {}",
            spec.name,
            tensor::format_shape(reshape)
        ));
    }
    Ok(shape)
}

/// Builds tract's tensor from a checked raw tensor.
pub fn to_tract(t: &tensor::Tensor, spec: &IoSpec, batched: bool) -> Result<Tensor, String> {
    let shape = model_shape(t, spec, batched)?;
    let data = &t.data[..];
    let built = match t.datatype {
        DataType::Bool => {
            Tensor::from_shape(&shape, &data.iter().map(|&b| b != 0).collect::<Vec<_>>())
        }
        DataType::Uint8 => Tensor::from_shape(&shape, data),
        DataType::Int8 => Tensor::from_shape(&shape, &le(data, i8::from_le_bytes)),
        DataType::Uint16 => Tensor::from_shape(&shape, &le(data, u16::from_le_bytes)),
        DataType::Int16 => Tensor::from_shape(&shape, &le(data, i16::from_le_bytes)),
        DataType::Fp16 => {
            Tensor::from_shape(&shape, &le(data, |b| f16::from_bits(u16::from_le_bytes(b))))
        }
        DataType::Uint32 => Tensor::from_shape(&shape, &le(data, u32::from_le_bytes)),
        DataType::Int32 => Tensor::from_shape(&shape, &le(data, i32::from_le_bytes)),
        DataType::Fp32 => Tensor::from_shape(&shape, &le(data, f32::from_le_bytes)),
        DataType::Uint64 => Tensor::from_shape(&shape, &le(data, u64::from_le_bytes)),
        DataType::Int64 => Tensor::from_shape(&shape, &le(data, i64::from_le_bytes)),
        DataType::Fp64 => Tensor::from_shape(&shape, &le(data, f64::from_le_bytes)),
        DataType::Bytes => return strings_to_tract(t, &shape),
    };
    built.map_err(|e| format!("input '{}': {e:#}", spec.name))
}

fn strings_to_tract(t: &tensor::Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let elements = split_bytes_elements(&t.data)
        .ok_or_else(|| format!("input '{}': malformed BYTES contents", t.name))?;
    let strings = elements
        .into_iter()
        .map(|e| {
            String::from_utf8(e.to_vec()).map_err(|_| {
                format!(
                    "input '{}': a BYTES element is not valid UTF-8, which this model needs",
                    t.name
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    tract_ndarray::ArrayD::from_shape_vec(shape, strings)
        .map(|a| a.into_tensor())
        .map_err(|e| format!("input '{}': {e}", t.name))
}

fn raw<T: Datum + Copy, const N: usize>(
    t: &Tensor,
    write: fn(T) -> [u8; N],
) -> Result<Vec<u8>, String> {
    let view = t.try_as_plain_ram().map_err(|e| format!("{e:#}"))?;
    let values = view.as_slice::<T>().map_err(|e| format!("{e:#}"))?;
    Ok(values.iter().flat_map(|&v| write(v)).collect())
}

/// Turns one of tract's outputs into a raw tensor named and shaped as the configuration says.
pub fn from_tract(value: &TValue, spec: &IoSpec, batched: bool) -> Result<tensor::Tensor, String> {
    let t: &Tensor = value;
    let data = match t.datum_type() {
        DatumType::Bool => raw(t, |b: bool| [b as u8])?,
        DatumType::U8 => raw(t, |v: u8| [v])?,
        DatumType::I8 => raw(t, i8::to_le_bytes)?,
        DatumType::U16 => raw(t, u16::to_le_bytes)?,
        DatumType::I16 => raw(t, i16::to_le_bytes)?,
        DatumType::F16 => raw(t, |v: f16| v.to_bits().to_le_bytes())?,
        DatumType::U32 => raw(t, u32::to_le_bytes)?,
        DatumType::I32 => raw(t, i32::to_le_bytes)?,
        DatumType::F32 => raw(t, f32::to_le_bytes)?,
        DatumType::U64 => raw(t, u64::to_le_bytes)?,
        DatumType::I64 => raw(t, i64::to_le_bytes)?,
        DatumType::F64 => raw(t, f64::to_le_bytes)?,
        DatumType::String => {
            let mut out = Vec::new();
            let view = t.try_as_plain_ram().map_err(|e| format!("{e:#}"))?;
            for s in view.as_slice::<String>().map_err(|e| format!("{e:#}"))? {
                push_bytes_element(&mut out, s.as_bytes());
            }
            out
        }
        other => {
            return Err(format!(
                "output '{}' has unsupported element type {other:?}",
                spec.name
            ));
        }
    };
    let mut shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    if spec.reshape.is_some() && spec.dims.iter().all(|&d| d >= 0) {
        let batch = batched.then(|| shape.first().copied().unwrap_or(1));
        shape = batch.into_iter().chain(spec.dims.iter().copied()).collect();
    }
    Ok(tensor::Tensor {
        name: spec.name.clone(),
        datatype: from_datum_type(t.datum_type())?,
        shape,
        data: data.into(),
    })
}
