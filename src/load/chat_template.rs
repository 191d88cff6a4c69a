//! A checkpoint's own chat template, rendered as transformers' `apply_chat_template` renders it:
//! Jinja with `trim_blocks` and `lstrip_blocks`, loop controls, Python's string methods, the
//! tokenizer's special tokens as variables and `raise_exception`.

use std::path::Path;

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};

use super::hub::ModelFiles;
use super::read_json;
use crate::error::{Error, Result};

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for error messages.
    source: String,
    /// `bos_token`, `eos_token`, … from `tokenizer_config.json`.
    special: serde_json::Map<String, serde_json::Value>,
}

impl ChatTemplate {
    /// The model's template: `chat_template.jinja`, else `chat_template.json`'s `chat_template`,
    /// else `tokenizer_config.json`'s (a string, or a list of named templates: `default`).
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        let config = match files.get_optional("tokenizer_config.json")? {
            Some(p) => read_json(&p)?,
            None => serde_json::Value::Null,
        };
        let (text, source) = if let Some(p) = files.get_optional("chat_template.jinja")? {
            (
                std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?,
                p,
            )
        } else if let Some(p) = files.get_optional("chat_template.json")? {
            let json = read_json(&p)?;
            let t = json["chat_template"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Config {
                    file: p.display().to_string(),
                    message: "no chat_template string".into(),
                })?;
            (t, p)
        } else {
            let named = match &config["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            };
            match named {
                Some(t) => (t, Path::new("tokenizer_config.json").to_path_buf()),
                None => {
                    return Err(Error::MissingFile {
                        model: files.source().name(),
                        file: "a chat template (chat_template.jinja, chat_template.json or tokenizer_config.json's chat_template)".into(),
                    })
                }
            }
        };
        let mut special = serde_json::Map::new();
        if let Some(o) = config.as_object() {
            for (k, v) in o {
                if k.ends_with("_token") {
                    if let Some(t) = super::special_token(v) {
                        special.insert(k.clone(), serde_json::Value::String(t.to_string()));
                    }
                }
            }
        }
        Self::new(text, source.display().to_string(), special)
    }

    /// A template from its text (`source` names it in errors).
    pub fn new(
        text: String,
        source: String,
        special: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", text)
            .map_err(|e| Error::Config {
                file: source.clone(),
                message: format!("chat template: {e}"),
            })?;
        Ok(Self {
            env,
            source,
            special,
        })
    }

    /// The prompt for one image and an instruction, the messages built as transformers'
    /// processors build them: an optional system message, then the user's image and text.
    pub fn render_image_prompt(&self, system: Option<&str>, instruction: &str) -> Result<String> {
        let mut messages = Vec::new();
        if let Some(s) = system {
            messages.push(
                serde_json::json!({"role": "system", "content": [{"type": "text", "text": s}]}),
            );
        }
        messages.push(serde_json::json!({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}));
        self.render(&serde_json::Value::Array(messages))
    }

    /// `messages` rendered with `add_generation_prompt`.
    pub fn render(&self, messages: &serde_json::Value) -> Result<String> {
        let template = self.env.get_template("chat").expect("added in new");
        let special = Value::from_serialize(&self.special);
        template
            .render(context! {
                messages => Value::from_serialize(messages),
                add_generation_prompt => true,
                ..special
            })
            .map_err(|e| Error::Config {
                file: self.source.clone(),
                message: format!("rendering the chat template: {e:#}"),
            })
    }
}
