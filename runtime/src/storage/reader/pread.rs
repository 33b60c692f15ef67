//! The pread fallback: a batch's ranges read with positional reads, one after another, on the
//! calling (blocking) thread. Used where io_uring is unavailable or not wanted.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{AlignedBuf, ReadOp};

/// Reads every op of a batch; a result is shorter than its op only at end of file.
pub(super) fn pread_batch(file: &File, ops: &[ReadOp]) -> io::Result<Vec<AlignedBuf>> {
    ops.iter()
        .map(|op| {
            let mut buf = AlignedBuf::zeroed(op.len);
            let mut filled = 0;
            while filled < op.len {
                let n = file.read_at(
                    &mut buf.spare_mut()[filled..op.len],
                    op.offset + filled as u64,
                )?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.set_len(filled);
            Ok(buf)
        })
        .collect()
}
