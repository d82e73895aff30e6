//! [`Slurm`]: runs the Slurm client tools. Submission (`sbatch --parsable`, one `slurm.json`
//! per run), state queries (`squeue -t all` + `scontrol -o show job`; no `sacct`), `scancel`,
//! and up-front validation of a request against the cluster (tools present, partition known,
//! request satisfiable by some node, store writable).

use super::parse::{self, NodeInfo, PartitionInfo, TaskStatus};
use super::record::{self, SlurmRecord};
use super::script::{self, ArrayJob, ChunkPlacement, JobRef};
use super::{SlurmError, SlurmOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The client tools this backend calls.
pub const TOOLS: [&str; 5] = ["sbatch", "squeue", "scontrol", "scancel", "sinfo"];

/// Handle on the Slurm client tools of one cluster.
#[derive(Debug, Clone, Default)]
pub struct Slurm {
    /// Directory holding the tools; None: found on `PATH`.
    bin_dir: Option<PathBuf>,
    /// Extra environment for every call (e.g. `SLURM_CONF` of a test cluster).
    env: Vec<(String, String)>,
}

/// One submitted chunk of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedChunk {
    pub job_id: u64,
    pub script: PathBuf,
    pub offset: usize,
    pub count: usize,
}

/// One run's task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedTask {
    pub run_dir: PathBuf,
    pub job: JobRef,
}

/// The result of submitting one [`ArrayJob`] (one or more chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedArray {
    pub task_list: PathBuf,
    pub chunks: Vec<SubmittedChunk>,
    /// One entry per run directory, in the array's order.
    pub tasks: Vec<SubmittedTask>,
}

/// Where the scripts of one submission go: `<store>/slurm/<sweep>-<timestamp>-<g>[-<k>]...`
/// for the `g`-th array submitted and its `k`-th chunk.
#[derive(Debug, Clone)]
pub struct Submission {
    pub dir: PathBuf,
    pub stem: String,
    next_array: usize,
}

impl Submission {
    /// Scripts under `<store>/slurm/`, named after the sweep and the current UTC time.
    pub fn new(store: &Path, sweep_name: &str) -> Self {
        let safe: String = sweep_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            dir: store.join("slurm"),
            stem: format!("{safe}-{}", record::compact_timestamp(SystemTime::now())),
            next_array: 0,
        }
    }
}

/// What validation learnt about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub max_array_size: u32,
    pub partition: PartitionInfo,
    /// The partition's nodes.
    pub nodes: Vec<NodeInfo>,
}

impl Slurm {
    /// Tools from `PATH`, configuration from the environment (`SLURM_CONF` or the default).
    pub fn from_env() -> Self {
        Self::default()
    }

    /// Tools from `dir` instead of `PATH`.
    pub fn with_bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable for every call (e.g. `SLURM_CONF`).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The path of a tool, or [`SlurmError::NotInstalled`].
    pub fn program(&self, name: &str) -> Result<PathBuf, SlurmError> {
        let found = match &self.bin_dir {
            Some(d) => Some(d.join(name)).filter(|p| is_executable(p)),
            None => std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(name))
                    .find(|p| is_executable(p))
            }),
        };
        found.ok_or_else(|| SlurmError::NotInstalled {
            program: name.to_string(),
        })
    }

    /// Checks that every client tool is present.
    pub fn check_installed(&self) -> Result<(), SlurmError> {
        for t in TOOLS {
            self.program(t)?;
        }
        Ok(())
    }

    fn command(&self, tool: &str, args: &[&str]) -> Result<(Command, String), SlurmError> {
        let mut cmd = Command::new(self.program(tool)?);
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Ok((cmd, format!("{tool} {}", args.join(" "))))
    }

    /// Runs a tool and returns its stdout; a non-zero exit is an error carrying stderr.
    pub fn run(&self, tool: &str, args: &[&str]) -> Result<String, SlurmError> {
        let (mut cmd, shown) = self.command(tool, args)?;
        let mut attempt = 0;
        let out = loop {
            match cmd.output() {
                // ETXTBSY: a freshly written executable is still open in a process that another
                // thread forked at that moment; it goes away within milliseconds.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => {
                    break r.map_err(|source| SlurmError::Spawn {
                        command: shown.clone(),
                        source,
                    })?;
                }
            }
        };
        if !out.status.success() {
            return Err(SlurmError::Command {
                command: shown,
                status: out
                    .status
                    .code()
                    .map_or_else(|| "by signal".into(), |c| c.to_string()),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The cluster's `MaxArraySize` (`scontrol show config`): array indices must stay below it.
    pub fn max_array_size(&self) -> Result<u32, SlurmError> {
        let out = self.run("scontrol", &["show", "config"])?;
        parse::parse_max_array_size(&out).ok_or_else(|| SlurmError::Output {
            command: "scontrol show config".into(),
            message: "no MaxArraySize line".into(),
            output: out.chars().take(400).collect(),
        })
    }

    /// Checks, before anything is written or submitted, that the tools are installed, the
    /// options are well-formed, the partition exists and is up, some node of it can satisfy
    /// one task's request, and (only then, creating `<store>/slurm/`) the store is writable.
    pub fn validate(&self, opts: &SlurmOptions, store: &Path) -> Result<ClusterInfo, SlurmError> {
        opts.validate()?;
        self.check_installed()?;

        let parts = parse::parse_partitions(&self.run("scontrol", &["-o", "show", "partition"])?);
        let names = || {
            parts
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let partition = match &opts.partition {
            Some(want) => parts
                .iter()
                .find(|p| &p.name == want)
                .cloned()
                .ok_or_else(|| SlurmError::UnknownPartition {
                    partition: want.clone(),
                    available: names(),
                })?,
            None => parts.iter().find(|p| p.default).cloned().ok_or_else(|| {
                SlurmError::UnknownPartition {
                    partition: "(cluster default)".into(),
                    available: format!("{} (none is the default: set --partition)", names()),
                }
            })?,
        };
        let impossible = |message: String| SlurmError::Impossible {
            partition: partition.name.clone(),
            message,
        };
        if partition.state != "UP" {
            return Err(impossible(format!(
                "partition state is {}: jobs would not start (choose another --partition)",
                partition.state
            )));
        }
        if let (Some(want), Some(max)) = (opts.time_seconds()?, partition.max_time_s)
            && want > max
        {
            return Err(impossible(format!(
                "--time {} exceeds the partition's MaxTime of {} (lower --time)",
                opts.time.as_deref().unwrap_or_default(),
                fmt_duration(max)
            )));
        }
        let out = self.run(
            "sinfo",
            &["-h", "-N", "-p", &partition.name, "-o", parse::SINFO_FORMAT],
        )?;
        let nodes: Vec<NodeInfo> = parse::parse_sinfo_nodes(&out)
            .map_err(|message| SlurmError::Output {
                command: "sinfo".into(),
                message,
                output: out.clone(),
            })?
            .into_iter()
            .filter(|n| n.partition == partition.name)
            .collect();
        if nodes.is_empty() {
            return Err(impossible("the partition has no nodes".into()));
        }
        let cpus = opts.cpus_per_task.unwrap_or(1);
        let gpus = opts.gpus_per_task.unwrap_or(0);
        let mem = opts.mem_mb()?.unwrap_or(0);
        if !nodes
            .iter()
            .any(|n| n.cpus >= cpus && n.gpus >= gpus && n.memory_mb >= mem)
        {
            let max_cpu = nodes.iter().map(|n| n.cpus).max().unwrap_or(0);
            let max_gpu = nodes.iter().map(|n| n.gpus).max().unwrap_or(0);
            let max_mem = nodes.iter().map(|n| n.memory_mb).max().unwrap_or(0);
            return Err(impossible(format!(
                "no node has {cpus} CPUs, {gpus} GPUs and {mem} MB for one task (largest node values: {max_cpu} CPUs, {max_gpu} GPUs, {max_mem} MB); lower --cpus-per-task/--gpus-per-task/--mem or choose another --partition"
            )));
        }
        let max_array_size = self.max_array_size()?;
        // Last: the first check that writes anything, so that a refused request leaves no
        // empty `<store>/slurm/` behind.
        check_writable(&store.join("slurm"))?;
        Ok(ClusterInfo {
            max_array_size,
            partition,
            nodes,
        })
    }

    /// Writes the task list and the chunk scripts of `job` under `submission.dir`, submits each
    /// chunk with `sbatch --parsable`, and records `slurm.json` in every run directory.
    /// `max_array_size` comes from [`Slurm::max_array_size`] (or [`ClusterInfo`]).
    pub fn submit_array(
        &self,
        submission: &mut Submission,
        job: &ArrayJob,
        opts: &SlurmOptions,
        max_array_size: u32,
    ) -> Result<SubmittedArray, SlurmError> {
        job.validate()?;
        opts.validate()?;
        for d in &job.run_dirs {
            if !d.is_dir() {
                return Err(SlurmError::RunDir {
                    path: d.clone(),
                    message: "does not exist (write the run's spec before submitting)".into(),
                });
            }
        }
        let g = submission.next_array;
        submission.next_array += 1;
        let base = format!("{}-{g}", submission.stem);
        let task_list = submission.dir.join(format!("{base}.tasks"));
        crate::fsutil::write_atomic(&task_list, script::render_task_list(job).as_bytes())?;

        let mut result = SubmittedArray {
            task_list: task_list.clone(),
            chunks: Vec::new(),
            tasks: Vec::new(),
        };
        let chunks = script::plan_chunks(job.run_dirs.len(), max_array_size);
        let many = chunks.len() > 1;
        for (k, (offset, count)) in chunks.into_iter().enumerate() {
            let name = if many {
                format!("{base}-{k}")
            } else {
                base.clone()
            };
            let placement = ChunkPlacement {
                task_list: task_list.clone(),
                offset,
                count,
                slurm_log: submission.dir.join(format!("{name}.%A_%a.out")),
            };
            let text = script::render_script(job, opts, &placement)?;
            let script_path = submission.dir.join(format!("{name}.sbatch"));
            crate::fsutil::write_atomic(&script_path, text.as_bytes())?;
            let out = self.run("sbatch", &["--parsable", &script_path.to_string_lossy()]).map_err(|e| {
                let done: Vec<String> = result.chunks.iter().map(|c| c.job_id.to_string()).collect();
                if done.is_empty() {
                    e
                } else {
                    SlurmError::Other(format!(
                        "{e} (chunks already submitted as jobs {}: cancel them with scancel or rerun)",
                        done.join(" ")
                    ))
                }
            })?;
            let (job_id, cluster) = parse_parsable(&out)?;
            let submitted_at = record::rfc3339(SystemTime::now());
            for i in 0..count {
                let run_dir = job.run_dirs[offset + i].clone();
                let rec = SlurmRecord {
                    job_id,
                    array_task_id: i as u32,
                    job_name: job.name.clone(),
                    cluster: cluster.clone(),
                    script: script_path.clone(),
                    submitted_at: submitted_at.clone(),
                };
                rec.write(&run_dir)?;
                result.tasks.push(SubmittedTask {
                    run_dir,
                    job: rec.job_ref(),
                });
            }
            result.chunks.push(SubmittedChunk {
                job_id,
                script: script_path,
                offset,
                count,
            });
        }
        Ok(result)
    }

    /// The state of every task of the given array jobs that Slurm still knows (finished tasks
    /// are forgotten `MinJobAge` seconds after their end). Exit codes are filled in for
    /// tasks that have ended.
    pub fn query(&self, array_job_ids: &[u64]) -> Result<Vec<TaskStatus>, SlurmError> {
        if array_job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = array_job_ids.iter().map(u64::to_string).collect();
        let ids = ids.join(",");
        let out = match self.run(
            "squeue",
            &[
                "-h",
                "-t",
                "all",
                "-r",
                "-j",
                &ids,
                "-o",
                parse::SQUEUE_FORMAT,
            ],
        ) {
            Ok(o) => o,
            // squeue fails only when none of the ids is known any more.
            Err(SlurmError::Command { stderr, .. }) if stderr.contains("Invalid job id") => {
                String::new()
            }
            Err(e) => return Err(e),
        };
        let mut tasks = parse::parse_squeue(&out).map_err(|message| SlurmError::Output {
            command: "squeue".into(),
            message,
            output: out.chars().take(400).collect(),
        })?;
        tasks.retain(|t| array_job_ids.contains(&t.array_job_id));
        let ended: BTreeSet<u64> = tasks
            .iter()
            .filter(|t| t.state.is_terminal())
            .map(|t| t.array_job_id)
            .collect();
        let mut codes = BTreeMap::new();
        for id in ended {
            let out = match self.run("scontrol", &["-o", "show", "job", &id.to_string()]) {
                Ok(o) => o,
                Err(SlurmError::Command { stderr, .. }) if stderr.contains("Invalid job id") => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let recs = parse::parse_scontrol_jobs(&out).map_err(|message| SlurmError::Output {
                command: format!("scontrol -o show job {id}"),
                message,
                output: out.chars().take(400).collect(),
            })?;
            for r in recs {
                if let Some(code) = r.exit_code {
                    codes.insert((r.array_job_id, r.task_id), code);
                }
            }
        }
        for t in &mut tasks {
            if t.state.is_terminal() {
                t.exit_code = codes.get(&(t.array_job_id, t.task_id)).copied();
            }
        }
        Ok(tasks)
    }

    /// The Slurm state of each recorded run (same order); None where Slurm no longer knows
    /// the task or the job with that id is not ours (a different name).
    pub fn status_of(
        &self,
        records: &[SlurmRecord],
    ) -> Result<Vec<Option<TaskStatus>>, SlurmError> {
        let ids: Vec<u64> = records
            .iter()
            .map(|r| r.job_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let all = self.query(&ids)?;
        Ok(records
            .iter()
            .map(|r| {
                all.iter()
                    .find(|t| {
                        t.array_job_id == r.job_id
                            && t.task_id == r.array_task_id
                            && t.name == r.job_name
                    })
                    .cloned()
            })
            .collect())
    }

    /// Cancels the given tasks (`scancel 12_3 12_4 ...`). Tasks that already ended or that
    /// Slurm forgot are not an error.
    pub fn cancel(&self, tasks: &[JobRef]) -> Result<(), SlurmError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let refs: Vec<String> = tasks.iter().map(JobRef::to_string).collect();
        let args: Vec<&str> = refs.iter().map(String::as_str).collect();
        match self.run("scancel", &args) {
            Ok(_) => Ok(()),
            Err(SlurmError::Command {
                stderr,
                command,
                status,
            }) => {
                let serious: Vec<&str> = stderr
                    .lines()
                    .filter(|l| {
                        !l.contains("already completing or completed")
                            && !l.contains("Invalid job id")
                    })
                    .filter(|l| !l.trim().is_empty())
                    .collect();
                if serious.is_empty() {
                    Ok(())
                } else {
                    Err(SlurmError::Command {
                        command,
                        status,
                        stderr: serious.join("\n"),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl Slurm {
    /// Sends `signal` (e.g. `USR2`) to the batch shell of each task (`scancel --batch
    /// --signal=SIG`), which the wrapper forwards to the run: the same path as Slurm's own
    /// preemption warning, usable to make runs checkpoint and stop early.
    pub fn signal_tasks(&self, tasks: &[JobRef], signal: &str) -> Result<(), SlurmError> {
        if signal.is_empty() || !signal.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(SlurmError::Option {
                option: "signal".into(),
                message: format!("'{signal}' is not a signal name (for example USR2)"),
            });
        }
        if tasks.is_empty() {
            return Ok(());
        }
        let sig = format!("--signal={signal}");
        let refs: Vec<String> = tasks.iter().map(JobRef::to_string).collect();
        let mut args = vec!["--batch", sig.as_str()];
        args.extend(refs.iter().map(String::as_str));
        self.run("scancel", &args).map(|_| ())
    }
}

/// Parses `sbatch --parsable` output: `ID` or `ID;CLUSTER`.
pub fn parse_parsable(out: &str) -> Result<(u64, Option<String>), SlurmError> {
    let line = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    let (id, cluster) = match line.split_once(';') {
        Some((i, c)) => (i, Some(c.to_string())),
        None => (line, None),
    };
    let id = id.parse().map_err(|_| SlurmError::Output {
        command: "sbatch --parsable".into(),
        message: "expected a job id".into(),
        output: out.to_string(),
    })?;
    Ok((id, cluster))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Creates `dir` and writes (then removes) a probe file in it.
fn check_writable(dir: &Path) -> Result<(), SlurmError> {
    let err = |source| SlurmError::StoreNotWritable {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    tempfile::Builder::new()
        .prefix(".probe-")
        .tempfile_in(dir)
        .map_err(err)?;
    Ok(())
}

fn fmt_duration(s: u64) -> String {
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}-{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::SlurmState;
    use crate::slurm::testutil::Fake;

    #[test]
    fn missing_sbatch_is_a_clear_error() {
        let empty = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let e = Slurm::from_env()
            .with_bin_dir(empty.path())
            .validate(&SlurmOptions::default(), store.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sbatch` not found") && e.contains("--backend local"),
            "{e}"
        );
    }

    #[test]
    fn validation_checks_partition_and_request() {
        let f = Fake::new();
        let store = tempfile::tempdir().unwrap();
        let s = f.slurm();
        let refused = SlurmOptions {
            partition: Some("gpus".into()),
            ..Default::default()
        };
        s.validate(&refused, store.path()).unwrap_err();
        assert!(
            !store.path().join("slurm").exists(),
            "a refused request writes nothing"
        );
        let info = s.validate(&SlurmOptions::default(), store.path()).unwrap();
        assert_eq!(
            (info.partition.name.as_str(), info.max_array_size),
            ("debug", 2)
        );
        assert!(store.path().join("slurm").is_dir());

        let with = |o: SlurmOptions| {
            s.validate(&o, store.path())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let e = with(SlurmOptions {
            partition: Some("gpus".into()),
            ..Default::default()
        });
        assert!(
            e.contains("'gpus' does not exist") && e.contains("debug, gpu, old"),
            "{e}"
        );
        let e = with(SlurmOptions {
            cpus_per_task: Some(4),
            ..Default::default()
        });
        assert!(
            e.contains("no node has 4 CPUs") && e.contains("'debug'"),
            "{e}"
        );
        let e = with(SlurmOptions {
            gpus_per_task: Some(1),
            ..Default::default()
        });
        assert!(e.contains("1 GPUs"), "{e}");
        let e = with(SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("2-00:00:00".into()),
            ..Default::default()
        });
        assert!(e.contains("MaxTime of 1-00:00:00"), "{e}");
        let e = with(SlurmOptions {
            partition: Some("old".into()),
            ..Default::default()
        });
        assert!(e.contains("INACTIVE"), "{e}");
        // A GPU request that fits the GPU partition's node is fine.
        let ok = SlurmOptions {
            partition: Some("gpu".into()),
            gpus_per_task: Some(4),
            cpus_per_task: Some(16),
            mem: Some("200G".into()),
            time: Some("12:00:00".into()),
            ..Default::default()
        };
        assert_eq!(s.validate(&ok, store.path()).unwrap().nodes.len(), 1);
        assert!(f.read("sinfo.log").contains("-p gpu"));
    }

    #[test]
    fn unwritable_store_is_named() {
        let f = Fake::new();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("store");
        std::fs::write(&file, "not a directory").unwrap();
        let e = f
            .slurm()
            .validate(&SlurmOptions::default(), &file)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store") && e.contains("not writable") && e.contains("store/slurm"),
            "{e}"
        );
    }

    #[test]
    fn submit_chunks_at_max_array_size_and_records_each_run() {
        let f = Fake::new();
        let store = tempfile::tempdir().unwrap();
        let runs: Vec<PathBuf> = (0..5)
            .map(|i| store.path().join(format!("finetune-{i}")))
            .collect();
        for r in &runs {
            std::fs::create_dir(r).unwrap();
        }
        let s = f.slurm();
        let mut sub = Submission::new(store.path(), "demo sweep");
        assert!(sub.stem.starts_with("demo_sweep-20"), "{}", sub.stem);
        let mut job = ArrayJob::new("primer-demo", runs.clone(), vec!["true".into()]);
        job.after_ok = vec!["7_1".into()];
        let opts = SlurmOptions {
            array_throttle: Some(1),
            ..Default::default()
        };
        let max = s.max_array_size().unwrap();
        let a = s.submit_array(&mut sub, &job, &opts, max).unwrap();
        let ids: Vec<(u64, usize, usize)> = a
            .chunks
            .iter()
            .map(|c| (c.job_id, c.offset, c.count))
            .collect();
        assert_eq!(ids, vec![(100, 0, 2), (101, 2, 2), (102, 4, 1)]);
        let refs: Vec<String> = a.tasks.iter().map(|t| t.job.to_string()).collect();
        assert_eq!(refs, vec!["100_0", "100_1", "101_0", "101_1", "102_0"]);
        let rec = SlurmRecord::read(&runs[3]).unwrap().unwrap();
        assert_eq!(
            (rec.job_id, rec.array_task_id, rec.job_name.as_str()),
            (101, 1, "primer-demo")
        );
        assert_eq!(rec.script, a.chunks[1].script);
        let script = std::fs::read_to_string(&a.chunks[2].script).unwrap();
        assert!(
            script.contains("#SBATCH --array=0-0%1\n") && script.contains("\noffset=4\n"),
            "{script}"
        );
        assert!(script.contains("#SBATCH --dependency=afterok:7_1\n"));
        assert_eq!(
            std::fs::read_to_string(&a.task_list)
                .unwrap()
                .lines()
                .count(),
            5,
            "one task list shared by the chunks"
        );
        assert!(a.chunks[0].script.starts_with(store.path().join("slurm")));
        assert!(
            f.read("sbatch.log")
                .lines()
                .all(|l| l.starts_with("--parsable "))
        );
        // The next array of the same submission gets its own files.
        let b = s
            .submit_array(
                &mut sub,
                &ArrayJob::new("primer-demo", runs[..1].to_vec(), vec!["true".into()]),
                &opts,
                max,
            )
            .unwrap();
        assert_ne!(b.task_list, a.task_list);
        assert_eq!(SlurmRecord::read(&runs[0]).unwrap().unwrap().job_id, 103);
    }

    #[test]
    fn submit_refuses_missing_run_dirs() {
        let f = Fake::new();
        let store = tempfile::tempdir().unwrap();
        let job = ArrayJob::new(
            "primer-demo",
            vec![store.path().join("nope")],
            vec!["true".into()],
        );
        let e = f
            .slurm()
            .submit_array(
                &mut Submission::new(store.path(), "s"),
                &job,
                &SlurmOptions::default(),
                10,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
        assert_eq!(f.read("sbatch.log"), "");
    }

    #[test]
    fn query_merges_squeue_states_and_scontrol_exit_codes() {
        let f = Fake::new();
        f.write("squeue.txt", include_str!("fixtures/squeue_finished.txt"));
        f.write("job_3", include_str!("fixtures/scontrol_job_finished.txt"));
        let s = f.slurm();
        let v = s.query(&[3]).unwrap();
        assert_eq!(v.len(), 4, "only array 3's tasks: {v:?}");
        let t1 = v.iter().find(|t| t.task_id == 1).unwrap();
        assert_eq!(t1.state, SlurmState::Failed);
        assert_eq!(
            t1.describe(),
            "failed with Slurm state FAILED exit 3:0 (NonZeroExitCode)"
        );
        assert!(
            f.read("squeue.log")
                .contains("-h -t all -r -j 3 -o %F|%K|%A|%T|%r|%j")
        );

        let rec = |job_id, task, name: &str| SlurmRecord {
            job_id,
            array_task_id: task,
            job_name: name.into(),
            cluster: None,
            script: PathBuf::new(),
            submitted_at: String::new(),
        };
        let st = s
            .status_of(&[
                rec(3, 2, "fxarr"),
                rec(3, 2, "someone-else"),
                rec(3, 9, "fxarr"),
            ])
            .unwrap();
        assert_eq!(
            st[0].as_ref().unwrap().describe(),
            "failed with Slurm state CANCELLED exit 0:15"
        );
        assert_eq!(st[1], None, "a job id reused by another job is not ours");
        assert_eq!(st[2], None);

        // Slurm forgot every job (after MinJobAge): no states, no error.
        std::fs::remove_file(f.dir.path().join("squeue.txt")).unwrap();
        assert!(s.query(&[3]).unwrap().is_empty());
    }

    #[test]
    fn cancel_tolerates_finished_tasks_only() {
        let f = Fake::new();
        let s = f.slurm();
        let r = |a, t| JobRef {
            array_job_id: a,
            task_id: t,
        };
        s.cancel(&[r(3, 1), r(4, 0)]).unwrap();
        assert_eq!(f.read("scancel.log"), "3_1 4_0\n");
        s.signal_tasks(&[r(5, 2)], "USR2").unwrap();
        assert_eq!(
            f.read("scancel.log"),
            "3_1 4_0\n--batch --signal=USR2 5_2\n"
        );
        assert!(s.signal_tasks(&[r(5, 2)], "USR2; rm").is_err());
        f.write("scancel_err", "scancel: error: Kill job error on job id 3_1: Job/step already completing or completed\n");
        s.cancel(&[r(3, 1)]).unwrap();
        f.write("scancel_err", "scancel: error: Access/permission denied\n");
        let e = s.cancel(&[r(3, 1)]).unwrap_err().to_string();
        assert!(e.contains("permission denied"), "{e}");
    }

    #[test]
    fn parsable_output() {
        assert_eq!(parse_parsable("42\n").unwrap(), (42, None));
        assert_eq!(
            parse_parsable("42;cluster1\n").unwrap(),
            (42, Some("cluster1".into()))
        );
        assert!(parse_parsable("Submitted batch job 42").is_err());
    }
}
