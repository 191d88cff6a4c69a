//! The confusion matrix as a PNG heat-map: a cell per (true, predicted) pair shaded by its share
//! of the true class's images, counts written in the cells, class names along both axes (drawn
//! with an 8×8 bitmap font, so no font files are needed).

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use super::classify::Confusion;

/// Longest class name drawn; longer ones are cut with "~".
const MAX_LABEL_CHARS: usize = 24;
const PAD: u32 = 12;
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([200, 200, 200]);

/// Matplotlib's "Blues" end points: an empty cell is near-white, a full row dark blue.
fn shade(share: f64) -> Rgb<u8> {
    let (lo, hi) = ([247.0, 251.0, 255.0], [8.0, 48.0, 107.0]);
    let t = share.clamp(0.0, 1.0);
    Rgb(std::array::from_fn(|i| {
        (lo[i] + (hi[i] - lo[i]) * t).round() as u8
    }))
}

fn glyph(c: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

fn clip_label(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        label.to_string()
    } else {
        let mut s: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        s.push('~');
        s
    }
}

pub(crate) fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, color);
    }
}

/// Text with its top-left corner at (x, y); `upward` turns it 90° so it reads bottom to top,
/// starting at (x, y) as its bottom-left corner.
pub(crate) fn text(
    img: &mut RgbImage,
    x: i64,
    y: i64,
    s: &str,
    scale: i64,
    color: Rgb<u8>,
    upward: bool,
) {
    for (k, c) in s.chars().enumerate() {
        let rows = glyph(c);
        for (gy, row) in rows.iter().enumerate() {
            for gx in 0..8 {
                if row >> gx & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (u, v) = ((k as i64 * 8 + gx) * scale + dx, gy as i64 * scale + dy);
                        if upward {
                            put(img, x + v, y - u, color);
                        } else {
                            put(img, x + u, y + v, color);
                        }
                    }
                }
            }
        }
    }
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// Draws `confusion` (rows: true class, columns: predicted) under a one-line `summary`.
pub fn render(confusion: &Confusion, summary: &str) -> RgbImage {
    let n = confusion.labels.len().max(1) as u32;
    // Cells shrink with the number of classes so a 1,000-class matrix stays a few thousand
    // pixels wide; names and counts are drawn while they fit.
    let cell = (1200 / n).clamp(4, 48);
    let label_scale: i64 = if cell >= 16 { 2 } else { 1 };
    let show_labels = cell >= 8;
    let labels: Vec<String> = confusion.labels.iter().map(|l| clip_label(l)).collect();
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    let label_px = if show_labels {
        longest * 8 * label_scale as u32
    } else {
        0
    };
    let title = "rows: true class, columns: predicted; shade: share of the row";
    let title_h = 2 * 8 + 6 + PAD;
    let left = PAD + label_px + PAD;
    let top = PAD + title_h + label_px + PAD;
    let text_w = title.len().max(summary.chars().count()) as u32 * 8;
    let width = (left + n * cell + PAD).max(PAD * 2 + text_w);
    let height = top + n * cell + PAD;
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    text(&mut img, PAD as i64, PAD as i64, summary, 1, BLACK, false);
    text(
        &mut img,
        PAD as i64,
        PAD as i64 + 14,
        title,
        1,
        BLACK,
        false,
    );

    for (i, row) in confusion.matrix.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                count as f64 / total as f64
            };
            let (x, y) = (left + j as u32 * cell, top + i as u32 * cell);
            fill(&mut img, x, y, cell, cell, GRID);
            let inner = if cell > 6 { 1 } else { 0 };
            fill(
                &mut img,
                x + inner,
                y + inner,
                cell - inner,
                cell - inner,
                shade(share),
            );
            let digits = count.to_string();
            let count_scale: i64 = if cell >= 40 { 2 } else { 1 };
            let text_w = digits.len() as u32 * 8 * count_scale as u32;
            if count > 0 && text_w + 4 <= cell && 8 * count_scale as u32 + 4 <= cell {
                let color = if share > 0.5 { WHITE } else { BLACK };
                let tx = x + (cell - text_w) / 2;
                let ty = y + (cell - 8 * count_scale as u32) / 2;
                text(
                    &mut img,
                    tx as i64,
                    ty as i64,
                    &digits,
                    count_scale,
                    color,
                    false,
                );
            }
        }
    }
    if show_labels {
        let glyph_h = 8 * label_scale as u32;
        for (i, label) in labels.iter().enumerate() {
            let offset = (cell.saturating_sub(glyph_h) / 2) as i64;
            // Row names, right-aligned against the matrix.
            let w = label.chars().count() as i64 * 8 * label_scale;
            let y = (top + i as u32 * cell) as i64 + offset;
            text(
                &mut img,
                left as i64 - PAD as i64 - w,
                y,
                label,
                label_scale,
                BLACK,
                false,
            );
            // Column names, reading upward from just above the matrix.
            let x = (left + i as u32 * cell) as i64 + offset;
            text(
                &mut img,
                x,
                top as i64 - PAD as i64,
                label,
                label_scale,
                BLACK,
                true,
            );
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusion() -> Confusion {
        Confusion {
            labels: vec!["cat".into(), "dog".into(), "unknown".into()],
            matrix: vec![vec![3, 1, 0], vec![0, 4, 0], vec![0, 0, 0]],
        }
    }

    #[test]
    fn full_rows_are_darker_than_partial_ones_and_empty_cells_stay_light() {
        let img = render(&confusion(), "test");
        let n = 3;
        let cell = (1200 / n).clamp(4, 48);
        let longest = 7 * 8 * 2;
        let left = PAD + longest + PAD;
        let top = PAD + 2 * 8 + 6 + PAD + longest + PAD;
        // A pixel near each cell's corner, clear of the count drawn in its middle.
        let at = |i: u32, j: u32| *img.get_pixel(left + j * cell + 3, top + i * cell + 3);
        let dark = |p: Rgb<u8>| u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]);
        assert!(dark(at(1, 1)) < dark(at(0, 0)), "4/4 darker than 3/4");
        assert!(dark(at(0, 0)) < dark(at(0, 1)), "3/4 darker than 1/4");
        assert_eq!(at(0, 2), shade(0.0));
        assert_eq!(at(1, 1), shade(1.0));
        assert_eq!(img.height(), top + 3 * cell + PAD);
    }

    #[test]
    fn a_thousand_classes_stay_a_drawable_size() {
        let n = 1000;
        let c = Confusion {
            labels: (0..n).map(|i| format!("class {i}")).collect(),
            matrix: vec![vec![0; n]; n],
        };
        let img = render(&c, "");
        assert!(
            img.width() <= 5000 && img.height() <= 5000,
            "{:?}",
            img.dimensions()
        );
    }
}
