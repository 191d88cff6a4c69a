//! Folder runs: which files a run takes ([`inputs`], with sharding), the runner that decodes
//! them on their own threads and feeds batches through the stages ([`runner`]), sorting files
//! into folders by label ([`sort`]), pipeline files of several stages ([`pipeline`]) and the
//! merge of a sharded job's parts ([`merge`]). Runs use
//! tasks and outputs; the CLI uses runs.

pub mod draw;
pub mod inputs;
pub mod merge;
pub mod pipeline;
pub mod runner;
pub mod sort;
