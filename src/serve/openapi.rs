//! `GET /openapi.json`: the API described for clients and code generators.

use serde_json::{json, Value};

fn image_list() -> Value {
    json!({"type": "array", "items": {"type": "string", "description": "base64, a data: URL, or an http(s) URL when the server allows fetching"}})
}

fn records(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"type": "object", "properties": {
            "model": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object", "description": "one record per image, in order: \"index\", the CLI's fields (or \"error\"), \"width\", \"height\""}}
        }}}}
    })
}

fn endpoint(summary: &str, properties: Value, required: &[&str], answer: Value) -> Value {
    json!({"post": {
        "summary": summary,
        "requestBody": {"required": true, "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": false, "required": required, "properties": properties}}},
            "multipart/form-data": {"schema": {"type": "object", "description": "`image` file parts; other fields as text parts"}}
        },
        "responses": {
            "200": answer,
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "413": {"$ref": "#/components/responses/Error"},
            "422": {"$ref": "#/components/responses/Error"},
            "429": {"$ref": "#/components/responses/Error"}
        }
    }})
}

pub fn document() -> Value {
    let generation = json!({
        "max_new_tokens": {"type": "integer"}, "min_new_tokens": {"type": "integer"},
        "num_beams": {"type": "integer"}, "length_penalty": {"type": "number"},
        "do_sample": {"type": "boolean"}, "temperature": {"type": "number"},
        "top_k": {"type": "integer"}, "top_p": {"type": "number"},
        "repetition_penalty": {"type": "number"}, "num_return_sequences": {"type": "integer"},
        "seed": {"type": "integer"}
    });
    let mut caption = json!({
        "images": image_list(), "model": {"type": "string"},
        "prompt": {"type": "string"}, "task": {"type": "string", "enum": ["caption", "detailed", "more-detailed", "ocr"]},
        "system": {"type": "string"}, "min_pixels": {"type": "integer"}, "max_pixels": {"type": "integer"},
        "greedy": {"type": "boolean"}
    });
    caption
        .as_object_mut()
        .expect("object")
        .extend(generation.as_object().expect("object").clone());
    let labels = json!({"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string", "description": "comma-separated"}]});
    let templates = json!({"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string", "description": "a shipped set: default, single"}]});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "glance", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/v1/caption": endpoint("Caption images", caption, &["images"], records("caption records")),
            "/v1/classify": endpoint("Zero-shot or closed-set classes", json!({
                "images": image_list(), "model": {"type": "string"}, "labels": labels,
                "template": {"type": "string"}, "templates": templates,
                "top_k": {"type": "integer", "default": 5}, "multi_label": {"type": "boolean"},
                "threshold": {"type": "number"}, "min_score": {"type": "number"}
            }), &["images"], records("label, score, predictions")),
            "/v1/label": endpoint("Tags from a vocabulary", json!({
                "images": image_list(), "model": {"type": "string"},
                "vocab": {"type": "string", "enum": ["everyday", "coco"]}, "labels": labels,
                "template": {"type": "string"}, "templates": templates,
                "threshold": {"type": "number"}, "max_tags": {"type": "integer"}
            }), &["images"], records("labels")),
            "/v1/detect": endpoint("Boxes (Florence-2)", json!({
                "images": image_list(), "model": {"type": "string"},
                "task": {"type": "string", "enum": ["od", "dense-region", "grounding", "ocr-region"], "default": "od"},
                "labels": labels, "max_new_tokens": {"type": "integer"},
                "min_new_tokens": {"type": "integer"}, "num_beams": {"type": "integer"}
            }), &["images"], records("detections: [{label, box: [x1, y1, x2, y2]}]")),
            "/v1/embeddings": endpoint("OpenAI-shaped embeddings of texts and images (CLIP, SigLIP), L2-normalised", json!({
                "model": {"type": "string"},
                "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"oneOf": [
                    {"type": "string"}, {"type": "object", "properties": {"image": {"type": "string"}}, "required": ["image"]}
                ]}}]},
                "encoding_format": {"type": "string", "enum": ["float"]}, "user": {"type": "string"}
            }), &["input"], json!({"description": "{object: list, data: [{object: embedding, index, embedding}], model, usage}"})),
            "/v1/chat/completions": endpoint("OpenAI-compatible chat: one user turn with an image_url part", json!({
                "model": {"type": "string"}, "messages": {"type": "array"},
                "max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"},
                "temperature": {"type": "number"}, "top_p": {"type": "number"}, "seed": {"type": "integer"},
                "stream": {"type": "boolean"}, "stream_options": {"type": "object"}, "n": {"type": "integer", "enum": [1]},
                "user": {"type": "string"}
            }), &["messages"], json!({"description": "chat.completion, or text/event-stream chunks with stream: true"})),
            "/health": {"get": {"summary": "200 once the models are loaded and have run", "responses": {"200": {"description": "ok"}, "503": {"description": "not ready"}}}},
            "/info": {"get": {"summary": "models, tasks, limits, version", "responses": {"200": {"description": "info"}}}},
            "/metrics": {"get": {"summary": "Prometheus text", "responses": {"200": {"description": "metrics"}}}},
            "/": {"get": {"summary": "the web page", "responses": {"200": {"description": "HTML"}}}}
        },
        "components": {
            "responses": {"Error": {"description": "{error: {message, type}}", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}}
            }}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}
