//! The web page in a real browser: headless Chromium, driven through ChromeDriver's WebDriver
//! protocol, opens `glance serve`'s page, uploads a photo, runs a caption and shows what the
//! CLI writes for the same photo. `.ci/run` installs Debian's `chromium` and `chromium-driver`;
//! where they are missing the test says so and passes as skipped.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{agent, Server};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = agent()
            .delete(&format!("{}/session/{}", self.base, self.session))
            .call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent = agent();
    let mut response = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b.to_string()),
        ("GET", _) => agent.get(url).call(),
        _ => unreachable!(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

impl Driver {
    fn start(chromedriver: &Path, chromium: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = agent()
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let session = call(
            "POST",
            &format!("{base}/session"),
            Some(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
                }
            }}})),
        );
        let session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Driver {
            child,
            base,
            session,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    /// The first element matching `css`, if there is one now.
    fn find(&self, css: &str) -> Option<String> {
        let found = call(
            "POST",
            &self.url("/element"),
            Some(json!({"using": "css selector", "value": css})),
        );
        found["value"][ELEMENT].as_str().map(str::to_string)
    }

    fn wait_for(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(e) = self.find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "{css} never appeared");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&self, element: &str) -> String {
        call("GET", &self.url(&format!("/element/{element}/text")), None)["value"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn enabled(&self, element: &str) -> bool {
        call(
            "GET",
            &self.url(&format!("/element/{element}/enabled")),
            None,
        )["value"]
            == json!(true)
    }
}

fn which(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

#[test]
fn the_page_captions_an_uploaded_photo_as_the_cli_does() {
    let (Some(chromedriver), Some(chromium)) = (
        which(&["chromedriver"]),
        which(&["chromium", "chromium-browser", "google-chrome"]),
    ) else {
        eprintln!(
            "SKIPPED the_page_captions_an_uploaded_photo_as_the_cli_does: chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        );
        return;
    };
    let blip = common::blip_tiny();
    let photo = common::shared_images()
        .join("chelsea.png")
        .canonicalize()
        .unwrap();
    let out = common::glance()
        .args(["caption", "-q", "-m"])
        .arg(&blip)
        .arg(&photo)
        .output()
        .unwrap();
    let expected = common::stdout_records(&out)[0]["caption"]
        .as_str()
        .unwrap()
        .to_string();

    let server = Server::start(&["-m", blip.to_str().unwrap()], &[]);
    let driver = Driver::start(&chromedriver, &chromium);
    call(
        "POST",
        &driver.url("/url"),
        Some(json!({"url": server.url("/")})),
    );
    // The page fills its task and model lists from /info.
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.find("#model option").is_none() {
        assert!(
            Instant::now() < deadline,
            "the page never listed the models"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let files = driver.wait_for("#files");
    call(
        "POST",
        &driver.url(&format!("/element/{files}/value")),
        Some(json!({"text": photo.to_str().unwrap()})),
    );
    let run = driver.wait_for("#run");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !driver.enabled(&run) {
        if Instant::now() > deadline {
            let status = driver.find("#status").map(|s| driver.text(&s));
            let log = call(
                "POST",
                &driver.url("/execute/sync"),
                Some(
                    json!({"script": "return document.getElementById('files').files.length + ' ' + document.getElementById('status').textContent", "args": []}),
                ),
            );
            panic!("Run never became enabled: status {status:?}, {log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    call(
        "POST",
        &driver.url(&format!("/element/{run}/click")),
        Some(json!({})),
    );
    let caption = driver.wait_for(".result .caption");
    assert_eq!(driver.text(&caption), expected);
    let name = driver.wait_for(".result .name");
    assert_eq!(driver.text(&name), "chelsea.png");
}
