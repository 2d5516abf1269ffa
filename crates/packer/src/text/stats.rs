//! Text-cleaning counts for `stats.json` and the examples behind `text_report.jsonl`.
//!
//! Both live in the job's [`crate::build::Stats`], which every checkpoint saves as it was when
//! its shard closed: a resumed job continues from the same counts and examples, so its report
//! equals an uninterrupted run's. The report is written atomically when the job finishes, and
//! the examples then leave the checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{name_of, TextLog, TextOptions, NORMALISATIONS, PREPEND_BIT, TOO_LONG_BIT};

pub const REPORT_FILE: &str = "text_report.jsonl";

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct TextStats {
    /// Written samples that at least one normalisation changed.
    pub samples_changed: u64,
    /// Written samples changed by each normalisation (a sample counts once per step).
    pub changed: BTreeMap<String, u64>,
    /// Samples rejected by each rule (also in `rejects_by_reason` as `text_{rule}`).
    pub rejected: BTreeMap<String, u64>,
    /// Report examples so far (until the job ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub examples_per_step: BTreeMap<String, u64>,
}

impl TextStats {
    /// Count one record's cleaning. `written`: the sample was written (not a duplicate or an
    /// image reject); changes of samples that were not written are not counted.
    pub fn record(&mut self, log: &TextLog, index: u64, written: bool) {
        if let Some(rule) = log.rejected {
            *self.rejected.entry(rule.to_string()).or_default() += 1;
        } else if written && log.changed != 0 {
            self.samples_changed += 1;
            for b in (0..=PREPEND_BIT).filter(|b| log.changed & (1 << b) != 0) {
                *self.changed.entry(name_of(b).to_string()).or_default() += 1;
            }
        } else {
            return;
        }
        for e in &log.examples {
            let n = self
                .examples_per_step
                .entry(e.step.to_string())
                .or_default();
            if *n >= log.limit as u64 {
                continue;
            }
            *n += 1;
            self.examples.push(json!({
                "step": e.step,
                "action": if e.reason.is_some() { "rejected" } else { "changed" },
                "index": index,
                "id": log.id,
                "field": e.field,
                "before": e.before,
                "after": e.after,
                "reason": e.reason,
            }));
        }
    }
}

/// At the end of the job: list every enabled step in the counts (zeros included), write
/// `text_report.jsonl` (steps in pipeline order, records in input order) with `--text-report`,
/// and drop the examples from the stats.
pub fn finish(out: &Path, st: &mut TextStats, o: &TextOptions) -> std::io::Result<()> {
    let mask = o.enabled().unwrap_or(0);
    for b in 0..12u32 {
        if mask & (1 << b) != 0 {
            let map = if (b as usize) < NORMALISATIONS.len() {
                &mut st.changed
            } else {
                &mut st.rejected
            };
            map.entry(name_of(b).to_string()).or_default();
        }
    }
    if o.fix_placeholders {
        st.changed
            .entry(name_of(PREPEND_BIT).to_string())
            .or_default();
    }
    if o.max_text_tokens.is_some() {
        st.rejected
            .entry(name_of(TOO_LONG_BIT).to_string())
            .or_default();
    }
    let path = out.join(REPORT_FILE);
    if o.report > 0 {
        let mut data = Vec::new();
        for b in 0..=TOO_LONG_BIT {
            for e in st.examples.iter().filter(|e| e["step"] == name_of(b)) {
                data.extend_from_slice(e.to_string().as_bytes());
                data.push(b'\n');
            }
        }
        crate::build::state::write_atomic(&path, &data)?;
    }
    st.examples.clear();
    st.examples_per_step.clear();
    Ok(())
}
