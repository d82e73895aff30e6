//! Atomic file output: every result primer writes goes to a temporary file in the target's
//! directory and is renamed into place, so a crash never leaves a half-written file behind.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors from writing results to disk, always naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The output folder exists and is not an earlier output of the same command: replacing
    /// it would delete what someone else put there.
    #[error(
        "{path} already exists and holds files this command did not write ({}); \
         choose another output folder, or move them away",
        .foreign.join(", ")
    )]
    Occupied { path: PathBuf, foreign: Vec<String> },
    #[error(
        "{path} is a file, and this command writes a folder there: choose another output folder"
    )]
    NotAFolder { path: PathBuf },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically (temp file in the same directory + fsync + rename).
/// Parent directories are created.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(write_err(path))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map_err(write_err(path))?;
    tmp.write_all(bytes).map_err(write_err(path))?;
    persist_temp_file(tmp, path)
}

/// Moves a finished temporary file (created in `path`'s folder) to `path`: readable by all,
/// synced, then renamed, so that `path` is either the old file or the whole new one.
pub fn persist_temp_file(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), FsError> {
    // tempfile creates 0600; results are for reading (and serving), like any file written
    // with the usual umask.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let perm = std::fs::Permissions::from_mode(0o644);
        tmp.as_file()
            .set_permissions(perm)
            .map_err(write_err(path))?;
    }
    tmp.as_file().sync_all().map_err(write_err(path))?;
    tmp.persist(path).map_err(|e| FsError::Write {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> Result<(), FsError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| FsError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads and deserialises a JSON file, naming the file (and line/column) on error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FsError> {
    let text = std::fs::read_to_string(path).map_err(|source| FsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| FsError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Checks, before any work is done, that the folder `target` may be replaced by a
/// [`StagedDir`]: it does not exist, is empty, or `is_own_output` recognises the names of its
/// entries as an earlier output of the same command. A folder holding anything else (a user's
/// notes, a results tree, a pretrained model) is refused, since its commit would delete it.
pub fn ensure_replaceable(
    target: &Path,
    is_own_output: impl Fn(&[String]) -> bool,
) -> Result<(), FsError> {
    if target.is_file() {
        return Err(FsError::NotAFolder {
            path: target.to_path_buf(),
        });
    }
    let entries = match std::fs::read_dir(target) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(FsError::Read {
                path: target.to_path_buf(),
                source,
            });
        }
    };
    let mut names = entries
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| FsError::Read {
            path: target.to_path_buf(),
            source,
        })?;
    if names.is_empty() || is_own_output(&names) {
        return Ok(());
    }
    names.sort();
    const SHOWN: usize = 5;
    if names.len() > SHOWN {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        names.push(format!("{more} more"));
    }
    Err(FsError::Occupied {
        path: target.to_path_buf(),
        foreign: names,
    })
}

/// A directory that becomes visible under its final name only once complete: build it under
/// a temporary sibling, then [`StagedDir::commit`] renames it into place (replacing an older one).
pub struct StagedDir {
    tmp: Option<tempfile::TempDir>,
    target: PathBuf,
}

/// Whether a process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The file name of `target` as the staging and set-aside names embed it.
fn target_name(target: &Path) -> String {
    target
        .file_name()
        .map_or_else(|| "out".to_string(), |n| n.to_string_lossy().into_owned())
}

/// `.staging-<name>-`: what a staging folder of `target` is named before `<pid>-<random>`.
fn staging_prefix(target: &Path) -> String {
    format!(".staging-{}-", target_name(target))
}

/// `<name>.old-`: what a set-aside folder of `target` is named before `<pid>`.
fn set_aside_prefix(target: &Path) -> String {
    format!("{}.old-", target_name(target))
}

/// `<target>.old-<pid>`: where [`StagedDir::commit`] moves the directory it replaces.
fn set_aside_path(target: &Path, pid: u32) -> PathBuf {
    target.with_file_name(format!("{}{pid}", set_aside_prefix(target)))
}

/// Removes what a killed writer of `target` left in `parent`: its staging folders
/// (`.staging-<name>-<pid>-*`) and a replaced folder it had set aside (`<name>.old-<pid>`),
/// for every pid that no longer runs. A checkpoint is hundreds of megabytes, and a run killed
/// while writing one (Ctrl-C twice, the OOM killer, a Slurm time limit) would otherwise leave
/// a copy behind at every retry. Folders of live writers are left alone.
fn remove_abandoned(parent: &Path, target: &Path) {
    let (staging, set_aside) = (staging_prefix(target), set_aside_prefix(target));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let pid = if let Some(rest) = file_name.strip_prefix(&staging) {
            // `<pid>-<random>`, the random part alphanumeric: anything else is another
            // target's (`<name>-2`'s) staging folder.
            rest.split_once('-')
                .filter(|(_, random)| !random.contains('-'))
                .map(|(pid, _)| pid)
        } else {
            file_name.strip_prefix(&set_aside)
        };
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            // Best effort: what cannot be removed now is tried again at the next write.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl StagedDir {
    pub fn new(target: &Path) -> Result<Self, FsError> {
        let parent = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(write_err(target))?;
        remove_abandoned(&parent, target);
        // The pid in the name lets a later writer tell an abandoned staging folder from one
        // still being written.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(
                "{}{}-",
                staging_prefix(target),
                std::process::id()
            ))
            .tempdir_in(&parent)
            .map_err(write_err(target))?;
        Ok(Self {
            tmp: Some(tmp),
            target: target.to_path_buf(),
        })
    }

    /// Where to write the directory's files before committing.
    pub fn path(&self) -> &Path {
        self.tmp
            .as_ref()
            .expect("staged dir already committed")
            .path()
    }

    /// Moves the finished directory into place. An existing directory at the target is
    /// replaced (moved aside first, then removed).
    pub fn commit(mut self) -> Result<PathBuf, FsError> {
        let tmp = self.tmp.take().expect("staged dir already committed");
        let staged = tmp.keep();
        if self.target.exists() {
            let old = set_aside_path(&self.target, std::process::id());
            std::fs::rename(&self.target, &old).map_err(write_err(&self.target))?;
            std::fs::rename(&staged, &self.target).map_err(write_err(&self.target))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&staged, &self.target).map_err(write_err(&self.target))?;
        }
        Ok(self.target.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/metrics.json");
        write_json_atomic(&p, &serde_json::json!({"f1": 0.5})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"f1": 0.75})).unwrap();
        let v: serde_json::Value = read_json(&p).unwrap();
        assert_eq!(v["f1"], 0.75);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["metrics.json".to_string()]);
    }

    #[test]
    fn staged_dir_appears_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt");
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("a.txt"), "x").unwrap();
        assert!(!target.exists());
        staged.commit().unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a.txt")).unwrap(), "x");
    }

    /// A pid that no process has: above the kernel's pid_max (at most 2^22).
    const DEAD_PID: u32 = 1 << 30;

    #[test]
    fn a_new_staging_folder_removes_what_killed_writers_left() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("checkpoint");
        let leftovers = [
            format!(".staging-checkpoint-{DEAD_PID}-aB3dE9"),
            format!("checkpoint.old-{DEAD_PID}"),
        ];
        // A live writer's (this test's parent process), another target's and a user's
        // folder stay.
        let parent_pid = std::os::unix::process::parent_id();
        let kept = [
            format!(".staging-checkpoint-{parent_pid}-xY7zQ1"),
            format!(".staging-other-{DEAD_PID}-k2L4m6"),
            format!(".staging-checkpoint-2-{DEAD_PID}-p0Q9r8"),
            "checkpoint.old-notes".to_string(),
        ];
        for name in leftovers.iter().chain(&kept) {
            std::fs::create_dir_all(dir.path().join(name).join("sub")).unwrap();
            std::fs::write(dir.path().join(name).join("sub/w.bin"), "x").unwrap();
        }
        let staged = StagedDir::new(&target).unwrap();
        std::fs::write(staged.path().join("a.txt"), "x").unwrap();
        staged.commit().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected: Vec<String> = kept.to_vec();
        expected.push("checkpoint".to_string());
        expected.sort();
        assert_eq!(names, expected);
    }

    #[test]
    fn committing_over_an_earlier_folder_leaves_only_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("model");
        for content in ["first", "second"] {
            let staged = StagedDir::new(&target).unwrap();
            std::fs::write(staged.path().join("a.txt"), content).unwrap();
            staged.commit().unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(target.join("a.txt")).unwrap(),
            "second"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn ensure_replaceable_refuses_folders_holding_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let only_ckpt = |names: &[String]| names.iter().any(|n| n == "priming.json");
        let target = dir.path().join("out");
        ensure_replaceable(&target, only_ckpt).expect("a missing folder is created");
        std::fs::create_dir(&target).unwrap();
        ensure_replaceable(&target, only_ckpt).expect("an empty folder is replaceable");
        std::fs::write(target.join("notes.txt"), "mine").unwrap();
        let err = ensure_replaceable(&target, only_ckpt)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("notes.txt") && err.contains("choose another output folder"),
            "{err}"
        );
        std::fs::write(target.join("priming.json"), "{}").unwrap();
        ensure_replaceable(&target, only_ckpt).expect("an earlier output is replaceable");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = ensure_replaceable(&file, only_ckpt)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a file"), "{err}");
    }

    #[test]
    fn read_json_names_the_file_on_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        std::fs::write(&p, "{not json").unwrap();
        let err = read_json::<serde_json::Value>(&p).unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
    }
}
