//! A hand-written protobuf wire-format walker for the OTLP trace messages.
//!
//! Why not prost with hand-written `#[derive(Message)]` structs: prost decodes into owned `String`s and
//! `Vec`s (one allocation per attribute key and value, for the ~90% of attributes metering never looks
//! at), merges repeated singular fields and accepts unknown wire types in ways that are close to, but not
//! provably the same as, upb's. The native path must *never* accept a body that Python's strict upb parse
//! would refuse or repair, and must see exactly the values upb would. A walker over borrowed slices lets
//! us (1) validate every `string` field as UTF-8 exactly where upb does, (2) borrow `&str` from the body
//! with zero copies, and (3) turn every construct we are not 100% sure upb treats the same way (groups,
//! a known field on an unexpected wire type, a singular message field repeated on the wire, several
//! members of a oneof, over-long varints, deep nesting) into a `Fallback`, i.e. "let Python decide".
//! Falling back is always safe: the Python reference then meters the body.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback(pub &'static str);

pub type R<T> = Result<T, Fallback>;

pub const WT_VARINT: u8 = 0;
pub const WT_I64: u8 = 1;
pub const WT_LEN: u8 = 2;
pub const WT_I32: u8 = 5;

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn varint(&mut self) -> R<u64> {
        // fast path: tags, lengths and small values are one byte
        if let Some(&byte) = self.buf.get(self.pos) {
            if byte < 0x80 {
                self.pos += 1;
                return Ok(u64::from(byte));
            }
        }
        self.varint_slow()
    }

    /// A tag or a length: upb reads these as 32-bit varints of at most 5 bytes (a 6-byte tag or length,
    /// even one with a small value, is "Wire format was corrupt"); larger values fall back too.
    #[inline]
    pub fn varint32(&mut self) -> R<u64> {
        let start = self.pos;
        let v = self.varint()?;
        if self.pos - start > 5 || v > u64::from(u32::MAX) {
            return Err(Fallback("tag or length varint beyond 32 bits / 5 bytes"));
        }
        Ok(v)
    }

    #[inline(never)]
    fn varint_slow(&mut self) -> R<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(Fallback("truncated varint"));
            };
            self.pos += 1;
            if i == 9 && byte > 1 {
                // upb ignores the high bits of a 10th byte; no encoder writes them: let Python decide.
                return Err(Fallback("overlong varint"));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Fallback("varint longer than 10 bytes"))
    }

    /// (field number, wire type). Groups, reserved wire types and field 0 fall back.
    #[inline]
    pub fn tag(&mut self) -> R<(u32, u8)> {
        let v = self.varint32()?;
        let field = (v >> 3) as u32;
        let wt = (v & 7) as u8;
        if field == 0 {
            return Err(Fallback("field number 0"));
        }
        match wt {
            WT_VARINT | WT_I64 | WT_LEN | WT_I32 => Ok((field, wt)),
            _ => Err(Fallback("group or invalid wire type")),
        }
    }

    #[inline]
    pub fn fixed64(&mut self) -> R<u64> {
        let end = self.pos.checked_add(8).ok_or(Fallback("overflow"))?;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(Fallback("truncated fixed64"));
        };
        self.pos = end;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| Fallback("fixed64"))?))
    }

    #[inline]
    pub fn fixed32(&mut self) -> R<u32> {
        let end = self.pos.checked_add(4).ok_or(Fallback("overflow"))?;
        let Some(b) = self.buf.get(self.pos..end) else {
            return Err(Fallback("truncated fixed32"));
        };
        self.pos = end;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| Fallback("fixed32"))?))
    }

    #[inline]
    pub fn bytes(&mut self) -> R<&'a [u8]> {
        let len = self.varint32()?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if len > remaining {
            return Err(Fallback("length beyond the message"));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    #[inline]
    pub fn string(&mut self) -> R<&'a str> {
        let b = self.bytes()?;
        // upb validates proto3 `string` fields with utf8_range (strict: no surrogates, no overlong forms),
        // the same rules as `std::str::from_utf8`; Python would repair such a body, so we fall back.
        std::str::from_utf8(b).map_err(|_| Fallback("invalid UTF-8 in a string field"))
    }

    /// Skip the value of an unknown field (upb keeps it as an unknown field and does not look inside).
    #[inline]
    pub fn skip(&mut self, wt: u8) -> R<()> {
        match wt {
            WT_VARINT => self.varint().map(|_| ()),
            WT_I64 => self.fixed64().map(|_| ()),
            WT_LEN => self.bytes().map(|_| ()),
            WT_I32 => self.fixed32().map(|_| ()),
            _ => Err(Fallback("group or invalid wire type")),
        }
    }
}

/// A known field arrived with a wire type other than its declared one (upb would keep it as an unknown
/// field, or parse a packed form): rare enough that Python decides.
#[inline]
pub fn expect(wt: u8, want: u8) -> R<()> {
    if wt == want {
        Ok(())
    } else {
        Err(Fallback("known field with an unexpected wire type"))
    }
}
