//! Merging requests into one batch along the first (batch) dimension, and splitting a batch's
//! outputs back into each request's share. Works on the protocol's raw layout, so BYTES tensors
//! (length-prefixed elements) merge by concatenation and split by walking their elements.

use bytes::BytesMut;

use crate::tensor::{DataType, Tensor, element_count, split_bytes_elements};

/// Concatenates the inputs of several requests (each in schema order) along the batch dimension.
/// The requests must agree on which inputs are present and on every non-batch dimension.
pub fn concat(mut requests: Vec<Vec<Option<Tensor>>>) -> Result<Vec<Option<Tensor>>, String> {
    let slots = requests.first().map_or(0, Vec::len);
    let mut merged = Vec::with_capacity(slots);
    for slot in 0..slots {
        let parts: Vec<Tensor> = requests
            .iter_mut()
            .filter_map(|inputs| inputs.get_mut(slot).and_then(Option::take))
            .collect();
        if parts.is_empty() {
            merged.push(None);
            continue;
        }
        if parts.len() != requests.len() {
            return Err("requests of one batch differ in which inputs they carry".into());
        }
        merged.push(Some(concat_tensor(parts)?));
    }
    Ok(merged)
}

fn concat_tensor(parts: Vec<Tensor>) -> Result<Tensor, String> {
    let first = &parts[0];
    let rest = first
        .shape
        .get(1..)
        .ok_or("a batched tensor has no dimensions")?;
    let mut rows = 0i64;
    let mut data = BytesMut::with_capacity(parts.iter().map(|p| p.data.len()).sum());
    for part in &parts {
        if part.shape.get(1..) != Some(rest) || part.datatype != first.datatype {
            return Err(format!(
                "input '{}': requests of one batch differ in shape or type",
                first.name
            ));
        }
        rows += part.shape[0];
        data.extend_from_slice(&part.data);
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    Ok(Tensor {
        name: first.name.clone(),
        datatype: first.datatype,
        shape,
        data: data.freeze(),
    })
}

/// Splits every output of a batch into `sizes` consecutive shares along the batch dimension;
/// returns, per request, its outputs in the same order.
pub fn split(outputs: Vec<Tensor>, sizes: &[usize]) -> Result<Vec<Vec<Tensor>>, String> {
    let mut per_request: Vec<Vec<Tensor>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        for (request, share) in split_tensor(output, sizes)?.into_iter().enumerate() {
            per_request[request].push(share);
        }
    }
    Ok(per_request)
}

fn split_tensor(tensor: Tensor, sizes: &[usize]) -> Result<Vec<Tensor>, String> {
    let total: usize = sizes.iter().sum();
    let rows = tensor.shape.first().copied().unwrap_or(-1);
    if rows != total as i64 {
        return Err(format!(
            "output '{}' has {rows} rows for a batch of {total}",
            tensor.name
        ));
    }
    let per_row = element_count(&tensor.shape[1..]).ok_or("output shape overflows")?;
    let offsets = row_offsets(&tensor, per_row, total)?;
    let mut shares = Vec::with_capacity(sizes.len());
    let mut row = 0;
    for &size in sizes {
        let mut shape = tensor.shape.clone();
        shape[0] = size as i64;
        shares.push(Tensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype,
            shape,
            data: tensor.data.slice(offsets[row]..offsets[row + size]),
        });
        row += size;
    }
    Ok(shares)
}

/// Byte offset of the start of each row, plus the end.
fn row_offsets(tensor: &Tensor, per_row: usize, rows: usize) -> Result<Vec<usize>, String> {
    if let Some(size) = tensor.datatype.element_size() {
        let row_bytes = per_row * size;
        if tensor.data.len() != row_bytes * rows {
            return Err(format!("output '{}' has the wrong byte size", tensor.name));
        }
        return Ok((0..=rows).map(|r| r * row_bytes).collect());
    }
    debug_assert_eq!(tensor.datatype, DataType::Bytes);
    let elements = split_bytes_elements(&tensor.data)
        .ok_or_else(|| format!("output '{}' has malformed BYTES contents", tensor.name))?;
    if elements.len() != per_row * rows {
        return Err(format!(
            "output '{}' has the wrong element count",
            tensor.name
        ));
    }
    let mut offsets = Vec::with_capacity(rows + 1);
    let mut offset = 0;
    offsets.push(0);
    for row in elements.chunks(per_row.max(1)).take(rows) {
        offset += row.iter().map(|e| 4 + e.len()).sum::<usize>();
        offsets.push(offset);
    }
    while offsets.len() < rows + 1 {
        offsets.push(offset);
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::push_bytes_element;
    use bytes::Bytes;

    fn raw(values: &[i32]) -> Bytes {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn int(shape: &[i64], values: &[i32]) -> Tensor {
        Tensor {
            name: "x".into(),
            datatype: DataType::Int32,
            shape: shape.to_vec(),
            data: raw(values),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_rows() {
        let a = vec![Some(int(&[1, 2], &[1, 2])), None];
        let b = vec![Some(int(&[2, 2], &[3, 4, 5, 6])), None];
        let merged = concat(vec![a, b]).unwrap();
        let x = merged[0].clone().unwrap();
        assert_eq!(x.shape, vec![3, 2]);
        assert_eq!(x.data, raw(&[1, 2, 3, 4, 5, 6]));
        assert!(merged[1].is_none());
        let split = split(vec![x], &[1, 2]).unwrap();
        assert_eq!(split[0][0], int(&[1, 2], &[1, 2]));
        assert_eq!(split[1][0], int(&[2, 2], &[3, 4, 5, 6]));
    }

    #[test]
    fn mismatched_shapes_do_not_merge() {
        let a = vec![Some(int(&[1, 2], &[1, 2]))];
        let b = vec![Some(int(&[1, 1], &[3]))];
        assert!(concat(vec![a, b]).is_err());
    }

    #[test]
    fn strings_split_by_element() {
        let mut data = Vec::new();
        for s in [&b"a"[..], b"bcd", b"", b"ef"] {
            push_bytes_element(&mut data, s);
        }
        let t = Tensor {
            name: "s".into(),
            datatype: DataType::Bytes,
            shape: vec![2, 2],
            data: data.into(),
        };
        let split = split(vec![t], &[1, 1]).unwrap();
        assert_eq!(split[0][0].data.len(), 4 + 1 + 4 + 3);
        assert_eq!(split[1][0].data.len(), 4 + 4 + 2);
        assert_eq!(split[1][0].shape, vec![1, 2]);
    }

    #[test]
    fn a_wrong_row_count_is_an_error() {
        assert!(split(vec![int(&[2, 1], &[1, 2])], &[1, 2]).is_err());
    }
}
