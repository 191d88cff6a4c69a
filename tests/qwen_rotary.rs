//! Qwen-VL's multimodal rotary embeddings against transformers (tests/fixtures/
//! generate_qwen_rotary.py): `get_rope_index`'s position ids for prompts of text and images of
//! several grids, left-padded in a batch, exactly; cos/sin and rotated queries within 1e-5 for
//! Qwen3-VL's interleaved and Qwen2-VL's sectioned frequency layouts.

mod common;

use candle_core::{Device, Tensor};
use glance::layers::rotary::{self, mrope_positions, MRope, Rotary, Span};

const TOLERANCE: f32 = 1e-5;

fn spans(layout: &serde_json::Value, merge: usize) -> Vec<Span> {
    layout
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let s = s.as_array().unwrap();
            let n = |i: usize| s[i].as_u64().unwrap() as usize;
            match s[0].as_str().unwrap() {
                "text" => Span::Text(n(1)),
                _ => Span::Image {
                    grid: (n(1), n(2), n(3)),
                    merge,
                },
            }
        })
        .collect()
}

/// Positions per row, left-padded with zeros to `width` (as transformers leaves padding).
fn batch_positions(reference: &serde_json::Value) -> (Vec<Vec<[i64; 3]>>, Vec<i64>) {
    let width = reference["width"].as_u64().unwrap() as usize;
    let merge = reference["merge"].as_u64().unwrap() as usize;
    let mut rows = Vec::new();
    let mut deltas = Vec::new();
    for layout in reference["layouts"].as_array().unwrap() {
        let (pos, delta) = mrope_positions(&spans(layout, merge));
        let mut row = vec![[0i64; 3]; width - pos.len()];
        row.extend(pos);
        rows.push(row);
        deltas.push(delta);
    }
    (rows, deltas)
}

#[test]
fn position_ids_equal_get_rope_index() {
    let dir = common::repo().join("tests/fixtures/qwen-rotary");
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let (rows, deltas) = batch_positions(&reference);
    // [3, batch, width]
    let expected = tensors["position_ids"].to_vec3::<i64>().unwrap();
    for (b, row) in rows.iter().enumerate() {
        for (i, p) in row.iter().enumerate() {
            let want = [expected[0][b][i], expected[1][b][i], expected[2][b][i]];
            assert_eq!(*p, want, "row {b} position {i}");
        }
    }
    let want: Vec<i64> = tensors["deltas"].flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(deltas, want);
}

fn check_rotary(interleaved: bool, prefix: &str) {
    let dir = common::repo().join("tests/fixtures/qwen-rotary");
    let reference = common::reference(&dir);
    let tensors = common::reference_tensors(&dir);
    let section: Vec<usize> = reference["mrope_section"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let rope = Rotary::new(
        reference["head_dim"].as_u64().unwrap() as usize,
        reference["rope_theta"].as_f64().unwrap(),
        Some(MRope {
            section: [section[0], section[1], section[2]],
            interleaved,
        }),
    )
    .unwrap();
    let (rows, _) = batch_positions(&reference);
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for row in &rows {
        let (c, s) = rope.cos_sin(row, &Device::Cpu).unwrap();
        cos.push(c);
        sin.push(s);
    }
    let cos = Tensor::stack(&cos, 0).unwrap();
    let sin = Tensor::stack(&sin, 0).unwrap();
    let diff = |a: &Tensor, name: &str| {
        let d = common::max_abs_diff(a, &tensors[name]);
        assert!(d < TOLERANCE, "{name}: {d}");
        d
    };
    let dc = diff(&cos, &format!("{prefix}_cos"));
    let ds = diff(&sin, &format!("{prefix}_sin"));
    let rotated = rotary::apply(&tensors["q"], &cos, &sin).unwrap();
    let dq = diff(&rotated, &format!("{prefix}_q_rotated"));
    eprintln!("{prefix}: max |cos| diff {dc:e}, |sin| {ds:e}, rotated q {dq:e}");
}

#[test]
fn qwen3_interleaved_mrope_equals_transformers() {
    check_rotary(true, "qwen3");
}

#[test]
fn qwen2_sectioned_mrope_equals_transformers() {
    check_rotary(false, "qwen2");
}
