//! A simulated disk that can lose power, in the manner of the simulation testing of
//! TigerBeetle and FoundationDB: the namespace runs on it unchanged, every mutation is logged,
//! and [`SimFs::crash_image`] computes what a disk would hold had the power gone after any
//! prefix of the log. Only what was made durable survives for sure:
//!
//! - a file's bytes are durable up to its last [`FsFile::sync`]; bytes written since are lost
//!   or torn at 4 KiB granularity (each block old or new, the length old or new, zeros where
//!   the chosen version has no bytes);
//! - a directory entry (a creation, either half of a rename, a removal) is durable once its
//!   directory was synced after it ([`Fs::sync_dir`]); until then it may be undone, each
//!   independently of the others.
//!
//! Directories themselves are kept (the namespace creates its directories once, at open).
//! What survives is drawn from a seed, so a crash image replays exactly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Fs, FsFile};

/// Torn writes happen at this granularity.
pub const BLOCK: usize = 4096;

#[derive(Debug, Clone)]
enum Op {
    /// The entry `path` names `inode` from now on (a creation, or the new half of a rename).
    Link { path: PathBuf, inode: usize },
    /// The entry `path` is gone (a removal, or the old half of a rename).
    Unlink { path: PathBuf },
    /// Bytes written at the end of `inode`.
    Append { inode: usize, bytes: Vec<u8> },
    /// `inode` emptied (a create over an existing file).
    Truncate { inode: usize },
    /// `inode`'s bytes made durable.
    Sync { inode: usize },
    /// The entries of `dir` made durable.
    SyncDir { dir: PathBuf },
}

#[derive(Debug, Default)]
struct State {
    /// Each file's bytes as written, by inode.
    files: Vec<Vec<u8>>,
    /// The live entries.
    names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    log: Vec<Op>,
    /// The disk is full from this many mutations on.
    full_at: Option<usize>,
}

impl State {
    /// Fails a write, creation or rename once the disk is full.
    fn room(&self) -> io::Result<()> {
        match self.full_at {
            Some(at) if self.log.len() >= at => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "the simulated disk is full",
            )),
            _ => Ok(()),
        }
    }
}

/// A disk in memory whose every mutation is logged; see the module documentation.
#[derive(Debug, Default, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

/// What the disk holds after a crash: directories and files with their bytes.
#[derive(Debug, Default, Clone)]
pub struct Image {
    /// Directories.
    pub dirs: BTreeSet<PathBuf>,
    /// Files and their bytes.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

impl Image {
    /// Writes the image under `real`, `root` (a path of the simulated disk) becoming `real`.
    pub fn materialize(&self, root: &Path, real: &Path) -> io::Result<()> {
        let place = |p: &Path| {
            real.join(
                p.strip_prefix(root)
                    .expect("the simulated namespace lives under its root"),
            )
        };
        for d in &self.dirs {
            if d.starts_with(root) {
                std::fs::create_dir_all(place(d))?;
            }
        }
        for (p, bytes) in &self.files {
            std::fs::write(place(p), bytes)?;
        }
        Ok(())
    }
}

/// splitmix64: a small seeded generator, enough to draw crash outcomes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> Self {
        SimFs::default()
    }

    /// How many mutations were logged so far: the crash points are `0..=log_len()`.
    pub fn log_len(&self) -> usize {
        self.state.lock().expect("sim fs").log.len()
    }

    /// Fills the disk once `point` mutations are logged (none: never): from then on writes,
    /// creations, renames and syncs fail with `StorageFull`; removals still succeed.
    pub fn fill_at(&self, point: Option<usize>) {
        self.with(|st| st.full_at = point);
    }

    /// What the disk would hold had the power gone after the first `point` mutations, the
    /// undurable part drawn from `seed`.
    pub fn crash_image(&self, point: usize, seed: u64) -> Image {
        let st = self.state.lock().expect("sim fs");
        let log = &st.log[..point.min(st.log.len())];
        let mut rng = Rng::new(seed);
        // The last directory sync of each directory within the prefix.
        let mut synced_at: HashMap<&Path, usize> = HashMap::new();
        for (i, op) in log.iter().enumerate() {
            if let Op::SyncDir { dir } = op {
                synced_at.insert(dir, i);
            }
        }
        let durable_entry = |path: &Path, i: usize| {
            path.parent()
                .and_then(|d| synced_at.get(d))
                .is_some_and(|&s| s > i)
        };
        let mut names: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut written: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut durable: HashMap<usize, Vec<u8>> = HashMap::new();
        for (i, op) in log.iter().enumerate() {
            match op {
                Op::Link { path, inode } => {
                    if durable_entry(path, i) || rng.coin() {
                        names.insert(path.clone(), *inode);
                    }
                }
                Op::Unlink { path } => {
                    if durable_entry(path, i) || rng.coin() {
                        names.remove(path);
                    }
                }
                Op::Append { inode, bytes } => {
                    written.entry(*inode).or_default().extend_from_slice(bytes)
                }
                Op::Truncate { inode } => written.entry(*inode).or_default().clear(),
                Op::Sync { inode } => {
                    durable.insert(*inode, written.get(inode).cloned().unwrap_or_default());
                }
                Op::SyncDir { .. } => {}
            }
        }
        let empty = Vec::new();
        let files = names
            .into_iter()
            .map(|(path, inode)| {
                let old = durable.get(&inode).unwrap_or(&empty);
                let new = written.get(&inode).unwrap_or(&empty);
                (path, tear(old, new, &mut rng))
            })
            .collect();
        Image {
            dirs: st.dirs.clone(),
            files,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("sim fs"))
    }
}

/// A file's bytes after a crash: `old` is what was synced, `new` what was written; blocks and
/// length each come from one or the other.
fn tear(old: &[u8], new: &[u8], rng: &mut Rng) -> Vec<u8> {
    if old == new {
        return old.to_vec();
    }
    let len = if rng.coin() { old.len() } else { new.len() };
    let mut out = vec![0u8; len];
    for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
        let from = if rng.coin() { old } else { new };
        let start = b * BLOCK;
        if start < from.len() {
            let n = chunk.len().min(from.len() - start);
            chunk[..n].copy_from_slice(&from[start..start + n]);
        }
    }
    out
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} does not exist", path.display()),
    )
}

struct SimFile {
    fs: SimFs,
    inode: usize,
}

impl Write for SimFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.with(|st| {
            st.room()?;
            st.files[self.inode].extend_from_slice(buf);
            st.log.push(Op::Append {
                inode: self.inode,
                bytes: buf.to_vec(),
            });
            Ok(buf.len())
        })
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FsFile for SimFile {
    fn sync(&mut self) -> io::Result<()> {
        self.fs.with(|st| {
            st.room()?;
            st.log.push(Op::Sync { inode: self.inode });
            Ok(())
        })
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.with(|st| {
            for d in dir.ancestors() {
                st.dirs.insert(d.to_path_buf());
            }
        });
        Ok(())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let inode = self.with(|st| {
            st.room()?;
            if !path.parent().is_some_and(|d| st.dirs.contains(d)) {
                return Err(not_found(path.parent().unwrap_or(path)));
            }
            if let Some(&inode) = st.names.get(path) {
                st.files[inode].clear();
                st.log.push(Op::Truncate { inode });
                return Ok(inode);
            }
            let inode = st.files.len();
            st.files.push(Vec::new());
            st.names.insert(path.to_path_buf(), inode);
            st.log.push(Op::Link {
                path: path.to_path_buf(),
                inode,
            });
            Ok(inode)
        })?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            inode,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.with(|st| {
            st.room()?;
            let inode = st.names.remove(from).ok_or_else(|| not_found(from))?;
            st.names.insert(to.to_path_buf(), inode);
            st.log.push(Op::Link {
                path: to.to_path_buf(),
                inode,
            });
            st.log.push(Op::Unlink {
                path: from.to_path_buf(),
            });
            Ok(())
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.with(|st| {
            st.room()?;
            if !st.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            st.log.push(Op::SyncDir {
                dir: dir.to_path_buf(),
            });
            Ok(())
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.with(|st| {
            st.names
                .get(path)
                .map(|&i| st.files[i].clone())
                .ok_or_else(|| not_found(path))
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.with(|st| {
            st.names.remove(path).ok_or_else(|| not_found(path))?;
            st.log.push(Op::Unlink {
                path: path.to_path_buf(),
            });
            Ok(())
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.with(|st| {
            if !st.dirs.contains(dir) {
                return Err(not_found(dir));
            }
            Ok(st
                .names
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect())
        })
    }

    fn exists(&self, path: &Path) -> bool {
        self.with(|st| st.names.contains_key(path) || st.dirs.contains(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &str, bytes: &[u8], sync: bool) {
        let mut f = fs.create(Path::new(path)).unwrap();
        f.write_all(bytes).unwrap();
        if sync {
            f.sync().unwrap();
        }
    }

    #[test]
    fn only_what_was_made_durable_survives_every_crash() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        write(&fs, "/d/a", &[1; 10_000], true);
        fs.sync_dir(Path::new("/d")).unwrap();
        let durable = fs.log_len();
        write(&fs, "/d/b", &[2; 10_000], true); // synced, its entry not
        write(&fs, "/d/a2", &[3; 10_000], false);
        fs.rename(Path::new("/d/a2"), Path::new("/d/a")).unwrap(); // rename without dir sync
        let mut saw = BTreeSet::new();
        for seed in 0..200 {
            let img = fs.crash_image(fs.log_len(), seed);
            let a = &img.files[Path::new("/d/a")];
            // `a` is the old file whole, or the new one's entry with torn content.
            assert!(a == &vec![1; 10_000] || a.iter().all(|&x| x == 0 || x == 3));
            saw.insert((
                a.first().copied().unwrap_or(0),
                img.files.contains_key(Path::new("/d/b")),
                a.len(),
            ));
        }
        // Every outcome happened: old a, torn or lost new a, b present or absent.
        assert!(saw.contains(&(1, true, 10_000)) && saw.contains(&(1, false, 10_000)));
        assert!(saw.iter().any(|&(x, _, len)| x != 1 && len == 0));
        assert!(saw.iter().any(|&(x, _, len)| x != 1 && len == 10_000));
        // Before the undurable steps, the image is exactly the durable state.
        for seed in 0..20 {
            let img = fs.crash_image(durable, seed);
            assert_eq!(img.files.len(), 1);
            assert_eq!(img.files[Path::new("/d/a")], vec![1; 10_000]);
        }
        // The same seed draws the same image.
        let (x, y) = (fs.crash_image(7, 42), fs.crash_image(7, 42));
        assert_eq!(x.files, y.files);
    }
}
