//! [`SlurmOptions`]: what every task of a sweep asks Slurm for. Settable from the command line
//! (`primer run --backend slurm --partition ...`) and as defaults in a sweep file's `[slurm]`
//! table; [`SlurmOptions::merge`] lets the command line override the file.

use super::SlurmError;
use serde::{Deserialize, Serialize};

/// Default preemption warning: SIGUSR2 to the batch shell 90 s before the job is killed.
pub const DEFAULT_SIGNAL: &str = "USR2@90";

/// Resources and submission settings of a sweep's Slurm job arrays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmOptions {
    /// Partition (`--partition`); None: the cluster's default partition.
    pub partition: Option<String>,
    /// GPUs per task (`--gpus-per-task`); None or 0: no GPU requested.
    pub gpus_per_task: Option<u32>,
    /// CPUs per task (`--cpus-per-task`); None: the cluster default (1).
    pub cpus_per_task: Option<u32>,
    /// Memory per node (`--mem`), Slurm syntax: a number with an optional K/M/G/T suffix
    /// (default unit MB), e.g. `16G`.
    pub mem: Option<String>,
    /// Time limit (`--time`), Slurm syntax: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
    pub time: Option<String>,
    /// At most this many tasks of one array run at once (`--array=0-N%K`).
    pub array_throttle: Option<u32>,
    /// Extra `sbatch` arguments, one per element, written as `#SBATCH` lines verbatim
    /// (e.g. `--account=nlp`, `--qos=high`).
    pub sbatch_args: Vec<String>,
    /// Preemption warning `SIG@SECONDS` sent to the batch shell (`--signal=B:SIG@SECONDS`),
    /// which forwards it to the run process.
    pub signal: String,
    /// Let Slurm requeue tasks after preemption or node failure (`--requeue`).
    pub requeue: bool,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        Self {
            partition: None,
            gpus_per_task: None,
            cpus_per_task: None,
            mem: None,
            time: None,
            array_throttle: None,
            sbatch_args: Vec::new(),
            signal: DEFAULT_SIGNAL.to_string(),
            requeue: true,
        }
    }
}

impl SlurmOptions {
    /// `self` with every setting that `over` sets replaced by `over`'s (command line over sweep
    /// file). Extra sbatch arguments are concatenated (file first), so both apply.
    pub fn merge(&self, over: &SlurmOptions) -> SlurmOptions {
        let d = SlurmOptions::default();
        SlurmOptions {
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            gpus_per_task: over.gpus_per_task.or(self.gpus_per_task),
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            array_throttle: over.array_throttle.or(self.array_throttle),
            sbatch_args: self
                .sbatch_args
                .iter()
                .chain(&over.sbatch_args)
                .cloned()
                .collect(),
            signal: if over.signal != d.signal {
                over.signal.clone()
            } else {
                self.signal.clone()
            },
            requeue: self.requeue && over.requeue,
        }
    }

    /// Checks the syntax of every setting (no cluster needed).
    pub fn validate(&self) -> Result<(), SlurmError> {
        let opt = |option: &str, message: String| SlurmError::Option {
            option: option.to_string(),
            message,
        };
        if let Some(p) = &self.partition
            && (p.is_empty() || p.chars().any(|c| c.is_whitespace() || c == '\''))
        {
            return Err(opt("partition", format!("'{p}' is not a partition name")));
        }
        if self.cpus_per_task == Some(0) {
            return Err(opt("cpus_per_task", "must be at least 1".into()));
        }
        if self.array_throttle == Some(0) {
            return Err(opt(
                "array_throttle",
                "must be at least 1 (omit it for no limit)".into(),
            ));
        }
        self.mem_mb()?;
        self.time_seconds()?;
        self.signal_spec()?;
        for a in &self.sbatch_args {
            if !a.starts_with('-') || a.contains('\n') {
                return Err(opt(
                    "sbatch_arg",
                    format!(
                        "'{a}' is not an sbatch option: give one option per argument, like --account=nlp"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `--mem` in MB, None when unset.
    pub fn mem_mb(&self) -> Result<Option<u64>, SlurmError> {
        self.mem.as_deref().map(parse_mem_mb).transpose()
    }

    /// `--time` in seconds, None when unset or unlimited.
    pub fn time_seconds(&self) -> Result<Option<u64>, SlurmError> {
        match self.time.as_deref() {
            None => Ok(None),
            Some(t) => parse_time_seconds(t).map_err(|message| SlurmError::Option {
                option: "time".into(),
                message,
            }),
        }
    }

    /// The `--signal` value: `B:SIG@SECONDS` (the batch shell receives it and forwards it).
    pub fn signal_spec(&self) -> Result<String, SlurmError> {
        let s = self.signal.trim();
        let body = s.strip_prefix("B:").unwrap_or(s);
        let bad = || SlurmError::Option {
            option: "signal".into(),
            message: format!("'{s}' is not SIG@SECONDS (for example USR2@90)"),
        };
        let (sig, secs) = body.split_once('@').ok_or_else(bad)?;
        let sig_ok = !sig.is_empty() && sig.chars().all(|c| c.is_ascii_alphanumeric());
        if !sig_ok || secs.parse::<u32>().is_err() {
            return Err(bad());
        }
        Ok(format!("B:{body}"))
    }
}

/// The Slurm options of `primer run --backend slurm`, to `#[command(flatten)]` into its
/// arguments; [`SlurmArgs::to_options`] gives what the command line sets, to merge over the
/// sweep file's `[slurm]` defaults with [`SlurmOptions::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SlurmArgs {
    /// Slurm partition (default: the sweep file's, else the cluster's default partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per Slurm task (runs then use cuda:0, the task's first visible GPU).
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    /// CPUs per Slurm task.
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Memory per Slurm task, Slurm syntax (e.g. 16G).
    #[arg(long)]
    pub mem: Option<String>,
    /// Time limit per Slurm task, Slurm syntax (e.g. 4:00:00 or 1-00:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// At most this many tasks of one job array run at once.
    #[arg(long)]
    pub array_throttle: Option<u32>,
    /// Extra sbatch option, repeatable (e.g. --sbatch-arg=--account=nlp).
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
}

impl SlurmArgs {
    /// The options these arguments set (the rest at their defaults).
    pub fn to_options(&self) -> SlurmOptions {
        SlurmOptions {
            partition: self.partition.clone(),
            gpus_per_task: self.gpus_per_task,
            cpus_per_task: self.cpus_per_task,
            mem: self.mem.clone(),
            time: self.time.clone(),
            array_throttle: self.array_throttle,
            sbatch_args: self.sbatch_args.clone(),
            ..SlurmOptions::default()
        }
    }
}

/// Parses a Slurm memory size (`512`, `500M`, `16G`, `1T`; default unit MB) into MB.
pub fn parse_mem_mb(s: &str) -> Result<u64, SlurmError> {
    let bad = || SlurmError::Option {
        option: "mem".into(),
        message: format!(
            "'{s}' is not a Slurm memory size: a number with an optional K, M, G or T suffix, like 16G"
        ),
    };
    let t = s.trim();
    let (num, mult_kb) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64),
        Some('M') => (&t[..t.len() - 1], 1024),
        Some('G') => (&t[..t.len() - 1], 1024 * 1024),
        Some('T') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1024),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok((n * mult_kb).div_ceil(1024))
}

/// Parses a Slurm time limit into seconds; None for `UNLIMITED`/`INFINITE`.
/// Accepted: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`, `D-H:M:S`.
pub fn parse_time_seconds(s: &str) -> Result<Option<u64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("infinite") {
        return Ok(None);
    }
    let bad = || {
        format!(
            "'{s}' is not a Slurm time: use M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 2:00:00 or 1-12)"
        )
    };
    let num = |x: &str| -> Result<u64, String> {
        if x.is_empty() || !x.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        x.parse().map_err(|_| bad())
    };
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(num(d)?), r),
        None => (None, t),
    };
    let parts: Vec<u64> = rest.split(':').map(num).collect::<Result<_, _>>()?;
    let secs = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    Ok(Some(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_match_slurm() {
        assert_eq!(parse_time_seconds("90").unwrap(), Some(5400));
        assert_eq!(parse_time_seconds("5:30").unwrap(), Some(330));
        assert_eq!(parse_time_seconds("2:00:00").unwrap(), Some(7200));
        assert_eq!(parse_time_seconds("1-12").unwrap(), Some(86400 + 12 * 3600));
        assert_eq!(parse_time_seconds("1-0:30").unwrap(), Some(86400 + 1800));
        assert_eq!(
            parse_time_seconds("2-01:02:03").unwrap(),
            Some(2 * 86400 + 3723)
        );
        assert_eq!(parse_time_seconds("UNLIMITED").unwrap(), None);
        for bad in ["", "1h", "1:2:3:4", "-1", "1-", "a:b"] {
            assert!(parse_time_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mem_sizes_in_mb() {
        assert_eq!(parse_mem_mb("512").unwrap(), 512);
        assert_eq!(parse_mem_mb("16G").unwrap(), 16384);
        assert_eq!(parse_mem_mb("1t").unwrap(), 1024 * 1024);
        assert_eq!(parse_mem_mb("1536K").unwrap(), 2);
        let e = parse_mem_mb("16GB").unwrap_err().to_string();
        assert!(e.contains("16GB") && e.contains("16G"), "{e}");
    }

    #[test]
    fn signal_is_sent_to_the_batch_shell() {
        let mut o = SlurmOptions::default();
        assert_eq!(o.signal_spec().unwrap(), "B:USR2@90");
        o.signal = "B:TERM@120".into();
        assert_eq!(o.signal_spec().unwrap(), "B:TERM@120");
        o.signal = "USR2".into();
        assert!(o.validate().is_err());
    }

    #[test]
    fn validate_rejects_bad_values_naming_the_option() {
        let o = SlurmOptions {
            time: Some("2h".into()),
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("time"));
        let o = SlurmOptions {
            sbatch_args: vec!["account=nlp".into()],
            ..Default::default()
        };
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("--account=nlp")
        );
        let o = SlurmOptions {
            array_throttle: Some(0),
            ..Default::default()
        };
        assert!(o.validate().is_err());
        assert!(SlurmOptions::default().validate().is_ok());
    }

    #[test]
    fn command_line_arguments() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            slurm: SlurmArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "primer",
            "--partition",
            "gpu",
            "--gpus-per-task",
            "2",
            "--time",
            "4:00:00",
            "--sbatch-arg",
            "--account=nlp",
            "--sbatch-arg=--qos=high",
            "--array-throttle",
            "8",
        ])
        .unwrap();
        let o = cli.slurm.to_options();
        assert_eq!(o.partition.as_deref(), Some("gpu"));
        assert_eq!((o.gpus_per_task, o.array_throttle), (Some(2), Some(8)));
        assert_eq!(o.time.as_deref(), Some("4:00:00"));
        assert_eq!(o.sbatch_args, vec!["--account=nlp", "--qos=high"]);
        assert_eq!(o.signal, DEFAULT_SIGNAL);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn command_line_overrides_sweep_file() {
        let file: SlurmOptions = toml::from_str(
            "partition = \"gpu\"\nmem = \"8G\"\nsbatch_args = [\"--account=a\"]\narray_throttle = 4\n",
        )
        .unwrap();
        let cli = SlurmOptions {
            mem: Some("16G".into()),
            sbatch_args: vec!["--qos=high".into()],
            ..Default::default()
        };
        let m = file.merge(&cli);
        assert_eq!(m.partition.as_deref(), Some("gpu"));
        assert_eq!(m.mem.as_deref(), Some("16G"));
        assert_eq!(m.array_throttle, Some(4));
        assert_eq!(m.sbatch_args, vec!["--account=a", "--qos=high"]);
        assert_eq!(m.signal, DEFAULT_SIGNAL);
        assert!(toml::from_str::<SlurmOptions>("partitoin = \"x\"").is_err());
    }
}
