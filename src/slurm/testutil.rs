//! Test helpers shared by the Slurm module's unit tests.

use super::Slurm;
use std::os::unix::fs::PermissionsExt;

/// A directory of fake Slurm tools (shell scripts) whose answers come from files in it, so
/// the client's command lines and its handling of answers are tested without a cluster.
pub struct Fake {
    pub dir: tempfile::TempDir,
}

impl Fake {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tools: [(&str, &str); 5] = [
            (
                "sbatch",
                r#"n=$(cat "$FAKE/next" 2>/dev/null || echo 100); echo $((n + 1)) > "$FAKE/next"
echo "$@" >> "$FAKE/sbatch.log"; echo "$n""#,
            ),
            (
                "scontrol",
                r#"case "$*" in
  "show config") echo "MaxArraySize            = $(cat "$FAKE/max_array" 2>/dev/null || echo 2)";;
  "-o show partition") cat "$FAKE/partitions";;
  "-o show job "*) f="$FAKE/job_$4"; if [ -f "$f" ]; then cat "$f"; else echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi;;
  "requeue "*) echo "$*" >> "$FAKE/scontrol.log";;
  *) echo "unexpected scontrol $*" >&2; exit 2;;
esac"#,
            ),
            (
                "sinfo",
                r#"echo "$@" >> "$FAKE/sinfo.log"; cat "$FAKE/nodes""#,
            ),
            (
                "squeue",
                r#"echo "$@" >> "$FAKE/squeue.log"
if [ -f "$FAKE/squeue.txt" ]; then cat "$FAKE/squeue.txt"; else echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi"#,
            ),
            (
                "scancel",
                r#"echo "$@" >> "$FAKE/scancel.log"; if [ -f "$FAKE/scancel_err" ]; then cat "$FAKE/scancel_err" >&2; exit 1; fi"#,
            ),
        ];
        for (name, body) in tools {
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(
            d.join("partitions"),
            "PartitionName=debug Default=YES State=UP MaxTime=UNLIMITED\nPartitionName=gpu Default=NO State=UP MaxTime=1-00:00:00\nPartitionName=old Default=NO State=INACTIVE MaxTime=UNLIMITED\n",
        )
        .unwrap();
        std::fs::write(
            d.join("nodes"),
            "debug*|n1|2|24152|(null)\ngpu|g1|32|256000|gpu:a100:4(S:0-1)\n",
        )
        .unwrap();
        Fake { dir }
    }

    pub fn slurm(&self) -> Slurm {
        Slurm::from_env()
            .with_bin_dir(self.dir.path())
            .with_env("FAKE", self.dir.path().to_str().unwrap())
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }
}
