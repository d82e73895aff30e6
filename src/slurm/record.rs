//! `slurm.json`: what a run directory remembers about its Slurm submission, so that
//! `primer status` can ask Slurm about the right task and `primer cancel` can cancel it.

use super::{JobRef, SlurmError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the record inside a run directory.
pub const RECORD_FILE: &str = "slurm.json";

/// One run's latest Slurm submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmRecord {
    /// The array (chunk) job id that `sbatch --parsable` printed.
    pub job_id: u64,
    /// This run's task index within that array.
    pub array_task_id: u32,
    /// Slurm job name, checked against queue listings (job ids restart when a cluster is
    /// reinstalled, so an id alone may name someone else's job).
    pub job_name: String,
    /// Cluster name when `sbatch` reported one (`ID;CLUSTER`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// The script that was submitted (kept in the store).
    pub script: PathBuf,
    /// UTC time of submission, RFC 3339.
    pub submitted_at: String,
}

impl SlurmRecord {
    /// The task as a dependency / query reference.
    pub fn job_ref(&self) -> JobRef {
        JobRef {
            array_job_id: self.job_id,
            task_id: self.array_task_id,
        }
    }

    /// Writes `<run_dir>/slurm.json` atomically.
    pub fn write(&self, run_dir: &Path) -> Result<(), SlurmError> {
        Ok(crate::fsutil::write_json_atomic(
            &run_dir.join(RECORD_FILE),
            self,
        )?)
    }

    /// Reads `<run_dir>/slurm.json`; None when the run was never submitted to Slurm.
    pub fn read(run_dir: &Path) -> Result<Option<SlurmRecord>, SlurmError> {
        let p = run_dir.join(RECORD_FILE);
        if !p.exists() {
            return Ok(None);
        }
        Ok(Some(crate::fsutil::read_json(&p)?))
    }
}

/// UTC civil date-time of a system time: (year, month, day, hour, minute, second).
fn utc_parts(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// RFC 3339 UTC timestamp, e.g. `2025-01-31T12:00:05Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// Compact UTC timestamp for file names, e.g. `20250131T120005Z`.
pub fn compact_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_secs(1_738_324_805); // 2025-01-31T12:00:05Z
        assert_eq!(rfc3339(t), "2025-01-31T12:00:05Z");
        assert_eq!(compact_timestamp(t), "20250131T120005Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        // A leap day.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SlurmRecord::read(dir.path()).unwrap(), None);
        let r = SlurmRecord {
            job_id: 41,
            array_task_id: 3,
            job_name: "primer-demo".into(),
            cluster: None,
            script: "/s/slurm/x.sbatch".into(),
            submitted_at: rfc3339(SystemTime::now()),
        };
        r.write(dir.path()).unwrap();
        assert_eq!(SlurmRecord::read(dir.path()).unwrap(), Some(r.clone()));
        assert_eq!(r.job_ref().to_string(), "41_3");
        std::fs::write(dir.path().join(RECORD_FILE), "{").unwrap();
        let e = SlurmRecord::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("slurm.json"), "{e}");
    }
}
