//! `sbatch` script generation for one job array.
//!
//! A sweep's runs are submitted as arrays whose task `i` executes the `offset + i`-th run
//! directory of a task list file (one absolute path per line) written next to the script. The
//! script itself is the per-task wrapper: it maps `SLURM_ARRAY_TASK_ID` to the run directory,
//! sends the task's stdout/stderr into that directory, runs the command in the background so
//! that it can forward the preemption signal (bash defers traps while a foreground child
//! runs), and exits with the command's status so that Slurm's state tells success from failure.
//!
//! Arrays longer than the cluster's `MaxArraySize` are split into chunks: task indices are
//! capped (the largest index is `MaxArraySize - 1`), not task counts, so every chunk is
//! `0-(n-1)` with its own offset into the shared task list.

use super::{SlurmError, SlurmOptions};
use std::fmt;
use std::path::{Path, PathBuf};

/// A reference to one task of a submitted array, `ARRAYJOBID_TASKID` in Slurm syntax
/// (what `--dependency=afterok:` accepts for a single task).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct JobRef {
    pub array_job_id: u64,
    pub task_id: u32,
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.array_job_id, self.task_id)
    }
}

/// Exit status of the wrapper when its task has no run directory (a corrupt or edited task
/// list): distinct from the run's own exit codes so that `ExitCode=97:0` points here.
pub const NO_RUN_DIR_EXIT: i32 = 97;

/// One job array to submit: the same command over a list of run directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayJob {
    /// Slurm job name (`--job-name`), e.g. `primer-<sweep>`; also used to recognise the
    /// sweep's jobs in queue listings.
    pub name: String,
    /// The run directory of each task, in task order (absolute paths).
    pub run_dirs: Vec<PathBuf>,
    /// Program and leading arguments each task runs; the run directory is appended as the last
    /// argument (e.g. `["/usr/bin/primer", "exec", "--run-dir"]`).
    pub command: Vec<String>,
    /// Jobs or array tasks that must complete successfully first (`--dependency=afterok:...`),
    /// in Slurm syntax: `123` (every task of job 123) or `123_4` (one task).
    pub after_ok: Vec<String>,
    /// Working directory of the tasks (`--chdir`); None: the directory `sbatch` runs in.
    /// Relative paths in run specs resolve against it.
    pub workdir: Option<PathBuf>,
    /// File in the run directory receiving the task's stdout (appended across requeues).
    pub stdout_name: String,
    /// File in the run directory receiving the task's stderr; equal to `stdout_name` to merge.
    pub stderr_name: String,
}

impl ArrayJob {
    /// An array with the default log names (`slurm.out`, `slurm.err`) and no dependencies.
    pub fn new(name: impl Into<String>, run_dirs: Vec<PathBuf>, command: Vec<String>) -> Self {
        Self {
            name: name.into(),
            run_dirs,
            command,
            after_ok: Vec::new(),
            workdir: None,
            stdout_name: "slurm.out".into(),
            stderr_name: "slurm.err".into(),
        }
    }

    /// Checks what the script generation relies on.
    pub fn validate(&self) -> Result<(), SlurmError> {
        let opt = |option: &str, message: String| SlurmError::Option {
            option: option.into(),
            message,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(opt(
                "job name",
                format!(
                    "'{}' must be non-empty ASCII letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        if self.run_dirs.is_empty() {
            return Err(SlurmError::Other(format!(
                "array '{}' has no runs to submit",
                self.name
            )));
        }
        if self.command.is_empty() {
            return Err(opt("command", "empty command".into()));
        }
        for d in &self.run_dirs {
            let s = d.to_string_lossy();
            if !d.is_absolute() || s.contains('\n') || d.to_str().is_none() {
                return Err(SlurmError::RunDir {
                    path: d.clone(),
                    message: "run directories must be absolute UTF-8 paths without newlines".into(),
                });
            }
        }
        for dep in &self.after_ok {
            let ok = match dep.split_once('_') {
                Some((a, t)) => is_digits(a) && is_digits(t),
                None => is_digits(dep),
            };
            if !ok {
                return Err(opt(
                    "dependency",
                    format!("'{dep}' is not a Slurm job id (123) or array task (123_4)"),
                ));
            }
        }
        for n in [&self.stdout_name, &self.stderr_name] {
            if n.is_empty() || n.contains('/') || n.contains('\n') {
                return Err(opt(
                    "log file name",
                    format!("'{n}' must be a plain file name"),
                ));
            }
        }
        Ok(())
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// Splits `n` tasks into chunks of at most `max_array_size` tasks: `(offset, count)` pairs
/// covering `0..n` in order.
pub fn plan_chunks(n: usize, max_array_size: u32) -> Vec<(usize, usize)> {
    let size = (max_array_size as usize).max(1);
    (0..n).step_by(size).map(|o| (o, size.min(n - o))).collect()
}

/// Single-quotes a string for bash.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A log path pattern as it may appear on an `#SBATCH` line (sbatch splits those lines on
/// whitespace, and `%` starts a filename pattern so it may only appear in the file name).
fn sbatch_path(p: &Path) -> Result<String, SlurmError> {
    let s = p.to_str().ok_or_else(|| SlurmError::RunDir {
        path: p.to_path_buf(),
        message: "not UTF-8".into(),
    })?;
    // The file name carries the `%A_%a` pattern; only the directory part must be plain.
    let dir = s.rsplit_once('/').map_or("", |(d, _)| d);
    if s.chars().any(|c| c.is_whitespace() || "'\"\\".contains(c)) || dir.contains('%') {
        return Err(SlurmError::RunDir {
            path: p.to_path_buf(),
            message: "paths written on #SBATCH lines (the store's slurm/ directory, the working directory) must not contain whitespace, quotes, '\\' or '%': choose paths without them".into(),
        });
    }
    Ok(s.to_string())
}

/// Everything that places one chunk of an array: the task list it reads, its slice of it, and
/// where Slurm itself writes the batch output (messages from before the wrapper switches to
/// the run directory, e.g. a missing task-list line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlacement {
    pub task_list: PathBuf,
    pub offset: usize,
    pub count: usize,
    /// `--output`/`--error` pattern for Slurm's own log, e.g. `<store>/slurm/<base>-%A_%a.out`.
    pub slurm_log: PathBuf,
}

/// The task list file's contents: one run directory per line.
pub fn render_task_list(job: &ArrayJob) -> String {
    let mut s = String::new();
    for d in &job.run_dirs {
        s.push_str(&d.to_string_lossy());
        s.push('\n');
    }
    s
}

/// Renders the `sbatch` script of one chunk of `job`.
pub fn render_script(
    job: &ArrayJob,
    opts: &SlurmOptions,
    chunk: &ChunkPlacement,
) -> Result<String, SlurmError> {
    job.validate()?;
    opts.validate()?;
    if chunk.count == 0 || chunk.offset + chunk.count > job.run_dirs.len() {
        return Err(SlurmError::Other(format!(
            "chunk offset {} count {} outside the {} runs of array '{}'",
            chunk.offset,
            chunk.count,
            job.run_dirs.len(),
            job.name
        )));
    }
    let log = sbatch_path(&chunk.slurm_log)?;
    let chdir = job.workdir.as_deref().map(sbatch_path).transpose()?;
    let signal = opts.signal_spec()?;
    let sig_name = signal
        .trim_start_matches("B:")
        .split('@')
        .next()
        .unwrap_or("USR2")
        .trim_start_matches("SIG")
        .to_string();

    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(
        "# Generated by primer (Slurm backend). Task i runs line offset+i+1 of the task list.\n",
    );
    let mut sb = |line: String| {
        s.push_str("#SBATCH ");
        s.push_str(&line);
        s.push('\n');
    };
    sb(format!("--job-name={}", job.name));
    match opts.array_throttle {
        Some(k) => sb(format!("--array=0-{}%{k}", chunk.count - 1)),
        None => sb(format!("--array=0-{}", chunk.count - 1)),
    }
    sb(format!("--output={log}"));
    sb(format!("--error={log}"));
    sb("--open-mode=append".into());
    sb("--ntasks=1".into());
    if let Some(w) = &chdir {
        sb(format!("--chdir={w}"));
    }
    if let Some(p) = &opts.partition {
        sb(format!("--partition={p}"));
    }
    if let Some(c) = opts.cpus_per_task {
        sb(format!("--cpus-per-task={c}"));
    }
    if let Some(g) = opts.gpus_per_task.filter(|g| *g > 0) {
        sb(format!("--gpus-per-task={g}"));
    }
    if let Some(m) = &opts.mem {
        sb(format!("--mem={m}"));
    }
    if let Some(t) = &opts.time {
        sb(format!("--time={t}"));
    }
    sb(format!("--signal={signal}"));
    if opts.requeue {
        sb("--requeue".into());
    }
    if !job.after_ok.is_empty() {
        sb(format!("--dependency=afterok:{}", job.after_ok.join(":")));
        // A failed dependency cancels the task instead of leaving it pending forever.
        sb("--kill-on-invalid-dep=yes".into());
    }
    for a in &opts.sbatch_args {
        sb(a.clone());
    }

    let task_list = sh_quote(&chunk.task_list.to_string_lossy());
    let command: Vec<String> = job.command.iter().map(|c| sh_quote(c)).collect();
    let redirect = if job.stdout_name == job.stderr_name {
        format!("exec >>\"$run_dir\"/{} 2>&1", sh_quote(&job.stdout_name))
    } else {
        format!(
            "exec >>\"$run_dir\"/{} 2>>\"$run_dir\"/{}",
            sh_quote(&job.stdout_name),
            sh_quote(&job.stderr_name)
        )
    };
    s.push_str(&format!(
        r#"
set -u
task_list={task_list}
offset={offset}
line=$((SLURM_ARRAY_TASK_ID + offset + 1))
run_dir=$(sed -n "${{line}}p" "$task_list")
if [ -z "$run_dir" ] || [ ! -d "$run_dir" ]; then
    echo "primer: array task $SLURM_ARRAY_TASK_ID: no run directory '$run_dir' at line $line of $task_list" >&2
    exit {no_dir}
fi
{redirect}
echo "primer: Slurm task ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} (job ${{SLURM_JOB_ID}}, restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ): $run_dir"
# Slurm sends the preemption warning to this shell only (--signal=B:...): forward it.
child=
trap '[ -n "$child" ] && kill -{sig} "$child" 2>/dev/null' {sig}
{command} "$run_dir" &
child=$!
while :; do
    wait "$child"
    rc=$?
    # wait returns early (status > 128) when a trapped signal arrives: keep waiting.
    kill -0 "$child" 2>/dev/null || break
done
echo "primer: exit status $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
exit $rc
"#,
        offset = chunk.offset,
        no_dir = NO_RUN_DIR_EXIT,
        sig = sig_name,
        command = command.join(" "),
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> ArrayJob {
        ArrayJob::new(
            "primer-demo",
            (0..n)
                .map(|i| PathBuf::from(format!("/store/finetune-{i:02}")))
                .collect(),
            vec!["/opt/bin/primer".into(), "exec".into(), "--run-dir".into()],
        )
    }

    fn chunk(offset: usize, count: usize) -> ChunkPlacement {
        ChunkPlacement {
            task_list: PathBuf::from("/store/slurm/demo-20250101T000000Z-0.tasks"),
            offset,
            count,
            slurm_log: PathBuf::from("/store/slurm/demo-20250101T000000Z-0-1.%A_%a.out"),
        }
    }

    fn sbatch_lines(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter_map(|l| l.strip_prefix("#SBATCH "))
            .collect()
    }

    #[test]
    fn chunks_are_index_capped() {
        assert_eq!(plan_chunks(3, 1001), vec![(0, 3)]);
        assert_eq!(plan_chunks(1001, 1001), vec![(0, 1001)]);
        assert_eq!(plan_chunks(1002, 1001), vec![(0, 1001), (1001, 1)]);
        assert_eq!(plan_chunks(12, 5), vec![(0, 5), (5, 5), (10, 2)]);
        assert_eq!(plan_chunks(0, 5), vec![]);
        assert_eq!(plan_chunks(2, 0), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn default_options_snapshot() {
        let s = render_script(&job(3), &SlurmOptions::default(), &chunk(0, 3)).unwrap();
        assert_eq!(
            sbatch_lines(&s),
            vec![
                "--job-name=primer-demo",
                "--array=0-2",
                "--output=/store/slurm/demo-20250101T000000Z-0-1.%A_%a.out",
                "--error=/store/slurm/demo-20250101T000000Z-0-1.%A_%a.out",
                "--open-mode=append",
                "--ntasks=1",
                "--signal=B:USR2@90",
                "--requeue",
            ]
        );
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("task_list='/store/slurm/demo-20250101T000000Z-0.tasks'\noffset=0\n"));
        assert!(s.contains("exec >>\"$run_dir\"/'slurm.out' 2>>\"$run_dir\"/'slurm.err'"));
        assert!(s.contains("'/opt/bin/primer' 'exec' '--run-dir' \"$run_dir\" &"));
        assert!(s.contains("trap '[ -n \"$child\" ] && kill -USR2 \"$child\" 2>/dev/null' USR2"));
        assert!(s.contains("exit 97"));
    }

    #[test]
    fn full_options_snapshot() {
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_task: Some(1),
            cpus_per_task: Some(8),
            mem: Some("32G".into()),
            time: Some("1-00:00:00".into()),
            array_throttle: Some(4),
            sbatch_args: vec!["--account=nlp".into(), "--qos=high".into()],
            signal: "TERM@120".into(),
            requeue: false,
        };
        let mut j = job(12);
        j.after_ok = vec!["41_0".into(), "41_3".into()];
        j.stdout_name = "log.txt".into();
        j.stderr_name = "log.txt".into();
        j.workdir = Some(PathBuf::from("/home/me/exp"));
        let s = render_script(&j, &opts, &chunk(5, 5)).unwrap();
        assert_eq!(
            sbatch_lines(&s),
            vec![
                "--job-name=primer-demo",
                "--array=0-4%4",
                "--output=/store/slurm/demo-20250101T000000Z-0-1.%A_%a.out",
                "--error=/store/slurm/demo-20250101T000000Z-0-1.%A_%a.out",
                "--open-mode=append",
                "--ntasks=1",
                "--chdir=/home/me/exp",
                "--partition=gpu",
                "--cpus-per-task=8",
                "--gpus-per-task=1",
                "--mem=32G",
                "--time=1-00:00:00",
                "--signal=B:TERM@120",
                "--dependency=afterok:41_0:41_3",
                "--kill-on-invalid-dep=yes",
                "--account=nlp",
                "--qos=high",
            ]
        );
        assert!(s.contains("\noffset=5\n"));
        assert!(s.contains("exec >>\"$run_dir\"/'log.txt' 2>&1\n"));
        assert!(s.contains("kill -TERM"));
    }

    #[test]
    fn chunk_outside_the_array_is_rejected() {
        let e = render_script(&job(3), &SlurmOptions::default(), &chunk(2, 2)).unwrap_err();
        assert!(e.to_string().contains("outside the 3 runs"), "{e}");
    }

    #[test]
    fn invalid_inputs_are_named() {
        let mut j = job(2);
        j.after_ok = vec!["12;rm".into()];
        assert!(j.validate().unwrap_err().to_string().contains("12;rm"));
        let mut j = job(2);
        j.run_dirs[1] = PathBuf::from("relative/run");
        assert!(j.validate().unwrap_err().to_string().contains("absolute"));
        let mut j = job(2);
        j.name = "primer demo".into();
        assert!(j.validate().is_err());
        let mut c = chunk(0, 2);
        c.slurm_log = PathBuf::from("/my store/slurm/x.%A_%a.out");
        assert!(
            render_script(&job(2), &SlurmOptions::default(), &c)
                .unwrap_err()
                .to_string()
                .contains("whitespace")
        );
    }

    #[test]
    fn task_list_and_quoting() {
        let mut j = job(2);
        j.run_dirs[1] = PathBuf::from("/store/it's here");
        assert_eq!(
            render_task_list(&j),
            "/store/finetune-00\n/store/it's here\n"
        );
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(
            JobRef {
                array_job_id: 12,
                task_id: 3
            }
            .to_string(),
            "12_3"
        );
    }

    /// The wrapper must be valid bash and must map task ids through the offset; run it with a
    /// fake Slurm environment (no cluster needed).
    #[test]
    fn wrapper_runs_the_right_run_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("run{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir(d).unwrap();
        }
        let mut j = ArrayJob::new(
            "t",
            dirs.clone(),
            vec![
                "sh".into(),
                "-c".into(),
                "echo ran > \"$1\"/out; exit 3".into(),
                "sh".into(),
            ],
        );
        j.stdout_name = "log".into();
        j.stderr_name = "log".into();
        let list = tmp.path().join("x.tasks");
        std::fs::write(&list, render_task_list(&j)).unwrap();
        let c = ChunkPlacement {
            task_list: list,
            offset: 2,
            count: 2,
            slurm_log: tmp.path().join("x.out"),
        };
        let script = tmp.path().join("x.sbatch");
        std::fs::write(
            &script,
            render_script(&j, &SlurmOptions::default(), &c).unwrap(),
        )
        .unwrap();
        let st = std::process::Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_JOB_ID", "9")
            .status()
            .unwrap();
        assert_eq!(
            st.code(),
            Some(3),
            "the command's exit status is the task's"
        );
        assert!(dirs[3].join("out").exists(), "task 1 + offset 2 = run 3");
        assert!(!dirs[1].join("out").exists());
        let log = std::fs::read_to_string(dirs[3].join("log")).unwrap();
        assert!(log.contains("Slurm task 7_1 (job 9"), "{log}");
        assert!(log.contains("exit status 3"), "{log}");
        // A task beyond the list fails with the dedicated status.
        let st = std::process::Command::new("bash")
            .arg(&script)
            .env("SLURM_ARRAY_TASK_ID", "5")
            .env("SLURM_ARRAY_JOB_ID", "7")
            .env("SLURM_JOB_ID", "9")
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(NO_RUN_DIR_EXIT));
    }
}
