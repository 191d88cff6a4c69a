//! `glance eval`: caption metrics against COCO-style references, equal to the COCO caption
//! evaluation toolkit (pycocoevalcap), CLIPScore, and classification metrics with a heat-map.

pub mod captions;
pub mod classify;
pub mod clip_score;
pub mod heatmap;
pub mod metrics;
pub mod ptb;
