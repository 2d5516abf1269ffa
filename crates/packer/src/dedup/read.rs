//! The read phase of a dedup job: the `--input` corpus and the `--against` directories as
//! references. [`read_local`] is the single-process read; `super::ray` assembles the same
//! [`Read`] from rows that Ray tasks read.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::json;

use super::corpus::Corpus;
use super::job::{DedupOptions, Reference};
use super::progress::Meter;
use crate::error::Result;

/// What the search needs from the build outputs: the `--input` corpus and the images of the
/// `--against` directories as references (in directory order).
pub struct Read {
    pub corpus: Corpus,
    pub against: Vec<Reference>,
}

/// `other`'s hashed images as references, labelled with its directory and sample keys.
pub fn against_refs(dir: &Path, other: &Corpus) -> Vec<Reference> {
    let label = dir.display().to_string();
    let mut refs = Vec::new();
    for (img, h) in other.hash.iter().enumerate() {
        if let Some(h) = h {
            let s = &other.samples[other.sample_of[img] as usize];
            refs.push(Reference {
                hash: *h,
                source: label.clone(),
                row: json!(s.key),
            });
        }
    }
    refs
}

/// Read `--input` and every `--against` here (rayon over the shards of each directory); an
/// `--against` corpus is dropped once its references are taken.
pub(crate) fn read_local(o: &DedupOptions, meter: &Meter, cancel: &AtomicBool) -> Result<Read> {
    let t0 = Instant::now();
    meter.phase("reading");
    let corpus = Corpus::read(&o.input, "--input", cancel, Some(meter.tally()))?;
    meter.say(format_args!(
        "read {} samples, {} images from {} shards ({:.1}s)",
        corpus.samples.len(),
        corpus.images(),
        corpus.shards.len(),
        t0.elapsed().as_secs_f64()
    ));
    let mut against = Vec::new();
    for dir in &o.against {
        meter.phase("--against");
        let other = Corpus::read(dir, "--against", cancel, Some(meter.tally()))?;
        against.extend(against_refs(dir, &other));
        let label = dir.display();
        meter.say(format_args!("--against {label}: {} images", other.images()));
    }
    Ok(Read { corpus, against })
}
