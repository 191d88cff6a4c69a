//! A request's images: base64 or `data:` URLs in JSON, file parts in multipart bodies, and
//! `http(s)://` URLs only when the server allows fetching them — then with a size cap, a timeout,
//! at most a few redirects, and never to private, loopback or link-local addresses.

use std::io::Read;
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use base64::Engine;

use crate::preprocess::decode::decode_bytes;
use crate::preprocess::ImageProcessor;
use crate::tasks::Prepared;

/// How remote images may be fetched.
#[derive(Debug, Clone)]
pub struct UrlFetch {
    pub allowed: bool,
    pub max_bytes: u64,
    pub timeout: Duration,
    pub max_redirects: usize,
}

impl Default for UrlFetch {
    fn default() -> Self {
        Self {
            allowed: false,
            max_bytes: 20 << 20,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
        }
    }
}

/// An image as a request gave it, before decoding.
#[derive(Debug, Clone)]
pub enum Source {
    Bytes(Vec<u8>),
    /// A string: base64, a `data:` URL or an `http(s)://` URL.
    Text(String),
}

/// The image's bytes, or a message saying what was wrong with it.
pub fn bytes(source: Source, fetch: &UrlFetch) -> Result<Vec<u8>, String> {
    let text = match source {
        Source::Bytes(b) => return Ok(b),
        Source::Text(t) => t,
    };
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or("a data: URL needs a comma before its data")?;
        if !meta.ends_with(";base64") {
            return Err("a data: URL must be base64 (data:image/...;base64,...)".into());
        }
        return decode_base64(data);
    }
    if text.starts_with("http://") || text.starts_with("https://") {
        if !fetch.allowed {
            return Err(
                "image URLs are not fetched by this server (start it with --allow-url-fetch); send the image as base64 or a data: URL"
                    .into(),
            );
        }
        return fetch_url(text, fetch);
    }
    decode_base64(text)
}

fn decode_base64(data: &str) -> Result<Vec<u8>, String> {
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(compact.as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(compact.trim_end_matches('='))
        })
        .map_err(|e| format!("not base64, a data: URL or an http(s) URL ({e})"))
}

/// Decodes and preprocesses one image off the model thread.
pub fn prepare(
    bytes: &[u8],
    name: String,
    processor: &ImageProcessor,
    max_pixels: u64,
) -> Result<Prepared, String> {
    let decoded = std::panic::catch_unwind(|| decode_bytes(bytes, max_pixels))
        .unwrap_or_else(|_| Err("the image decoder crashed on this image".to_string()))?;
    Prepared::new(name, &decoded, std::slice::from_ref(processor))
}

/// Whether a server may connect to `ip` on a user's behalf: public unicast addresses only.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                // carrier-grade NAT 100.64/10, benchmarking 198.18/15, reserved 240/4
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// Refuses a URL whose host resolves to any non-public address.
fn check_host(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("bad image URL {url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("image URL {url} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {host}"));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(format!(
            "image URL {url} points at a non-public address ({}); refused",
            bad.ip()
        ));
    }
    Ok(())
}

fn fetch_url(url: &str, fetch: &UrlFetch) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(fetch.timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into();
    let mut url = url.to_string();
    for _ in 0..=fetch.max_redirects {
        check_host(&url)?;
        let mut response = agent
            .get(&url)
            .call()
            .map_err(|e| format!("fetching {url}: {e}"))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("{url} redirected without a location"))?;
            url = resolve_redirect(&url, location)?;
            continue;
        }
        if !status.is_success() {
            return Err(format!("fetching {url}: HTTP {status}"));
        }
        let mut body = Vec::new();
        response
            .body_mut()
            .as_reader()
            .take(fetch.max_bytes + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading {url}: {e}"))?;
        if body.len() as u64 > fetch.max_bytes {
            return Err(format!("{url} is over {} bytes", fetch.max_bytes));
        }
        return Ok(body);
    }
    Err(format!(
        "{url}: more than {} redirects",
        fetch.max_redirects
    ))
}

fn resolve_redirect(base: &str, location: &str) -> Result<String, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_string());
    }
    let uri: ureq::http::Uri = base.parse().map_err(|e| format!("{e}"))?;
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    if location.starts_with('/') {
        Ok(format!("{origin}{location}"))
    } else {
        Err(format!("unsupported redirect location {location}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_fetched() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let refused = bytes(
            Source::Text("http://127.0.0.1:1/x.png".into()),
            &UrlFetch {
                allowed: true,
                ..UrlFetch::default()
            },
        );
        assert!(refused.unwrap_err().contains("non-public"));
        let off = bytes(
            Source::Text("https://example.com/x.png".into()),
            &UrlFetch::default(),
        );
        assert!(off.unwrap_err().contains("--allow-url-fetch"));
    }

    #[test]
    fn images_arrive_as_base64_or_data_urls() {
        let fetch = UrlFetch::default();
        assert_eq!(bytes(Source::Text("aGk=".into()), &fetch).unwrap(), b"hi");
        assert_eq!(bytes(Source::Text("aGk".into()), &fetch).unwrap(), b"hi");
        assert_eq!(
            bytes(Source::Text("data:image/png;base64,aGk=".into()), &fetch).unwrap(),
            b"hi"
        );
        assert!(bytes(Source::Text("data:image/png,hi".into()), &fetch).is_err());
        assert!(bytes(Source::Text("not base64!".into()), &fetch).is_err());
    }
}
