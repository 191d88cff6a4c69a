//! `glance eval`: caption metrics against COCO-style references, equal to the COCO caption
//! evaluation toolkit (pycocoevalcap).

pub mod captions;
pub mod metrics;
pub mod ptb;
