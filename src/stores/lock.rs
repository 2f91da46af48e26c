//! One writer per data dir: an exclusive OS file lock on `skyfuse.lock`, taken when
//! a service that writes local data is built and held for its life.
//!
//! Without it a second process (`skyfuse index` in-process beside a running
//! `serve`) could write the same local stores: the dense store commits the
//! snapshot it loaded at open plus its own writes, so whichever process commits
//! last silently drops the other's vectors, and the manifest hides the loss. tantivy
//! has its own writer lock, but takes it lazily on the first write, so it cannot
//! stop this. The lock is taken before any store is opened, for the data dir and
//! every local store folder outside it, and the holder's pid is written into the
//! lock file so the refusal can say who holds it. The OS releases the lock when the
//! process ends, however it ends: a stale file is never a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file in each locked folder.
pub const LOCK_FILE_NAME: &str = "skyfuse.lock";

/// Held locks; dropping this releases them.
#[derive(Debug)]
pub struct DataDirLock {
    /// The open, locked files: the lock lives as long as they do.
    _files: Vec<File>,
    paths: Vec<PathBuf>,
}

impl DataDirLock {
    /// Locks every folder in `folders` (creating them), or fails naming the lock
    /// file and the process holding it. All or nothing.
    pub fn acquire(folders: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(folders.len());
        let mut paths = Vec::with_capacity(folders.len());
        for folder in folders {
            let path = folder.join(LOCK_FILE_NAME);
            files.push(lock(folder, &path)?);
            paths.push(path);
        }
        Ok(Self {
            _files: files,
            paths,
        })
    }

    /// The lock files held.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

fn lock(folder: &Path, path: &Path) -> Result<File> {
    let context =
        |error: std::io::Error| Error::config(format!("cannot lock {}: {error}", path.display()));
    std::fs::create_dir_all(folder).map_err(context)?;
    // Not truncated on open: until the lock is ours the file names its holder.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(context)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(Error::config(format!(
                "{} is in use by {holder} (it holds the lock {}): only one skyfuse may write a data dir; \
                 stop it, or send this command to it with --server",
                folder.display(),
                path.display()
            )));
        }
        Err(TryLockError::Error(error)) => return Err(context(error)),
    }
    file.set_len(0).map_err(context)?;
    writeln!(file, "{}", std::process::id()).map_err(context)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_lock_file_and_pid_until_the_first_lets_go() {
        let directory = tempfile::tempdir().unwrap();
        let folders = [
            directory.path().join("data"),
            directory.path().join("elsewhere"),
        ];
        let first = DataDirLock::acquire(&folders).unwrap();
        let pid = std::process::id().to_string();
        let written = std::fs::read_to_string(&first.paths()[0]).unwrap();
        assert_eq!(written.trim(), pid);

        // Any one of the folders held is enough to refuse.
        let error = DataDirLock::acquire(&folders[1..]).unwrap_err();
        assert_eq!(error.kind, crate::error::ErrorKind::Config);
        assert!(error.message.contains(&format!("process {pid}")), "{error}");
        assert!(
            error
                .message
                .contains(&folders[1].join(LOCK_FILE_NAME).display().to_string())
        );

        drop(first);
        let again = DataDirLock::acquire(&folders).expect("released on drop");
        assert_eq!(again.paths().len(), 2);
    }
}
