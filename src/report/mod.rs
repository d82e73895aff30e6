//! Reports: polars tables (Table 1 and the comparison with the paper) and plotters figures
//! (Figures 3 and 4) from a sweep's fine-tuning runs (being written).

pub mod input;
pub mod spec;
pub use input::{PrimingRunRecord, ReportInput, RunMeta, RunRecord};
pub use spec::ReportSpec;
