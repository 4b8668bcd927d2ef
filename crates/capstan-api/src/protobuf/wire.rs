//! Protobuf wire-format reading: just enough to walk tagged fields of a message.

use thiserror::Error;

/// Why a byte string is not well-formed protobuf.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("unsupported wire type {0}")]
    WireType(u8),
    #[error("field number 0 is not valid")]
    ZeroField,
}

/// One field occurrence as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates `(field number, value)` pairs of one message.
pub struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<(u32, WireValue<'a>), WireError> {
        let (key, used) = read_varint(self.buf)?;
        self.buf = &self.buf[used..];
        let number = u32::try_from(key >> 3).map_err(|_| WireError::VarintOverflow)?;
        if number == 0 {
            return Err(WireError::ZeroField);
        }
        let value = match (key & 7) as u8 {
            0 => {
                let (v, used) = read_varint(self.buf)?;
                self.buf = &self.buf[used..];
                WireValue::Varint(v)
            }
            1 => WireValue::Fixed64(u64::from_le_bytes(fixed(self.take(8)?))),
            2 => {
                let (len, used) = read_varint(self.buf)?;
                self.buf = &self.buf[used..];
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                WireValue::Bytes(self.take(len)?)
            }
            5 => WireValue::Fixed32(u32::from_le_bytes(fixed(self.take(4)?))),
            other => return Err(WireError::WireType(other)),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, WireValue<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            // Stop after the first error: the rest of the buffer has no known framing.
            self.buf = &[];
        }
        Some(item)
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Reads one base-128 varint, returning the value and the bytes it used.
pub fn read_varint(buf: &[u8]) -> Result<(u64, usize), WireError> {
    let mut value = 0u64;
    for (i, byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    if buf.len() >= 10 {
        Err(WireError::VarintOverflow)
    } else {
        Err(WireError::Truncated)
    }
}

/// Decodes a packed run of varints (proto3 packed repeated scalars).
pub fn read_packed_varints(mut buf: &[u8]) -> Result<Vec<u64>, WireError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (v, used) = read_varint(buf)?;
        out.push(v);
        buf = &buf[used..];
    }
    Ok(out)
}
