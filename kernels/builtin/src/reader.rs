//! A little-endian byte reader over a program's parameter bytes (the filter program and the
//! expression program both read theirs with it).

use nearstore_kernel::KernelResult;
use nearstore_kernel::abi::status;

pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> KernelResult<&'a [u8]> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or(status::BAD_INPUT)?;
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> KernelResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> KernelResult<usize> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]) as usize)
    }
}
