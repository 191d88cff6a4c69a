//! What `Florence2Processor` does around the model: task tokens become prompts
//! (`<OD>` → "Locate the objects with category name in the image."), and generated text with
//! `<loc_N>` tokens becomes labelled boxes and quadrilaterals in image pixels
//! (`post_process_generation`), with the same numbers.

use crate::error::{Error, Result};

/// Task tokens that are the whole prompt, and what the processor replaces them by.
const WITHOUT_INPUT: &[(&str, &str)] = &[
    ("<OCR>", "What is the text in the image?"),
    (
        "<OCR_WITH_REGION>",
        "What is the text in the image, with regions?",
    ),
    ("<CAPTION>", "What does the image describe?"),
    (
        "<DETAILED_CAPTION>",
        "Describe in detail what is shown in the image.",
    ),
    (
        "<MORE_DETAILED_CAPTION>",
        "Describe with a paragraph what is shown in the image.",
    ),
    (
        "<OD>",
        "Locate the objects with category name in the image.",
    ),
    (
        "<DENSE_REGION_CAPTION>",
        "Locate the objects in the image, with their descriptions.",
    ),
    (
        "<REGION_PROPOSAL>",
        "Locate the region proposals in the image.",
    ),
];

/// Task tokens followed by an input, and their templates.
const WITH_INPUT: &[(&str, &str)] = &[
    (
        "<CAPTION_TO_PHRASE_GROUNDING>",
        "Locate the phrases in the caption: {input}",
    ),
    (
        "<REFERRING_EXPRESSION_SEGMENTATION>",
        "Locate {input} in the image with mask",
    ),
    (
        "<REGION_TO_SEGMENTATION>",
        "What is the polygon mask of region {input}",
    ),
    (
        "<OPEN_VOCABULARY_DETECTION>",
        "Locate {input} in the image.",
    ),
    ("<REGION_TO_CATEGORY>", "What is the region {input}?"),
    (
        "<REGION_TO_DESCRIPTION>",
        "What does the region {input} describe?",
    ),
    ("<REGION_TO_OCR>", "What text is in the region {input}?"),
];

/// `glance caption --task` names.
pub const CAPTION_TASKS: &[(&str, &str)] = &[
    ("caption", "<CAPTION>"),
    ("detailed", "<DETAILED_CAPTION>"),
    ("more-detailed", "<MORE_DETAILED_CAPTION>"),
    ("ocr", "<OCR>"),
];

/// `glance detect --task` names.
pub const DETECT_TASKS: &[(&str, &str)] = &[
    ("od", "<OD>"),
    ("dense-region", "<DENSE_REGION_CAPTION>"),
    ("grounding", "<CAPTION_TO_PHRASE_GROUNDING>"),
    ("ocr-region", "<OCR_WITH_REGION>"),
];

/// Grounding phrases the processor drops (`banned_grounding_tokens`) when a checkpoint's
/// `processor_config.json` does not list its own: pronouns, determiners, "image".
pub const DEFAULT_BANNED_GROUNDING: &[&str] = &[
    "it",
    "I",
    "me",
    "mine",
    "you",
    "your",
    "yours",
    "he",
    "him",
    "his",
    "she",
    "her",
    "hers",
    "they",
    "them",
    "their",
    "theirs",
    "one",
    "oneself",
    "we",
    "us",
    "our",
    "ours",
    "its",
    "myself",
    "yourself",
    "himself",
    "herself",
    "itself",
    "ourselves",
    "yourselves",
    "themselves",
    "this",
    "that",
    "these",
    "those",
    "who",
    "whom",
    "whose",
    "which",
    "what",
    "all",
    "another",
    "any",
    "anybody",
    "anyone",
    "anything",
    "each",
    "everybody",
    "everyone",
    "everything",
    "few",
    "many",
    "nobody",
    "none",
    "several",
    "some",
    "somebody",
    "someone",
    "something",
    "each other",
    "one another",
    "the image",
    "image",
    "images",
    "the",
    "a",
    "an",
    "a group",
    "other objects",
    "lots",
    "a set",
];

/// The caption task when none is given: what taggui and kohya's script default to.
pub const DEFAULT_CAPTION_TASK: &str = "<MORE_DETAILED_CAPTION>";

/// The task token of a `--task` name, from `table`.
pub fn task_token(name: &str, table: &[(&str, &'static str)]) -> Result<&'static str> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            Error::Options(format!(
                "unknown Florence-2 task {name:?}: choose one of {}",
                names.join(", ")
            ))
        })
}

/// The prompt the encoder reads for `prompt` (`Florence2Processor._construct_prompts`): a task
/// token alone becomes its sentence, one with an input fills its template, anything else (a
/// fine-tune's own task token, plain text) is read as it is.
pub fn expand(prompt: &str) -> Result<String> {
    for (token, sentence) in WITHOUT_INPUT {
        if prompt.contains(token) {
            if prompt != *token {
                return Err(Error::Options(format!(
                    "Florence-2's {token} must be the whole prompt, not {prompt:?}"
                )));
            }
            return Ok(sentence.to_string());
        }
    }
    for (token, template) in WITH_INPUT {
        if prompt.contains(token) {
            let input = prompt.replace(token, "");
            return Ok(template.replace("{input}", input.trim()));
        }
    }
    Ok(prompt.to_string())
}

/// How a task's answer is read (`tasks_answer_post_processing_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Text,
    /// Phrases each followed by one or more boxes.
    Boxes,
    /// Boxes with no phrase (`<REGION_PROPOSAL>`).
    BareBoxes,
    /// Text regions as quadrilaterals.
    Ocr,
    /// Phrases of a caption, each with its boxes, common words banned.
    Grounding,
}

impl Answer {
    pub fn of(task: &str) -> Self {
        match task {
            "<OD>" | "<DENSE_REGION_CAPTION>" => Self::Boxes,
            "<REGION_PROPOSAL>" => Self::BareBoxes,
            "<OCR_WITH_REGION>" => Self::Ocr,
            "<CAPTION_TO_PHRASE_GROUNDING>" => Self::Grounding,
            _ => Self::Text,
        }
    }
}

/// The banned grounding phrases of a `processor_config.json`, if it lists them.
pub fn banned_grounding(processor_config: &serde_json::Value) -> Option<Vec<String>> {
    let list = processor_config
        .get("post_processor_config")?
        .get("phrase_grounding")?
        .get("banned_grounding_tokens")?
        .as_array()?;
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
    )
}

/// One parsed region: a label and a box `[x1, y1, x2, y2]`, plus the quadrilateral for OCR.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub label: String,
    pub bbox: [i64; 4],
    /// `[x1, y1, …, x4, y4]` for text regions.
    pub polygon: Option<Vec<i64>>,
}

/// `post_process_generation`'s reading of `text` (decoded with special tokens) for `answer`, at
/// an image of `size` (width, height). `banned` are the grounding phrases dropped (the
/// processor's `banned_grounding_tokens`).
pub fn parse(text: &str, answer: Answer, size: (u32, u32), banned: &[String]) -> Vec<Region> {
    let text = text
        .replace("<s>", "")
        .replace("</s>", "")
        .replace("<pad>", "");
    match answer {
        Answer::Text => Vec::new(),
        Answer::Boxes | Answer::BareBoxes | Answer::Grounding => {
            let bare = answer == Answer::BareBoxes;
            let mut regions = Vec::new();
            for phrase_text in phrases_with_boxes(&text, bare) {
                let phrase_text = phrase_text
                    .replacen("<ground>", "", 1)
                    .replacen("<obj>", "", 1);
                let Some(phrase) = phrase_before_location(&phrase_text) else {
                    continue;
                };
                if answer == Answer::Grounding && banned.contains(&phrase) {
                    continue;
                }
                let boxes = boxes_in(&phrase_text);
                let label: String = phrase.chars().filter(char::is_ascii).collect();
                for b in boxes {
                    regions.push(Region {
                        label: label.clone(),
                        bbox: dequantize_box(b, size),
                        polygon: None,
                    });
                }
            }
            regions
        }
        Answer::Ocr => ocr_regions(&text, size),
    }
}

/// The answer's text for text tasks (`pure_text`): special tokens `<s>`, `</s>` dropped, trimmed.
pub fn pure_text(raw: &str) -> String {
    raw.replace("<s>", "")
        .replace("</s>", "")
        .trim()
        .to_string()
}

/// The number of a `<loc_N>` token at the start of `s`, and the token's length.
fn location_at(s: &str) -> Option<(u32, usize)> {
    let rest = s.strip_prefix("<loc_")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'>') {
        return None;
    }
    let n = rest[..digits].parse().unwrap_or(u32::MAX);
    Some((n, 5 + digits + 1))
}

/// The numbers of the (at most `most`) `<loc_N>` tokens starting at `s`, in a row, and their
/// total length.
fn locations_at(s: &str, most: usize) -> (Vec<u32>, usize) {
    let (mut found, mut at) = (Vec::new(), 0);
    while found.len() < most {
        let Some((n, len)) = location_at(&s[at..]) else {
            break;
        };
        found.push(n);
        at += len;
    }
    (found, at)
}

/// `re.findall(r"([^<]+(?:<loc_\d+>){4,})", text)` (or, `bare`, `(?:<loc_\d+>){4,}`).
fn phrases_with_boxes(text: &str, bare: bool) -> Vec<&str> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let run = match bare {
            true => 0,
            false => text[i..].find('<').unwrap_or(text.len() - i),
        };
        if !bare && run == 0 {
            i += 1;
            continue;
        }
        let (locs, len) = locations_at(&text[i + run..], usize::MAX);
        if locs.len() >= 4 {
            found.push(&text[i..i + run + len]);
            i += run + len;
        } else {
            // Every later start inside the same run fails the same way.
            i += run.max(1);
        }
    }
    found
}

/// `re.search(r"^\s*(.*?)(?=<od>|</od>|<box>|</box>|<bbox>|</bbox>|<loc_)", s).group().strip()`:
/// the text before the first location or box token, if no line break comes first.
fn phrase_before_location(s: &str) -> Option<String> {
    let start = s.len() - s.trim_start().len();
    let body = &s[start..];
    let stop = [
        "<od>", "</od>", "<box>", "</box>", "<bbox>", "</bbox>", "<loc_",
    ]
    .iter()
    .filter_map(|t| body.find(t))
    .min()?;
    let phrase = &body[..stop];
    if phrase.contains('\n') {
        return None;
    }
    Some(s[..start + stop].trim().to_string())
}

/// `re.finditer(r"<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>", s)`: groups of four
/// consecutive locations.
fn boxes_in(s: &str) -> Vec<[u32; 4]> {
    let mut boxes = Vec::new();
    let mut i = 0;
    while let Some(offset) = s[i..].find("<loc_") {
        let at = i + offset;
        let (locs, len) = locations_at(&s[at..], 4);
        if let Ok(b) = <[u32; 4]>::try_from(locs) {
            boxes.push(b);
            i = at + len;
        } else {
            i = at + 1;
        }
    }
    boxes
}

/// `re.findall(r"(.+?)<loc_(\d+)>…(8 times)", text)` and the quadrilaterals' pixels.
fn ocr_regions(text: &str, size: (u32, u32)) -> Vec<Region> {
    // Where eight locations in a row start.
    let eights: Vec<usize> = (0..text.len())
        .filter(|&k| text.is_char_boundary(k) && locations_at(&text[k..], 8).0.len() == 8)
        .collect();
    let mut regions = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let next_break = text[i..].find('\n').map_or(text.len(), |p| i + p);
        let Some(&k) = eights.iter().find(|&&k| k > i) else {
            break;
        };
        if k > next_break {
            i = next_break + 1;
            continue;
        }
        let (quad, len) = locations_at(&text[k..], 8);
        let polygon: Vec<i64> = quad
            .chunks(2)
            .flat_map(|p| {
                let [x, y] = dequantize_point([p[0], p[1]], size);
                [x, y]
            })
            .collect();
        let xs = polygon.iter().step_by(2);
        let ys = polygon.iter().skip(1).step_by(2);
        let bbox = [
            *xs.clone().min().unwrap_or(&0),
            *ys.clone().min().unwrap_or(&0),
            *xs.max().unwrap_or(&0),
            *ys.max().unwrap_or(&0),
        ];
        regions.push(Region {
            label: text[i..k].trim().to_string(),
            bbox,
            polygon: Some(polygon),
        });
        i = k + len;
    }
    regions
}

/// A quantized coordinate back to pixels: the centre of its bin, in float32 as torch computes
/// it, truncated (`.int()`).
fn dequantize(bin: u32, extent: u32) -> i64 {
    let per_bin = (extent as f64 / 1000.0) as f32;
    ((bin as f32 + 0.5) * per_bin) as i64
}

fn dequantize_box(b: [u32; 4], (w, h): (u32, u32)) -> [i64; 4] {
    [
        dequantize(b[0], w),
        dequantize(b[1], h),
        dequantize(b[2], w),
        dequantize(b[3], h),
    ]
}

fn dequantize_point(p: [u32; 2], (w, h): (u32, u32)) -> [i64; 2] {
    [dequantize(p[0], w), dequantize(p[1], h)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_tokens_expand_as_the_processor_does() {
        assert_eq!(
            expand("<MORE_DETAILED_CAPTION>").unwrap(),
            "Describe with a paragraph what is shown in the image."
        );
        assert_eq!(
            expand("<CAPTION_TO_PHRASE_GROUNDING> a dog and a cat").unwrap(),
            "Locate the phrases in the caption: a dog and a cat"
        );
        assert_eq!(expand("<GENERATE_TAGS>").unwrap(), "<GENERATE_TAGS>");
        assert!(expand("<OD> and more").is_err());
    }

    #[test]
    fn phrases_start_anywhere_a_run_of_text_starts() {
        let t = "<loc_1>cat<loc_2><loc_3><loc_4><loc_5>";
        assert_eq!(
            phrases_with_boxes(t, false),
            vec!["loc_1>cat<loc_2><loc_3><loc_4><loc_5>"]
        );
        assert!(phrases_with_boxes("dog<loc_1><loc_2><loc_3>", false).is_empty());
    }
}
