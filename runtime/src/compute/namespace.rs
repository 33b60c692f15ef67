//! The computational-storage model under the device-side backends, after the NVMe
//! Computational Programs and Subsystem Local Memory (SLM) command sets:
//!
//! - **Program slots**: a compute namespace has a fixed number of slots. `load_program` puts a
//!   program in a free slot (Load Program), `activate`/`deactivate` make it runnable or not
//!   (Program Activation Management), `unload` empties an inactive slot (Unload Program).
//! - **Memory namespace**: the SLM, a fixed-capacity byte space next to the compute engines.
//!   `alloc`/`free` carve ranges out of it; `write`/`read` are the Memory Copy commands between
//!   host and SLM.
//! - **Memory range sets**: `create_range_set` names a list of SLM ranges (in bounds, allocated,
//!   not overlapping) for one execution; `delete_range_set` drops it.
//! - **Execute**: `execute(slot, range_set, cparam1, cparam2)` runs the active program in `slot`
//!   on the ranges of `range_set`, with two program-specific 64-bit parameters, and returns the
//!   program's 64-bit result.
//!
//! The emulated FPGA ([`super::fpga::EmulatedFpga`]) is built on a namespace: its bitstream's
//! kernels are programs in slots, its device buffers SLM ranges, its DMA memory copies, and a
//! kernel run one `execute` on a range set made for it.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Errors of namespace commands (each names what was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NamespaceError {
    /// No such slot, or the slot holds nothing.
    #[error("program slot {0} is empty or does not exist")]
    EmptySlot(u16),
    /// Every slot is taken.
    #[error("all {0} program slots are in use")]
    NoFreeSlot(usize),
    /// The program must be active to run (or inactive to unload).
    #[error("program in slot {slot} is {state}")]
    ProgramState {
        /// Slot.
        slot: u16,
        /// "not active" or "active".
        state: &'static str,
    },
    /// The SLM has no free range that large.
    #[error("subsystem local memory cannot fit {0} bytes")]
    OutOfMemory(u64),
    /// A range outside allocated memory, overlapping another, or of an unknown allocation.
    #[error("bad memory range: {0}")]
    BadRange(String),
    /// No such range set.
    #[error("memory range set {0} does not exist")]
    NoRangeSet(u32),
    /// The program failed.
    #[error("program {program} failed: {message}")]
    Program {
        /// Program name.
        program: String,
        /// What it said.
        message: String,
    },
}

/// A range of subsystem local memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemRange {
    /// Byte offset in the SLM.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A program a slot can hold: it runs on the ranges of a range set, in the set's order.
pub trait ComputeProgram: Send + Sync + std::fmt::Debug {
    /// Its name.
    fn name(&self) -> &str;
    /// Runs on `ranges` (disjoint, in the range set's order) with two parameters; returns the
    /// program's result word, or a message saying what was wrong.
    fn execute(&self, ranges: &mut [&mut [u8]], cparam1: u64, cparam2: u64) -> Result<u64, String>;
}

#[derive(Debug)]
struct Slot {
    program: Arc<dyn ComputeProgram>,
    active: bool,
}

/// One compute namespace with its memory namespace.
#[derive(Debug)]
pub struct ComputeNamespace {
    slots: Vec<Option<Slot>>,
    memory: Vec<u8>,
    /// Allocations: offset → length.
    allocated: BTreeMap<u64, u64>,
    range_sets: BTreeMap<u32, Vec<MemRange>>,
    next_set: u32,
}

/// Allocation granularity of the SLM.
const ALIGN: u64 = 64;

impl ComputeNamespace {
    /// A namespace with `slots` program slots and `memory_bytes` of SLM.
    pub fn new(slots: usize, memory_bytes: u64) -> Self {
        ComputeNamespace {
            slots: (0..slots).map(|_| None).collect(),
            memory: vec![0; memory_bytes as usize],
            allocated: BTreeMap::new(),
            range_sets: BTreeMap::new(),
            next_set: 1,
        }
    }

    /// Load Program: puts `program` in the lowest free slot (inactive) and returns the slot.
    pub fn load_program(
        &mut self,
        program: Arc<dyn ComputeProgram>,
    ) -> Result<u16, NamespaceError> {
        let free = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(NamespaceError::NoFreeSlot(self.slots.len()))?;
        self.slots[free] = Some(Slot {
            program,
            active: false,
        });
        Ok(free as u16)
    }

    fn slot(&mut self, slot: u16) -> Result<&mut Slot, NamespaceError> {
        self.slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .ok_or(NamespaceError::EmptySlot(slot))
    }

    /// Program Activation Management: makes the program in `slot` runnable.
    pub fn activate(&mut self, slot: u16) -> Result<(), NamespaceError> {
        self.slot(slot)?.active = true;
        Ok(())
    }

    /// Program Activation Management: makes the program in `slot` not runnable.
    pub fn deactivate(&mut self, slot: u16) -> Result<(), NamespaceError> {
        self.slot(slot)?.active = false;
        Ok(())
    }

    /// Unload Program: empties `slot`, which must be inactive.
    pub fn unload(&mut self, slot: u16) -> Result<(), NamespaceError> {
        if self.slot(slot)?.active {
            return Err(NamespaceError::ProgramState {
                slot,
                state: "active",
            });
        }
        self.slots[slot as usize] = None;
        Ok(())
    }

    /// The name of the program in `slot` and whether it is active.
    pub fn program(&self, slot: u16) -> Option<(&str, bool)> {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|s| (s.program.name(), s.active))
    }

    /// Allocates `len` bytes of SLM (zeroed), first fit.
    pub fn alloc(&mut self, len: u64) -> Result<MemRange, NamespaceError> {
        let want = len.max(1).div_ceil(ALIGN) * ALIGN;
        let mut at = 0u64;
        for (&off, &l) in &self.allocated {
            if off - at >= want {
                break;
            }
            at = (off + l).div_ceil(ALIGN) * ALIGN;
        }
        if at + want > self.memory.len() as u64 {
            return Err(NamespaceError::OutOfMemory(len));
        }
        self.allocated.insert(at, want);
        self.memory[at as usize..(at + want) as usize].fill(0);
        Ok(MemRange { offset: at, len })
    }

    /// Frees the allocation that starts at `range.offset`.
    pub fn free(&mut self, range: MemRange) -> Result<(), NamespaceError> {
        self.allocated
            .remove(&range.offset)
            .map(|_| ())
            .ok_or_else(|| NamespaceError::BadRange(format!("no allocation at {}", range.offset)))
    }

    /// Checks that `r` lies inside one allocation.
    fn check(&self, r: MemRange) -> Result<(), NamespaceError> {
        let inside = self
            .allocated
            .range(..=r.offset)
            .next_back()
            .is_some_and(|(&off, &l)| r.offset.saturating_add(r.len) <= off + l);
        if inside {
            Ok(())
        } else {
            Err(NamespaceError::BadRange(format!(
                "{} bytes at {} are not inside an allocation",
                r.len, r.offset
            )))
        }
    }

    /// Memory Copy host → SLM: writes `data` at the start of `range`.
    pub fn write(&mut self, range: MemRange, data: &[u8]) -> Result<(), NamespaceError> {
        self.check(MemRange {
            offset: range.offset,
            len: data.len() as u64,
        })?;
        let at = range.offset as usize;
        self.memory[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Memory Copy SLM → host: fills `out` from the start of `range`.
    pub fn read(&self, range: MemRange, out: &mut [u8]) -> Result<(), NamespaceError> {
        self.check(MemRange {
            offset: range.offset,
            len: out.len() as u64,
        })?;
        let at = range.offset as usize;
        out.copy_from_slice(&self.memory[at..at + out.len()]);
        Ok(())
    }

    /// Create Memory Range Set: `ranges` must each lie inside an allocation and not overlap.
    pub fn create_range_set(&mut self, ranges: &[MemRange]) -> Result<u32, NamespaceError> {
        for r in ranges {
            self.check(*r)?;
        }
        let mut sorted: Vec<MemRange> = ranges.to_vec();
        sorted.sort();
        for w in sorted.windows(2) {
            if w[0].offset + w[0].len > w[1].offset {
                return Err(NamespaceError::BadRange(format!(
                    "ranges at {} and {} overlap",
                    w[0].offset, w[1].offset
                )));
            }
        }
        let id = self.next_set;
        self.next_set = self.next_set.wrapping_add(1).max(1);
        self.range_sets.insert(id, ranges.to_vec());
        Ok(id)
    }

    /// Delete Memory Range Set.
    pub fn delete_range_set(&mut self, id: u32) -> Result<(), NamespaceError> {
        self.range_sets
            .remove(&id)
            .map(|_| ())
            .ok_or(NamespaceError::NoRangeSet(id))
    }

    /// Execute Program: runs the active program in `slot` on the ranges of `range_set`.
    pub fn execute(
        &mut self,
        slot: u16,
        range_set: u32,
        cparam1: u64,
        cparam2: u64,
    ) -> Result<u64, NamespaceError> {
        let s = self.slot(slot)?;
        if !s.active {
            return Err(NamespaceError::ProgramState {
                slot,
                state: "not active",
            });
        }
        let program = s.program.clone();
        let ranges = self
            .range_sets
            .get(&range_set)
            .ok_or(NamespaceError::NoRangeSet(range_set))?
            .clone();
        // Disjoint mutable views of the SLM, in the set's order (the set was checked for
        // overlaps when created).
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        // Same order as the overlap check (offset, then length), so an empty range at the
        // start of another comes first.
        order.sort_by_key(|&i| ranges[i]);
        let mut views: Vec<Option<&mut [u8]>> = (0..ranges.len()).map(|_| None).collect();
        let mut rest: &mut [u8] = &mut self.memory;
        let mut consumed = 0u64;
        for i in order {
            let r = ranges[i];
            let tail = std::mem::take(&mut rest);
            let (_, from) = tail.split_at_mut((r.offset - consumed) as usize);
            let (view, after) = from.split_at_mut(r.len as usize);
            views[i] = Some(view);
            rest = after;
            consumed = r.offset + r.len;
        }
        let mut views: Vec<&mut [u8]> = views.into_iter().map(|v| v.expect("set")).collect();
        program
            .execute(&mut views, cparam1, cparam2)
            .map_err(|message| NamespaceError::Program {
                program: program.name().to_string(),
                message,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds range 0's bytes into range 1's, `cparam1` of them, plus `cparam2`.
    #[derive(Debug)]
    struct AddBytes;

    impl ComputeProgram for AddBytes {
        fn name(&self) -> &str {
            "add-bytes"
        }

        fn execute(&self, r: &mut [&mut [u8]], n: u64, k: u64) -> Result<u64, String> {
            if r.len() != 2 {
                return Err(format!("needs 2 ranges, got {}", r.len()));
            }
            let (a, b) = r.split_at_mut(1);
            for i in 0..n as usize {
                b[0][i] = b[0][i].wrapping_add(a[0][i]).wrapping_add(k as u8);
            }
            Ok(n)
        }
    }

    #[test]
    fn slots_memory_range_sets_and_execute() {
        let mut ns = ComputeNamespace::new(2, 4096);
        let p = ns.load_program(Arc::new(AddBytes)).unwrap();
        assert_eq!(ns.program(p), Some(("add-bytes", false)));
        let a = ns.alloc(4).unwrap();
        let b = ns.alloc(4).unwrap();
        ns.write(a, &[1, 2, 3, 4]).unwrap();
        ns.write(b, &[10, 20, 30, 40]).unwrap();
        // The set lists b before a: ranges come to the program in the set's order.
        let set = ns.create_range_set(&[a, b]).unwrap();
        assert_eq!(
            ns.execute(p, set, 4, 1),
            Err(NamespaceError::ProgramState {
                slot: p,
                state: "not active"
            })
        );
        ns.activate(p).unwrap();
        assert_eq!(ns.execute(p, set, 4, 1).unwrap(), 4);
        let mut out = [0u8; 4];
        ns.read(b, &mut out).unwrap();
        assert_eq!(out, [12, 23, 34, 45]);
        let swapped = ns.create_range_set(&[b, a]).unwrap();
        ns.execute(p, swapped, 2, 0).unwrap();
        ns.read(a, &mut out).unwrap();
        assert_eq!(out, [13, 25, 3, 4]);
        // Program errors, bad ranges, overlaps, unknown sets, active unload, full slots.
        let one = ns.create_range_set(&[a]).unwrap();
        assert!(matches!(
            ns.execute(p, one, 1, 0),
            Err(NamespaceError::Program { .. })
        ));
        let overlap = MemRange {
            offset: a.offset + 1,
            len: 2,
        };
        assert!(matches!(
            ns.create_range_set(&[a, overlap]),
            Err(NamespaceError::BadRange(_))
        ));
        assert!(matches!(
            ns.create_range_set(&[MemRange {
                offset: 3000,
                len: 8
            }]),
            Err(NamespaceError::BadRange(_))
        ));
        // An empty range at the start of another is not an overlap, in either order.
        let empty = MemRange {
            offset: b.offset,
            len: 0,
        };
        let with_empty = ns.create_range_set(&[b, empty]).unwrap();
        ns.execute(p, with_empty, 0, 0).unwrap();
        ns.delete_range_set(one).unwrap();
        assert_eq!(
            ns.execute(p, one, 1, 0),
            Err(NamespaceError::NoRangeSet(one))
        );
        assert!(ns.unload(p).is_err());
        ns.load_program(Arc::new(AddBytes)).unwrap();
        assert_eq!(
            ns.load_program(Arc::new(AddBytes)),
            Err(NamespaceError::NoFreeSlot(2))
        );
        ns.deactivate(p).unwrap();
        ns.unload(p).unwrap();
        assert_eq!(ns.execute(p, set, 1, 0), Err(NamespaceError::EmptySlot(p)));
        // Memory: freed ranges are reused; the SLM's capacity bounds allocation.
        ns.free(a).unwrap();
        assert_eq!(ns.alloc(8).unwrap().offset, a.offset);
        assert!(ns.free(a).is_ok());
        assert!(ns.free(a).is_err());
        assert_eq!(ns.alloc(8192), Err(NamespaceError::OutOfMemory(8192)));
    }
}
