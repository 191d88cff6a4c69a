//! Caption tokenization as the COCO caption toolkit does it before scoring: Stanford's
//! PTBTokenizer (`-lowerCase -preserveLines`), then the toolkit's punctuation tokens removed.
//!
//! This is a re-implementation of the rules that matter for captions, not the full Java lexer:
//! lowercasing; splitting on whitespace; punctuation split off words; clitics split as PTB does
//! (`don't` → `do n't`, `can't` → `ca n't`, `it's` → `it 's`, `dogs'` → `dogs '`); hyphenated
//! words, decimals and thousands (`3.5`, `1,000`, `10:30`) and dotted abbreviations (`u.s.`,
//! `e.g.`) kept whole; `$`, `%`, `#`, `&` and other symbols as their own tokens. Known divergences
//! are listed in eval/README.md.

/// Tokens pycocoevalcap drops after PTB tokenization (`PUNCTUATIONS` in ptbtokenizer.py). The
/// list spells the bracket tokens `-LRB-` etc., but with `-lowerCase` PTB writes `-lrb-`, so the
/// toolkit keeps brackets as words: a quirk kept here.
const DROPPED: &[&str] = &[
    "''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";",
];

/// Clitics PTB splits off the end of a word (after `n't`, which is checked first).
const CLITICS: &[&str] = &["'s", "'re", "'ve", "'ll", "'d", "'m"];

/// Words PTB splits in two (`cannot` → `can not`, `gonna` → `gon na`).
const SPLIT_WORDS: &[(&str, &str, &str)] = &[
    ("cannot", "can", "not"),
    ("gonna", "gon", "na"),
    ("gotta", "got", "ta"),
    ("wanna", "wan", "na"),
    ("lemme", "lem", "me"),
    ("gimme", "gim", "me"),
];

/// Abbreviations that keep their period.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "mt",
];

/// The tokenized caption: tokens joined by single spaces (what the toolkit scores).
pub fn tokenize(caption: &str) -> String {
    let lower = caption.to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for chunk in lower.split_whitespace() {
        for token in split_chunk(chunk) {
            if !DROPPED.contains(&token.as_str()) {
                out.push(token);
            }
        }
    }
    out.join(" ")
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || ('\u{300}'..='\u{36f}').contains(&c)
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Emoji and pictographs, which the Java tokenizer drops.
fn is_pictograph(c: char) -> bool {
    ('\u{1f000}'..='\u{1faff}').contains(&c)
        || ('\u{2600}'..='\u{27bf}').contains(&c) && c != '\u{2192}'
}

/// Splits one whitespace-free chunk into PTB tokens.
fn split_chunk(chunk: &str) -> Vec<String> {
    let chars: Vec<char> = chunk.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // A negative number: "-7".
        let signed = c == '-' && i == 0 && next.is_some_and(|n| n.is_ascii_digit());
        if is_word_char(c) || signed {
            let start = i;
            i += 1;
            while i < chars.len() {
                let c = chars[i];
                let next = chars.get(i + 1).copied();
                let prev = chars[i - 1];
                let joins = is_word_char(c)
                    || (matches!(c, '-' | '/') && next.is_some_and(is_word_char))
                    || (is_apostrophe(c)
                        && next.is_some_and(char::is_alphabetic)
                        && prev.is_alphabetic())
                    || (matches!(c, '.' | ',' | ':')
                        && prev.is_ascii_digit()
                        && next.is_some_and(|n| n.is_ascii_digit()))
                    || (c == '.'
                        && next.is_some_and(char::is_alphabetic)
                        && chars.get(i + 2) == Some(&'.'));
                // A formatted number ends before letters: "1,000s" → "1,000 s" ("1990s" stays).
                let formatted = chars[start..i].iter().any(|d| matches!(d, ',' | '.' | ':'));
                if !joins || (formatted && c.is_alphabetic() && prev.is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
            let mut word: String = chars[start..i].iter().collect();
            // A dotted abbreviation keeps its final period: "u.s.", "e.g.", "mr.".
            if i < chars.len()
                && chars[i] == '.'
                && (word.contains('.') || ABBREVIATIONS.contains(&word.as_str()))
            {
                word.push('.');
                i += 1;
            }
            tokens.extend(split_word(&word));
            continue;
        }
        // Runs of the same mark are one token: "...", "--", "!!", "?!", "??".
        if matches!(c, '.' | '-' | '!' | '?') {
            let start = i;
            let same = |d: char| {
                if matches!(c, '!' | '?') {
                    matches!(d, '!' | '?')
                } else {
                    d == c
                }
            };
            while i < chars.len() && same(chars[i]) {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
            continue;
        }
        i += 1;
        let token = match c {
            // Quotes (dropped later), brackets as PTB names them, dashes and the ellipsis.
            '"' | '\u{201c}' | '\u{201d}' | '\u{2018}' | '\u{2019}' => "''".to_string(),
            '(' => "-lrb-".into(),
            ')' => "-rrb-".into(),
            '[' => "-lsb-".into(),
            ']' => "-rsb-".into(),
            '{' => "-lcb-".into(),
            '}' => "-rcb-".into(),
            '\u{2014}' | '\u{2013}' => "--".into(),
            '\u{2026}' => "...".into(),
            c if is_pictograph(c) => continue,
            c => c.to_string(),
        };
        tokens.push(token);
    }
    tokens
}

/// `don't` → `do n't`, `it's` → `it 's`, `cannot` → `can not`; other words unchanged. A curly
/// apostrophe in a clitic is written as a straight one, as PTB does.
fn split_word(word: &str) -> Vec<String> {
    if let Some((_, a, b)) = SPLIT_WORDS.iter().find(|(w, _, _)| *w == word) {
        return vec![(*a).to_string(), (*b).to_string()];
    }
    let ascii = word.replace('\u{2019}', "'");
    if let Some(stem) = ascii.strip_suffix("n't") {
        if !stem.is_empty() {
            return vec![stem.to_string(), "n't".to_string()];
        }
    }
    for c in CLITICS {
        if let Some(stem) = ascii.strip_suffix(c) {
            if !stem.is_empty() {
                return vec![stem.to_string(), (*c).to_string()];
            }
        }
    }
    vec![word.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_caption_shapes() {
        assert_eq!(tokenize("A man riding a horse."), "a man riding a horse");
        assert_eq!(
            tokenize("It's the man's hat, isn't it?"),
            "it 's the man 's hat is n't it"
        );
        assert_eq!(
            tokenize("A black-and-white photo (1,000 birds)"),
            "a black-and-white photo -lrb- 1,000 birds -rrb-"
        );
        assert_eq!(tokenize("...!"), "");
        assert_eq!(
            tokenize("A dog!! Mr. Smith's 1,000s"),
            "a dog !! mr. smith 's 1,000 s"
        );
        assert_eq!(tokenize("Café  naïve\ttea"), "café naïve tea");
    }
}
