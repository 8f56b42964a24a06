//! The fuzzer's input read as a stream of little-endian integers; past its
//! end every read is 0, so any input is a complete one.

pub struct Bytes<'a>(pub &'a [u8]);

#[allow(dead_code, reason = "each target reads the widths it needs")]
impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
}
