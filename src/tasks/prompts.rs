//! Label lists, prompt templates and tag vocabularies: the shipped ones in `prompts/` (compiled into the
//! binary, so they work from any directory) and the user's own files.

use std::path::Path;

use crate::error::{Error, Result};

/// Shipped template sets, by name (`prompts/templates/NAME.txt`).
const TEMPLATES: &[(&str, &str)] = &[
    (
        "default",
        include_str!("../../prompts/templates/default.txt"),
    ),
    ("single", include_str!("../../prompts/templates/single.txt")),
];

/// Shipped vocabularies, by name (`prompts/vocab/NAME.txt`).
const VOCABS: &[(&str, &str)] = &[
    ("everyday", include_str!("../../prompts/vocab/everyday.txt")),
    ("coco", include_str!("../../prompts/vocab/coco.txt")),
];

/// Shipped instructions for chat models, by name (`prompts/instructions/NAME.txt`).
const INSTRUCTIONS: &[(&str, &str)] = &[
    (
        "caption",
        include_str!("../../prompts/instructions/caption.txt"),
    ),
    (
        "detailed",
        include_str!("../../prompts/instructions/detailed.txt"),
    ),
    ("tags", include_str!("../../prompts/instructions/tags.txt")),
    (
        "training",
        include_str!("../../prompts/instructions/training.txt"),
    ),
];

/// The instruction chat models get when none is given.
pub const DEFAULT_INSTRUCTION: &str = "caption";

/// The template ensemble used when none is given.
pub const DEFAULT_TEMPLATES: &str = "default";
/// The vocabulary `glance label` uses when none is given.
pub const DEFAULT_VOCAB: &str = "everyday";

/// Entries of a list file: one per line, surrounding blanks trimmed, blank lines and lines starting
/// with `#` ignored.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Labels from `--labels "cat, dog"`: comma-separated, trimmed, empty items dropped.
pub fn parse_label_arg(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The labels of `--labels LIST` or else `--labels-file FILE`; `None` when neither is given.
pub fn labels_from(list: Option<&str>, file: Option<&Path>) -> Result<Option<Vec<String>>> {
    match (list, file) {
        (Some(list), _) => Ok(Some(parse_label_arg(list))),
        (None, Some(path)) => read_list(path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a list file (see [`parse_list`]).
pub fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse_list(&text))
}

/// A shipped list by name, or else a file at `spec`.
fn shipped_or_file(spec: &str, shipped: &[(&str, &str)], what: &str) -> Result<Vec<String>> {
    let path = Path::new(spec);
    if path.is_file() {
        return read_list(path);
    }
    if let Some((_, text)) = shipped.iter().find(|(name, _)| *name == spec) {
        return Ok(parse_list(text));
    }
    let names: Vec<&str> = shipped.iter().map(|(n, _)| *n).collect();
    Err(Error::Options(format!(
        "{what} '{spec}' is neither a file nor a shipped one ({})",
        names.join(", ")
    )))
}

/// A shipped list by name, never a file: what a server's request may name.
fn shipped_only(spec: &str, shipped: &[(&str, &str)], what: &str) -> Result<Vec<String>> {
    match shipped.iter().find(|(name, _)| *name == spec) {
        Some((_, text)) => Ok(parse_list(text)),
        None => {
            let names: Vec<&str> = shipped.iter().map(|(n, _)| *n).collect();
            Err(Error::Options(format!(
                "{what} '{spec}' is not a shipped one ({})",
                names.join(", ")
            )))
        }
    }
}

/// A shipped vocabulary (`everyday`, `coco`) by name.
pub fn shipped_vocab(name: &str) -> Result<Vec<String>> {
    shipped_only(name, VOCABS, "vocabulary")
}

/// A shipped template set (`default`, `single`) by name.
pub fn shipped_templates(name: &str) -> Result<Vec<String>> {
    shipped_only(name, TEMPLATES, "template set")
}

/// An instruction from a file or a shipped one's name: the text without its `#` comment lines,
/// trimmed.
pub fn instruction(spec: &str) -> Result<String> {
    let path = Path::new(spec);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?
    } else if let Some((_, text)) = INSTRUCTIONS.iter().find(|(name, _)| *name == spec) {
        text.to_string()
    } else {
        let names: Vec<&str> = INSTRUCTIONS.iter().map(|(n, _)| *n).collect();
        return Err(Error::Options(format!(
            "prompt '{spec}' is neither a file nor a shipped one ({})",
            names.join(", ")
        )));
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let instruction = kept.join("\n").trim().to_string();
    if instruction.is_empty() {
        return Err(Error::Options(format!("prompt '{spec}' is empty")));
    }
    Ok(instruction)
}

/// A chat model's instruction: `prompt` as given, else [`instruction`] of `file`, else the
/// default preset.
pub fn choose_instruction(prompt: Option<&str>, file: Option<&str>) -> Result<String> {
    match (prompt, file) {
        (Some(_), Some(_)) => Err(Error::Options(
            "give a prompt or a prompt file, not both".into(),
        )),
        (Some(text), None) => Ok(text.to_string()),
        (None, Some(spec)) => instruction(spec),
        (None, None) => instruction(DEFAULT_INSTRUCTION),
    }
}

/// Templates from a file or a shipped set's name, checked (see [`check_templates`]).
pub fn templates(spec: &str) -> Result<Vec<String>> {
    let templates = shipped_or_file(spec, TEMPLATES, "template set")?;
    check_templates(&templates, spec)?;
    Ok(templates)
}

/// A vocabulary from a file or a shipped name, checked (see [`check_labels`]).
pub fn vocab(spec: &str) -> Result<Vec<String>> {
    let tags = shipped_or_file(spec, VOCABS, "vocabulary")?;
    check_labels(&tags, spec)?;
    Ok(tags)
}

/// The template SigLIP models are used with by default: their model cards' and transformers'
/// zero-shot pipeline's. Their text tower runs every prompt padded to 64 positions, so the
/// eleven-template ensemble would cost eleven times that on each new label set.
pub const SIGLIP_TEMPLATE: &str = "This is a photo of {}.";

/// The templates a run uses: a single `template`, else the set `set` (a file or a shipped name),
/// else none, which means the model's default (see [`model_default_templates`]).
pub fn choose_templates(template: Option<&str>, set: Option<&str>) -> Result<Vec<String>> {
    match (template, set) {
        (Some(_), Some(_)) => Err(Error::Options(
            "give either a template or a template set, not both".into(),
        )),
        (Some(t), None) => {
            let t = vec![t.to_string()];
            check_templates(&t, "the template")?;
            Ok(t)
        }
        (None, Some(set)) => templates(set),
        (None, None) => Ok(Vec::new()),
    }
}

/// The default templates for a model scored with `scoring`: the shipped ensemble for CLIP (the
/// CLIP paper's prompt ensembling), [`SIGLIP_TEMPLATE`] alone for SigLIP.
pub fn model_default_templates(scoring: crate::models::Scoring) -> Result<Vec<String>> {
    match scoring {
        crate::models::Scoring::Softmax => templates(DEFAULT_TEMPLATES),
        crate::models::Scoring::Sigmoid => Ok(vec![SIGLIP_TEMPLATE.to_string()]),
    }
}

/// Every template must hold `{}` where the label goes.
pub fn check_templates(templates: &[String], source: &str) -> Result<()> {
    if templates.is_empty() {
        return Err(Error::Options(format!("no templates in '{source}'")));
    }
    if let Some(bad) = templates.iter().find(|t| !t.contains("{}")) {
        return Err(Error::Options(format!(
            "template '{bad}' from '{source}' has no {{}} where the label goes"
        )));
    }
    Ok(())
}

/// A label set must be non-empty and without repeats (a repeated label would split its probability).
pub fn check_labels(labels: &[String], source: &str) -> Result<()> {
    if labels.is_empty() {
        return Err(Error::Options(format!("no labels in '{source}'")));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        return Err(Error::Options(format!(
            "label '{dup}' appears twice in '{source}'"
        )));
    }
    Ok(())
}

/// `template` with its `{}` replaced by `label`.
pub fn fill(template: &str, label: &str) -> String {
    template.replace("{}", label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_label_args() {
        assert_eq!(
            parse_list("# tags\n cat \n\n dog\n#x\nsea lion\n"),
            ["cat", "dog", "sea lion"]
        );
        assert_eq!(
            parse_label_arg(" cat, dog,,sea lion ,"),
            ["cat", "dog", "sea lion"]
        );
        assert_eq!(fill("a photo of a {}.", "cat"), "a photo of a cat.");
        assert_eq!(fill("{}", "cat"), "cat");
    }

    #[test]
    fn shipped_lists_load_and_are_clean() {
        for (name, _) in TEMPLATES {
            assert!(!templates(name).unwrap().is_empty(), "{name}");
        }
        assert_eq!(vocab("coco").unwrap().len(), 80);
        assert!(vocab("everyday").unwrap().len() >= 200);
        let err = vocab("nonesuch").unwrap_err().to_string();
        assert!(err.contains("'nonesuch'") && err.contains("coco"), "{err}");
    }

    #[test]
    fn shipped_instructions_load_without_their_comments() {
        for (name, _) in INSTRUCTIONS {
            let text = instruction(name).unwrap();
            assert!(!text.contains('#') && text.len() > 20, "{name}: {text}");
        }
        assert_eq!(
            instruction(DEFAULT_INSTRUCTION).unwrap(),
            "Describe this image in one sentence."
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.txt");
        std::fs::write(&path, "# mine\nName the animal.\nOne word.\n").unwrap();
        assert_eq!(
            instruction(path.to_str().unwrap()).unwrap(),
            "Name the animal.\nOne word."
        );
        let err = instruction("nonesuch").unwrap_err().to_string();
        assert!(
            err.contains("'nonesuch'") && err.contains("detailed"),
            "{err}"
        );
    }

    #[test]
    fn bad_templates_and_labels_are_named() {
        let err = check_templates(&["a photo".into()], "t.txt").unwrap_err();
        assert!(err.to_string().contains("'a photo' from 't.txt'"), "{err}");
        let err = check_labels(&["cat".into(), "cat".into()], "--labels").unwrap_err();
        assert!(err.to_string().contains("'cat' appears twice"), "{err}");
        assert!(check_labels(&[], "l.txt").is_err());
    }

    #[test]
    fn a_file_wins_over_a_shipped_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.txt");
        std::fs::write(&path, "{} in the wild\n").unwrap();
        assert_eq!(
            templates(path.to_str().unwrap()).unwrap(),
            ["{} in the wild"]
        );
    }
}
