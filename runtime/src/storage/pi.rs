//! Protection information: a CRC32C per 4 KiB block of every object, in the spirit of NVMe
//! end-to-end data protection. Every read verifies the blocks it touches, so corruption is
//! caught on the read path without reading whole objects; a SHA-256 of the whole object (kept
//! in the catalog) is what `scrub` verifies.
//!
//! Sidecar layout (`<object>.pi`): magic `NSPI0001`, block size (u32 LE), block count (u64 LE),
//! one CRC32C (u32 LE) per block, then a CRC32C (u32 LE) of everything before it.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::reader::BLOCK_BYTES;

const MAGIC: &[u8; 8] = b"NSPI0001";

/// Block checksums of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSums {
    crcs: Vec<u32>,
}

impl BlockSums {
    /// Number of blocks covered.
    pub fn blocks(&self) -> usize {
        self.crcs.len()
    }

    /// Verifies `data`, which starts at block `first_block`; `data` ends at a block boundary
    /// or at the end of the object. Returns the index of the first bad block.
    pub fn verify(&self, first_block: usize, data: &[u8]) -> Result<(), usize> {
        for (i, chunk) in data.chunks(BLOCK_BYTES).enumerate() {
            let block = first_block + i;
            match self.crcs.get(block) {
                Some(&want) if crc32c::crc32c(chunk) == want => {}
                _ => return Err(block),
            }
        }
        Ok(())
    }

    /// Encodes the sidecar.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 4 * self.crcs.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(BLOCK_BYTES as u32).to_le_bytes());
        out.extend_from_slice(&(self.crcs.len() as u64).to_le_bytes());
        for c in &self.crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let trailer = crc32c::crc32c(&out);
        out.extend_from_slice(&trailer.to_le_bytes());
        out
    }

    /// Decodes and checks a sidecar.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err("protection-information sidecar has a bad header".into());
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != want {
            return Err("protection-information sidecar fails its own checksum".into());
        }
        let block = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
        if block != BLOCK_BYTES {
            return Err(format!("sidecar block size {block} is not {BLOCK_BYTES}"));
        }
        let count = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes")) as usize;
        let crcs_bytes = &body[20..];
        if crcs_bytes.len() != count * 4 {
            return Err("protection-information sidecar has the wrong length".into());
        }
        Ok(BlockSums {
            crcs: crcs_bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
        })
    }
}

/// A writer that computes the SHA-256 and the block checksums of everything written through it.
pub struct SummingWriter<W> {
    inner: W,
    sha: Sha256,
    crcs: Vec<u32>,
    cur: u32,
    cur_len: usize,
    written: u64,
}

impl<W: Write> SummingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        SummingWriter {
            inner,
            sha: Sha256::new(),
            crcs: Vec::new(),
            cur: 0,
            cur_len: 0,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Finishes: the inner writer, the hex SHA-256 and the block checksums.
    pub fn finish(mut self) -> (W, String, BlockSums) {
        if self.cur_len > 0 {
            self.crcs.push(self.cur);
        }
        let sha = hex::encode(self.sha.finalize());
        (self.inner, sha, BlockSums { crcs: self.crcs })
    }

    fn absorb(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        self.written += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK_BYTES - self.cur_len).min(data.len());
            self.cur = crc32c::crc32c_append(self.cur, &data[..take]);
            self.cur_len += take;
            data = &data[take..];
            if self.cur_len == BLOCK_BYTES {
                self.crcs.push(self.cur);
                self.cur = 0;
                self.cur_len = 0;
            }
        }
    }
}

impl<W: Write> Write for SummingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.absorb(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// SHA-256 (hex) and block checksums of a byte slice.
pub fn sums_of(data: &[u8]) -> (String, BlockSums) {
    let mut w = SummingWriter::new(io::sink());
    w.write_all(data).expect("sink never fails");
    let (_, sha, sums) = w.finish();
    (sha, sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_detect_a_flipped_bit_and_round_trip() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (sha, sums) = sums_of(&data);
        assert_eq!(sha.len(), 64);
        assert_eq!(sums.blocks(), 3);
        assert_eq!(sums.verify(0, &data), Ok(()));
        assert_eq!(sums.verify(2, &data[8192..]), Ok(()));
        let mut bad = data.clone();
        bad[5000] ^= 1;
        assert_eq!(sums.verify(0, &bad), Err(1));
        let back = BlockSums::decode(&sums.encode()).unwrap();
        assert_eq!(back, sums);
        let mut enc = sums.encode();
        enc[21] ^= 0xff;
        assert!(BlockSums::decode(&enc).is_err());
    }
}
