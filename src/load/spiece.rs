//! A `tokenizers` tokenizer from a SentencePiece `spiece.model`, for repos that ship no
//! `tokenizer.json` (google/siglip-*: transformers has only the slow `SiglipTokenizer` for them
//! and no converter to a fast one).
//!
//! The model file is a `ModelProto` protobuf; glance reads the few fields it needs by hand:
//! the pieces with their scores and types, the trainer's model type and special ids, and the
//! normalizer's precompiled character map (NFKC folds and the like).
//!
//! Matches `SiglipTokenizer`: `▁` before the text (given by [`super::TextTokenizer`]), then per
//! piece of text between special tokens its `canonicalize_text` (lowercase, ASCII punctuation
//! dropped, runs of white space to one space, trimmed), SentencePiece's own normalization,
//! unigram segmentation, and `</s>` appended.

use std::path::Path;

use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Lowercase, Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use crate::error::{Error, Result};

/// What glance reads of a `ModelProto`.
#[derive(Debug, Default)]
pub struct SentencePieceModel {
    /// (piece, score, type): 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte.
    pub pieces: Vec<(String, f32, i32)>,
    /// `TrainerSpec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: i32,
    pub unk_id: Option<u32>,
    pub byte_fallback: bool,
    pub precompiled_charsmap: Vec<u8>,
}

const NORMAL: i32 = 1;
const UNIGRAM: i32 = 1;

/// A protobuf reader over one message's bytes: just varints and length-delimited fields.
struct Fields<'a> {
    buf: &'a [u8],
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err("truncated field".into());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next `(field number, value)`, `None` at the end.
    fn next_field(&mut self) -> std::result::Result<Option<(u32, Value<'a>)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()? as usize;
                Value::Bytes(self.take(n)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((field, value)))
    }
}

fn each_field<'a>(
    buf: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut fields = Fields { buf };
    while let Some((field, value)) = fields.next_field()? {
        f(field, value)?;
    }
    Ok(())
}

impl SentencePieceModel {
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut model = Self {
            model_type: UNIGRAM,
            ..Self::default()
        };
        let mut unk_id: i64 = 0;
        each_field(bytes, |field, value| {
            match (field, value) {
                // ModelProto.pieces
                (1, Value::Bytes(piece)) => {
                    let (mut text, mut score, mut kind) = (String::new(), 0f32, NORMAL);
                    each_field(piece, |f, v| {
                        match (f, v) {
                            (1, Value::Bytes(b)) => {
                                text = String::from_utf8(b.to_vec())
                                    .map_err(|_| "a piece is not UTF-8".to_string())?
                            }
                            (2, Value::Fixed32(bits)) => score = f32::from_bits(bits),
                            (3, Value::Varint(t)) => kind = t as i32,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    model.pieces.push((text, score, kind));
                }
                // ModelProto.trainer_spec
                (2, Value::Bytes(spec)) => each_field(spec, |f, v| {
                    match (f, v) {
                        (3, Value::Varint(t)) => model.model_type = t as i32,
                        (35, Value::Varint(b)) => model.byte_fallback = b != 0,
                        (40, Value::Varint(id)) => unk_id = id as i64,
                        _ => {}
                    }
                    Ok(())
                })?,
                // ModelProto.normalizer_spec
                (3, Value::Bytes(spec)) => each_field(spec, |f, v| {
                    if let (2, Value::Bytes(map)) = (f, v) {
                        model.precompiled_charsmap = map.to_vec();
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        if model.pieces.is_empty() {
            return Err("no pieces".into());
        }
        model.unk_id = u32::try_from(unk_id)
            .ok()
            .filter(|&id| (id as usize) < model.pieces.len());
        Ok(model)
    }
}

/// A normalizer replacing each match of the regex `pattern` with `with`.
fn replace(pattern: &str, with: &str) -> Result<NormalizerWrapper> {
    Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.into()),
        with,
    )
    .map(NormalizerWrapper::from)
    .map_err(|e| Error::Options(format!("spiece normalizer {pattern:?}: {e}")))
}

/// `text` between special tokens as `SiglipTokenizer.canonicalize_text` leaves it, as
/// normalizers: lowercase, no ASCII punctuation, single spaces, trimmed.
fn siglip_canonical(lowercase: bool) -> Result<Vec<NormalizerWrapper>> {
    let mut steps = Vec::new();
    if lowercase {
        steps.push(NormalizerWrapper::from(Lowercase));
    }
    // Python's string.punctuation.
    steps.push(replace(r#"[!-/:-@\[-`{-~]"#, "")?);
    steps.push(replace(r"\s+", " ")?);
    steps.push(NormalizerWrapper::from(Strip::new(true, true)));
    Ok(steps)
}

/// Builds the tokenizer of a `SiglipTokenizer` checkpoint from its `spiece.model`, with the
/// special tokens `tokenizer_config.json` names (`eos`, `unk`, `pad`).
pub fn siglip_tokenizer(
    path: &Path,
    eos: &str,
    unk: &str,
    pad: &str,
    lowercase: bool,
) -> Result<Tokenizer> {
    let bad = |m: String| Error::Tokenizer {
        path: path.display().to_string(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = SentencePieceModel::parse(&bytes)
        .map_err(|m| bad(format!("not a SentencePiece model: {m}")))?;
    if model.model_type != UNIGRAM {
        return Err(bad(format!(
            "SentencePiece model type {} is not supported (only unigram)",
            model.model_type
        )));
    }
    let vocab: Vec<(String, f64)> = model
        .pieces
        .iter()
        .map(|(p, s, _)| (p.clone(), f64::from(*s)))
        .collect();
    let unigram = Unigram::from(
        vocab,
        model.unk_id.map(|id| id as usize),
        model.byte_fallback,
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(unigram);
    // After SiglipTokenizer's canonical text, SentencePiece's normalization, in which `▁` is
    // white space: NFKC folds (the precompiled map), white space collapsed, trailing trimmed.
    // The first piece of text keeps its leading `▁` (see [`super::TextTokenizer`]), which the
    // pre-tokenizer makes the word boundary.
    let mut normalizers = siglip_canonical(lowercase)?;
    normalizers.push(replace("▁", " ")?);
    if !model.precompiled_charsmap.is_empty() {
        let precompiled = Precompiled::from(&model.precompiled_charsmap)
            .map_err(|e| bad(format!("precompiled_charsmap: {e}")))?;
        normalizers.push(NormalizerWrapper::from(precompiled));
    }
    normalizers.push(replace(" {2,}", " ")?);
    normalizers.push(NormalizerWrapper::from(Strip::new(false, true)));
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Never, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::Never, true)));
    let piece_id = |p: &str| {
        model
            .pieces
            .iter()
            .position(|(q, _, _)| q == p)
            .map(|i| i as u32)
    };
    let eos_id = piece_id(eos).ok_or_else(|| bad(format!("eos token {eos:?} is not a piece")))?;
    let post = TemplateProcessing::builder()
        .try_single(format!("$A:0 {eos}:0"))
        .and_then(|b| b.try_pair(format!("$A:0 {eos}:0 $B:0 {eos}:0")))
        .map_err(|e| bad(e.to_string()))?
        .special_tokens(vec![(eos.to_string(), eos_id)])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_post_processor(Some(post));
    // The special tokens SiglipTokenizer has: those its config names (a control piece such as
    // `<pad>` that it does not name is ordinary text there).
    let specials: Vec<AddedToken> = [eos, unk, pad]
        .into_iter()
        .enumerate()
        .filter(|&(i, name)| piece_id(name).is_some() && ![eos, unk, pad][..i].contains(&name))
        .map(|(_, name)| AddedToken::from(name.to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A varint-keyed field as protobuf writes it.
    fn field(number: u32, wire: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) as u8) | wire];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_pieces_scores_types_and_the_unk_id() {
        let piece = |text: &str, score: f32, kind: u8| {
            let mut p = field(1, 2, text.as_bytes());
            p.extend(field(2, 5, &score.to_le_bytes()));
            p.extend(field(3, 0, &[kind]));
            field(1, 2, &p)
        };
        let mut proto = piece("<unk>", 0.0, 2);
        proto.extend(piece("▁a", -1.5, 1));
        // trainer_spec { model_type: 1, unk_id: 0 } (unk_id is field 40: a two-byte key)
        let trainer = [field(3, 0, &[1]), vec![0xc0, 0x02, 0]].concat();
        proto.extend(field(2, 2, &trainer));
        let model = SentencePieceModel::parse(&proto).unwrap();
        assert_eq!(
            model.pieces,
            vec![("<unk>".to_string(), 0.0, 2), ("▁a".to_string(), -1.5, 1)]
        );
        assert_eq!((model.model_type, model.unk_id), (1, Some(0)));
        assert!(SentencePieceModel::parse(&[0x0a, 0x05, 1]).is_err());
    }
}
