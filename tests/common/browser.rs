//! A real headless Chromium for the dashboard tests: Debian's `chromium` driven through its
//! `chromedriver` (installed by `scripts/install-browser.sh`), spoken to in plain W3C
//! WebDriver JSON over reqwest.
//!
//! Each [`Browser`] runs its own chromedriver on a free 127.0.0.1 port with a fresh profile
//! directory, and kills it on drop. With `CI=true` a missing browser fails loudly; otherwise
//! the test prints `SKIPPED` and returns.
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromium` and `chromedriver`, or `None` (after failing in CI / printing SKIPPED: see
/// [`crate::common::tools`]).
pub fn available() -> Option<(PathBuf, PathBuf)> {
    use crate::common::tools::{Tool, have, which};
    if !have(Tool::Chromium) {
        return None;
    }
    which("chromium")
        .or_else(|| which("chromium-browser"))
        .zip(which("chromedriver"))
}

pub struct Browser {
    http: reqwest::Client,
    driver: Child,
    driver_url: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium session; `None` when skipped.
    pub async fn start() -> Option<Browser> {
        let (chromium, chromedriver) = available()?;
        let port = crate::common::free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(resp) = reqwest::get(format!("{driver_url}/status")).await
                && resp.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.display().to_string(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--hide-scrollbars",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let resp: Value = http
            .post(format!("{driver_url}/session"))
            .json(&json!({ "capabilities": { "alwaysMatch": Value::Object(caps) } }))
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no chromium session: {resp}"))
            .to_string();
        Some(Browser {
            http,
            driver,
            driver_url,
            session,
            _profile: profile,
        })
    }

    /// One WebDriver command; panics with the driver's message on an error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("webdriver {path}: {e}"),
        }
    }

    async fn try_cmd(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        let mut req = self.http.request(method, url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let value: Value = resp.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(value["value"].clone())
        } else {
            Err(value["value"].to_string())
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> reqwest::Url {
        let v = self.cmd(reqwest::Method::GET, "/url", None).await;
        v.as_str().unwrap().parse().unwrap()
    }

    /// The text of an open alert dialog, if one is open.
    pub async fn alert_text(&self) -> Option<String> {
        self.try_cmd(reqwest::Method::GET, "/alert/text", None)
            .await
            .ok()
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    async fn set_window_size(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    /// Resize so the *viewport* (not the window) is `width` × `height`.
    pub async fn viewport(&self, width: u32, height: u32) {
        self.set_window_size(width, height).await;
        let inner = self
            .js("return [window.innerWidth, window.innerHeight];")
            .await;
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(width as u64) as u32,
            inner[1].as_u64().unwrap_or(height as u64) as u32,
        );
        if iw != width || ih != height {
            self.set_window_size(
                width + width.saturating_sub(iw),
                height + height.saturating_sub(ih),
            )
            .await;
        }
    }

    pub async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .try_cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"));
        v[ELEMENT].as_str().unwrap().to_string()
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        let v = self
            .cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.try_cmd(
            reqwest::Method::POST,
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .await
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Browser console entries since the last call (chromedriver's log endpoint).
    pub async fn console(&self) -> Vec<Value> {
        let resp = self
            .http
            .post(format!(
                "{}/session/{}/se/log",
                self.driver_url, self.session
            ))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .expect("chromedriver log endpoint");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        body["value"].as_array().cloned().unwrap_or_default()
    }

    /// Console errors (SEVERE entries: script errors, CSP violations, failed loads).
    pub async fn console_errors(&self) -> Vec<String> {
        self.console()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A screenshot of the whole page at `width` (the window grows to the page's height, up
    /// to `max_height`), saved as `target/screenshots/NAME.png`; copied to
    /// `docs/screenshots/` when `KILN_UPDATE_SCREENSHOTS=1`.
    pub async fn screenshot(&self, name: &str, width: u32, max_height: u32) -> PathBuf {
        self.viewport(width, 800).await;
        let height = self
            .js("return Math.ceil(document.documentElement.scrollHeight);")
            .await
            .as_u64()
            .unwrap_or(800) as u32;
        self.viewport(width, height.clamp(400, max_height)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 screenshot"))
            .unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("screenshots");
        std::fs::create_dir_all(&target).unwrap();
        let path = target.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        if std::env::var("KILN_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
            let docs = root.join("docs/screenshots");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("{name}.png")), &png).unwrap();
        }
        self.viewport(1280, 900).await;
        path
    }
}

impl Drop for Browser {
    /// Quit Chromium through the driver (a plain blocking `DELETE /session/ID`, so it also
    /// runs when a test panics), then stop the driver.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let addr = self.driver_url.trim_start_matches("http://").to_string();
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
