//! Parsers of Slurm's text output and the Slurm state model. Fixtures under `fixtures/` are
//! real output captured from the single-node test cluster (`tests/slurm/cluster.sh`,
//! Slurm 22.05).
//!
//! There is no `sacct` (no slurmdbd on a single-node cluster, nor on many small ones), so task
//! states come from `squeue -t all` (kept `MinJobAge` seconds after the end) and exit codes
//! from `scontrol -o show job`.

use std::collections::BTreeMap;
use std::fmt;

/// The `squeue` output format this module asks for and parses:
/// array job id, array task id, job id, state, reason, name.
pub const SQUEUE_FORMAT: &str = "%F|%K|%A|%T|%r|%j";

/// A Slurm job state (`JOB_STATE_CODES` in squeue(1)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SlurmState {
    Pending,
    Configuring,
    Running,
    Completing,
    Suspended,
    /// REQUEUED, REQUEUE_HOLD, REQUEUE_FED: about to run again.
    Requeued,
    /// Completed with exit code 0.
    Completed,
    Failed,
    Cancelled,
    Timeout,
    OutOfMemory,
    NodeFail,
    BootFail,
    Deadline,
    Preempted,
    /// Any other state name, kept verbatim.
    Other(String),
}

impl SlurmState {
    /// Parses a state name as printed by `squeue %T` or `scontrol JobState=`.
    pub fn parse(s: &str) -> SlurmState {
        // scontrol may append flags after a '+' in some versions (e.g. "CANCELLED+").
        let name = s.trim().trim_end_matches('+');
        let name = name.split_whitespace().next().unwrap_or("");
        match name {
            "PENDING" => SlurmState::Pending,
            "CONFIGURING" => SlurmState::Configuring,
            "RUNNING" => SlurmState::Running,
            "COMPLETING" => SlurmState::Completing,
            "SUSPENDED" | "STOPPED" => SlurmState::Suspended,
            "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESIZING" => SlurmState::Requeued,
            "COMPLETED" => SlurmState::Completed,
            "FAILED" => SlurmState::Failed,
            "CANCELLED" => SlurmState::Cancelled,
            "TIMEOUT" => SlurmState::Timeout,
            "OUT_OF_MEMORY" => SlurmState::OutOfMemory,
            "NODE_FAIL" => SlurmState::NodeFail,
            "BOOT_FAIL" => SlurmState::BootFail,
            "DEADLINE" => SlurmState::Deadline,
            "PREEMPTED" => SlurmState::Preempted,
            other => SlurmState::Other(other.to_string()),
        }
    }

    /// The Slurm name of the state.
    pub fn name(&self) -> &str {
        match self {
            SlurmState::Pending => "PENDING",
            SlurmState::Configuring => "CONFIGURING",
            SlurmState::Running => "RUNNING",
            SlurmState::Completing => "COMPLETING",
            SlurmState::Suspended => "SUSPENDED",
            SlurmState::Requeued => "REQUEUED",
            SlurmState::Completed => "COMPLETED",
            SlurmState::Failed => "FAILED",
            SlurmState::Cancelled => "CANCELLED",
            SlurmState::Timeout => "TIMEOUT",
            SlurmState::OutOfMemory => "OUT_OF_MEMORY",
            SlurmState::NodeFail => "NODE_FAIL",
            SlurmState::BootFail => "BOOT_FAIL",
            SlurmState::Deadline => "DEADLINE",
            SlurmState::Preempted => "PREEMPTED",
            SlurmState::Other(s) => s,
        }
    }

    /// Waiting to run (or to run again).
    pub fn is_queued(&self) -> bool {
        matches!(
            self,
            SlurmState::Pending | SlurmState::Requeued | SlurmState::Suspended
        )
    }

    /// Executing now.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            SlurmState::Configuring | SlurmState::Running | SlurmState::Completing
        )
    }

    /// Ended unsuccessfully: the task may have written nothing, so the caller must not wait for
    /// its run directory to say so.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            SlurmState::Failed
                | SlurmState::Cancelled
                | SlurmState::Timeout
                | SlurmState::OutOfMemory
                | SlurmState::NodeFail
                | SlurmState::BootFail
                | SlurmState::Deadline
                | SlurmState::Preempted
        )
    }

    /// Finished, successfully or not.
    pub fn is_terminal(&self) -> bool {
        *self == SlurmState::Completed || self.is_failure()
    }
}

impl fmt::Display for SlurmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A job's `ExitCode=rc:signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ExitCode {
    pub code: i32,
    pub signal: i32,
}

impl ExitCode {
    /// Parses `3:0`.
    pub fn parse(s: &str) -> Option<ExitCode> {
        let (c, sig) = s.trim().split_once(':')?;
        Some(ExitCode {
            code: c.parse().ok()?,
            signal: sig.parse().ok()?,
        })
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.code, self.signal)
    }
}

/// The state of one array task as Slurm reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskStatus {
    pub array_job_id: u64,
    pub task_id: u32,
    /// The task's own job id (equal to the array job id while the task is pending).
    pub job_id: u64,
    pub state: SlurmState,
    /// Why it is pending or how it ended (`Dependency`, `NonZeroExitCode`, `None`, ...).
    pub reason: String,
    /// Known once the task has ended (from `scontrol`).
    pub exit_code: Option<ExitCode>,
    pub name: String,
}

impl TaskStatus {
    /// One line for a status display, e.g. `failed with Slurm state TIMEOUT exit 0:15`.
    pub fn describe(&self) -> String {
        let exit = self
            .exit_code
            .map(|e| e.to_string())
            .unwrap_or_else(|| "?".into());
        if self.state.is_failure() {
            let mut s = format!("failed with Slurm state {} exit {exit}", self.state);
            if !self.reason.is_empty() && self.reason != "None" {
                s.push_str(&format!(" ({})", self.reason));
            }
            s
        } else if self.state.is_queued() {
            format!("queued in Slurm ({}, reason {})", self.state, self.reason)
        } else if self.state.is_active() {
            format!("running in Slurm as job {}", self.job_id)
        } else if self.state == SlurmState::Completed {
            format!("completed in Slurm (exit {exit})")
        } else {
            format!("Slurm state {} ({})", self.state, self.reason)
        }
    }
}

/// Parses `squeue -h -t all -r -o '%F|%K|%A|%T|%r|%j'` output. Lines of non-array jobs
/// (`%K` = `N/A`) are skipped; a malformed line is an error naming it.
pub fn parse_squeue(output: &str) -> Result<Vec<TaskStatus>, String> {
    let mut out = Vec::new();
    for (i, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.splitn(6, '|').collect();
        let bad = |what: &str| {
            format!(
                "line {}: {what} in {line:?} (expected format {SQUEUE_FORMAT})",
                i + 1
            )
        };
        if f.len() != 6 {
            return Err(bad("expected 6 '|'-separated fields"));
        }
        if f[1] == "N/A" {
            continue;
        }
        out.push(TaskStatus {
            array_job_id: f[0].parse().map_err(|_| bad("bad array job id"))?,
            task_id: f[1]
                .parse()
                .map_err(|_| bad("bad array task id (run squeue with -r)"))?,
            job_id: f[2].parse().map_err(|_| bad("bad job id"))?,
            state: SlurmState::parse(f[3]),
            reason: f[4].to_string(),
            exit_code: None,
            name: f[5].to_string(),
        });
    }
    Ok(out)
}

/// Splits one `scontrol -o` record (`Key=Value Key=Value ...`) into fields. Values may contain
/// spaces (`OS=Linux 6.1 ...`): a token that does not look like `Key=` continues the previous
/// value.
pub fn parse_scontrol_record(line: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut last: Option<String> = None;
    for tok in line.split_whitespace() {
        let key = tok.split_once('=').map(|(k, _)| k).filter(|k| {
            !k.is_empty()
                && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_:/".contains(c))
        });
        match key {
            Some(k) => {
                let v = &tok[k.len() + 1..];
                map.insert(k.to_string(), v.to_string());
                last = Some(k.to_string());
            }
            None => {
                if let Some(k) = &last
                    && let Some(v) = map.get_mut(k)
                {
                    v.push(' ');
                    v.push_str(tok);
                }
            }
        }
    }
    map
}

/// Expands an array task id list as scontrol prints it (`0`, `1-4%1`, `0,3,5-7`).
pub fn expand_task_ids(s: &str) -> Result<Vec<u32>, String> {
    let body = s.split('%').next().unwrap_or("");
    let mut ids = Vec::new();
    for part in body.split(',') {
        let bad = || format!("bad array task id list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.parse().map_err(|_| bad())?;
                let b: u32 = b.parse().map_err(|_| bad())?;
                if b < a {
                    return Err(bad());
                }
                ids.extend(a..=b);
            }
            None => ids.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(ids)
}

/// Parses `scontrol -o show job ARRAY_ID` output (one record per task, pending tasks grouped
/// in one record with a task range) into one status per task.
pub fn parse_scontrol_jobs(output: &str) -> Result<Vec<TaskStatus>, String> {
    let mut out = Vec::new();
    for (i, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r = parse_scontrol_record(line);
        let get = |k: &str| {
            r.get(k)
                .map(String::as_str)
                .ok_or_else(|| format!("line {}: no {k}= in scontrol record", i + 1))
        };
        let Some(tasks) = r.get("ArrayTaskId") else {
            continue; // not an array job
        };
        let job_id: u64 = get("JobId")?
            .parse()
            .map_err(|_| format!("line {}: bad JobId", i + 1))?;
        let array_job_id: u64 = get("ArrayJobId")?
            .parse()
            .map_err(|_| format!("line {}: bad ArrayJobId", i + 1))?;
        let state = SlurmState::parse(get("JobState")?);
        let exit_code = r.get("ExitCode").and_then(|e| ExitCode::parse(e));
        for task_id in expand_task_ids(tasks).map_err(|e| format!("line {}: {e}", i + 1))? {
            out.push(TaskStatus {
                array_job_id,
                task_id,
                job_id,
                state: state.clone(),
                reason: r.get("Reason").cloned().unwrap_or_default(),
                exit_code,
                name: r.get("JobName").cloned().unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Reads `MaxArraySize` from `scontrol show config` output.
pub fn parse_max_array_size(config: &str) -> Option<u32> {
    config.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "MaxArraySize").then(|| v.trim().parse().ok())?
    })
}

/// One partition from `scontrol -o show partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub name: String,
    pub default: bool,
    /// `State=`: UP, DOWN, DRAIN, INACTIVE.
    pub state: String,
    /// `MaxTime=` in seconds; None: unlimited.
    pub max_time_s: Option<u64>,
}

/// Parses `scontrol -o show partition` output.
pub fn parse_partitions(output: &str) -> Vec<PartitionInfo> {
    output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let r = parse_scontrol_record(l);
            Some(PartitionInfo {
                name: r.get("PartitionName")?.clone(),
                default: r.get("Default").is_some_and(|d| d == "YES"),
                state: r.get("State").cloned().unwrap_or_default(),
                max_time_s: r
                    .get("MaxTime")
                    .and_then(|t| super::options::parse_time_seconds(t).ok())
                    .flatten(),
            })
        })
        .collect()
}

/// One node of a partition from `sinfo -h -N -o '%P|%N|%c|%m|%G'`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Partition name (without the default marker `*`).
    pub partition: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mb: u64,
    /// GPUs in the node's generic resources (`gpu:4`, `gpu:a100:4(S:0-1)`).
    pub gpus: u32,
}

/// The `sinfo` format [`parse_sinfo_nodes`] reads.
pub const SINFO_FORMAT: &str = "%P|%N|%c|%m|%G";

/// Parses `sinfo -h -N -o '%P|%N|%c|%m|%G'` output.
pub fn parse_sinfo_nodes(output: &str) -> Result<Vec<NodeInfo>, String> {
    let mut out = Vec::new();
    for (i, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('|').collect();
        let bad = |what: &str| format!("line {}: {what} in {line:?}", i + 1);
        if f.len() != 5 {
            return Err(bad("expected 5 '|'-separated fields"));
        }
        out.push(NodeInfo {
            partition: f[0].trim_end_matches('*').to_string(),
            name: f[1].to_string(),
            cpus: f[2]
                .trim_end_matches('+')
                .parse()
                .map_err(|_| bad("bad CPU count"))?,
            memory_mb: f[3]
                .trim_end_matches('+')
                .parse()
                .map_err(|_| bad("bad memory"))?,
            gpus: gres_gpus(f[4]),
        });
    }
    Ok(out)
}

/// Counts GPUs in a GRES string: `gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:2,shard:8`, `(null)`.
pub fn gres_gpus(gres: &str) -> u32 {
    gres.split(',')
        .filter(|g| g.starts_with("gpu"))
        .filter_map(|g| {
            let g = g.split('(').next().unwrap_or(g);
            g.rsplit(':').next()?.parse::<u32>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUEUE_FINISHED: &str = include_str!("fixtures/squeue_finished.txt");
    const SQUEUE_PENDING: &str = include_str!("fixtures/squeue_pending.txt");
    const SCONTROL_FINISHED: &str = include_str!("fixtures/scontrol_job_finished.txt");
    const SCONTROL_PENDING: &str = include_str!("fixtures/scontrol_job_pending.txt");
    const SCONTROL_CANCELLED: &str = include_str!("fixtures/scontrol_job_cancelled.txt");
    const SCONTROL_PARTITION: &str = include_str!("fixtures/scontrol_partition.txt");
    const SCONTROL_CONFIG: &str = include_str!("fixtures/scontrol_config.txt");
    const SINFO_NODES: &str = include_str!("fixtures/sinfo_nodes.txt");

    fn find(v: &[TaskStatus], array: u64, task: u32) -> &TaskStatus {
        v.iter()
            .find(|t| t.array_job_id == array && t.task_id == task)
            .unwrap_or_else(|| panic!("no {array}_{task} in {v:?}"))
    }

    #[test]
    fn squeue_real_output_finished_array() {
        let v = parse_squeue(SQUEUE_FINISHED).unwrap();
        // The two warm-up jobs are not arrays and are skipped.
        assert!(v.iter().all(|t| t.name != "primer-warmup"));
        let t = find(&v, 3, 1);
        assert_eq!(
            (t.job_id, &t.state, t.reason.as_str()),
            (5, &SlurmState::Failed, "NonZeroExitCode")
        );
        assert_eq!(find(&v, 3, 0).state, SlurmState::Completed);
        assert_eq!(find(&v, 3, 2).state, SlurmState::Cancelled);
        assert_eq!(find(&v, 3, 3).reason, "JobLaunchFailure");
        // Pending tasks cancelled before they ran keep the array's job id.
        let c = find(&v, 7, 3);
        assert_eq!((c.job_id, &c.state), (7, &SlurmState::Cancelled));
        assert_eq!(find(&v, 8, 1).reason, "Dependency");
    }

    #[test]
    fn squeue_real_output_pending_and_running() {
        let v = parse_squeue(SQUEUE_PENDING).unwrap();
        assert_eq!(v.len(), 9);
        assert_eq!(find(&v, 7, 2).reason, "JobArrayTaskLimit");
        assert!(find(&v, 7, 2).state.is_queued());
        assert!(find(&v, 7, 0).state.is_active());
        assert_eq!(find(&v, 8, 0).reason, "Dependency");
    }

    #[test]
    fn squeue_malformed_line_is_named() {
        let e = parse_squeue("3|1|5|FAILED\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("6"), "{e}");
        assert!(parse_squeue("3|x|5|FAILED|None|n\n").is_err());
    }

    #[test]
    fn scontrol_real_output_exit_codes() {
        let v = parse_scontrol_jobs(SCONTROL_FINISHED).unwrap();
        assert_eq!(v.len(), 4);
        let failed = find(&v, 3, 1);
        assert_eq!(failed.exit_code, Some(ExitCode { code: 3, signal: 0 }));
        assert_eq!(
            failed.describe(),
            "failed with Slurm state FAILED exit 3:0 (NonZeroExitCode)"
        );
        let cancelled = find(&v, 3, 2);
        assert_eq!(
            cancelled.exit_code,
            Some(ExitCode {
                code: 0,
                signal: 15
            })
        );
        assert_eq!(
            cancelled.describe(),
            "failed with Slurm state CANCELLED exit 0:15"
        );
        let killed = find(&v, 3, 3);
        assert_eq!(killed.exit_code, Some(ExitCode { code: 0, signal: 9 }));
        assert_eq!(find(&v, 3, 0).describe(), "completed in Slurm (exit 0:0)");
    }

    #[test]
    fn scontrol_pending_ranges_expand_to_tasks() {
        let v = parse_scontrol_jobs(SCONTROL_PENDING).unwrap();
        let ids: Vec<u32> = v.iter().map(|t| t.task_id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 0]);
        assert!(find(&v, 7, 4).state.is_queued());
        assert_eq!(find(&v, 7, 0).state, SlurmState::Running);
        let c = parse_scontrol_jobs(SCONTROL_CANCELLED).unwrap();
        assert_eq!(find(&c, 7, 4).state, SlurmState::Cancelled);
        assert_eq!(find(&c, 7, 0).state, SlurmState::Completed);
    }

    #[test]
    fn scontrol_record_values_with_spaces() {
        let r = parse_scontrol_record("NodeName=vm OS=Linux 6.1 #1 SMP  RealMemory=100 AllocTRES=");
        assert_eq!(r["OS"], "Linux 6.1 #1 SMP");
        assert_eq!(r["RealMemory"], "100");
        assert_eq!(r["AllocTRES"], "");
    }

    #[test]
    fn task_id_lists() {
        assert_eq!(expand_task_ids("0").unwrap(), vec![0]);
        assert_eq!(expand_task_ids("1-4%1").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(expand_task_ids("0,3,5-7").unwrap(), vec![0, 3, 5, 6, 7]);
        assert!(expand_task_ids("4-1").is_err());
        assert!(expand_task_ids("").is_err());
    }

    #[test]
    fn config_partitions_and_nodes() {
        assert_eq!(parse_max_array_size(SCONTROL_CONFIG), Some(1001));
        assert_eq!(
            parse_max_array_size("MaxArraySize            = 5\n"),
            Some(5)
        );
        let p = parse_partitions(SCONTROL_PARTITION);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].name, "debug");
        assert!(p[0].default);
        assert_eq!(p[0].state, "UP");
        assert_eq!(p[0].max_time_s, None);
        let n = parse_sinfo_nodes(SINFO_NODES).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].partition.as_str(), n[0].cpus, n[0].gpus),
            ("debug", 2, 0)
        );
        assert!(n[0].memory_mb > 0);
    }

    #[test]
    fn gres_gpu_counts() {
        assert_eq!(gres_gpus("(null)"), 0);
        assert_eq!(gres_gpus("gpu:4"), 4);
        assert_eq!(gres_gpus("gpu:a100:8(S:0-1)"), 8);
        assert_eq!(gres_gpus("gpu:2,shard:8"), 2);
    }

    #[test]
    fn failure_states() {
        for s in [
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
        ] {
            assert!(SlurmState::parse(s).is_failure(), "{s}");
            assert!(SlurmState::parse(s).is_terminal(), "{s}");
        }
        for s in ["PENDING", "RUNNING", "COMPLETING", "REQUEUED", "COMPLETED"] {
            assert!(!SlurmState::parse(s).is_failure(), "{s}");
        }
        assert_eq!(
            SlurmState::parse("WEIRD"),
            SlurmState::Other("WEIRD".into())
        );
    }
}
